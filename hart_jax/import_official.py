r"""Official HART folders -> a hart_jax workdir (checkpoint + run config).

  python -m hart_jax.import_official --hart_dir=hart-0.7b-1024px \
      --out=out/imported

reads hart-0.7b-1024px/llm and hart-0.7b-1024px/tokenizer (strict key,
shape and config checks) and writes out/imported with checkpoints/0
(params and, from ema_model.bin, the EMA; no optimizer state), a copy of
the tokenizer and a config.json that sampling and export read
(hart_jax/interop/import_run.py). Fine-tune it with
`--config.train.init_from=out/imported`, or pass the official folder to
init_from directly.
"""

from absl import flags

from hart_jax import cli

_HART_DIR = flags.DEFINE_string(
    "hart_dir", None, "Official HART folder (llm/ + tokenizer/).",
    required=True)
_OUT = flags.DEFINE_string("out", None, "Workdir to write.", required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an earlier "
                               "import at --out.")
_TEXT_ENCODER = flags.DEFINE_string(
    "text_encoder", "", "A local Qwen2 folder to record in the run config "
    "for sampling (text models; optional).")


def main(argv):
  del argv
  from hart_jax.interop import import_run  # pylint: disable=g-import-not-at-top
  r = import_run.import_official(_HART_DIR.value, _OUT.value,
                                 _OVERWRITE.value, _TEXT_ENCODER.value)
  ema = (f"EMA from {r.ema_from}" if r.ema_from
         else "no EMA (the folder has no ema_model.bin)")
  print(f"imported {_HART_DIR.value} into {r.out}:")
  print(f"  checkpoints/0  params from {r.params_from}, {ema}; no "
        "optimizer state")
  print(f"  tokenizer/     a copy of {', '.join(r.tokenizer_files)}")
  print("  config.json    the run config (model from llm/config.json, "
        "tokenizer.folder = the copy)")
  for note in r.notes:
    print(f"note: {note}")
  print(f"fine-tune it with --config.train.init_from={r.out}; export it "
        f"with python -m hart_jax.export --checkpoint={r.out}")


if __name__ == "__main__":
  cli.run(main)
