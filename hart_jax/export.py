r"""A training workdir -> official HART folders, loadable by the official code.

  python -m hart_jax.export --checkpoint=out/run --out=exported
  python -m hart_jax.export --checkpoint=out/run --out=exported --step=2000 \
      --weights=raw --format=bin --overwrite

writes exported/llm (config.json, model.safetensors, ema_model.bin) and
exported/tokenizer from a HART-stage run, or exported/tokenizer alone from
a tokenizer-stage run (hart_jax/interop/export_run.py). The folder appears
whole or not at all; an existing one is replaced only with --overwrite.
"""

from absl import flags

from hart_jax import cli

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Training workdir (with checkpoints/ and "
    "config.json), or the demo's workdir.", required=True)
_OUT = flags.DEFINE_string("out", None, "Folder to write (llm/ and "
                           "tokenizer/ inside).", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the "
                             "newest).")
_WEIGHTS = flags.DEFINE_enum(
    "weights", "ema", ["ema", "raw"], "ema: EMA weights in ema_model.bin "
    "and the tokenizer, raw ones in model.safetensors; raw: raw weights "
    "everywhere.")
_FORMAT = flags.DEFINE_enum(
    "format", "safetensors", ["safetensors", "bin"], "File format of the "
    "from_pretrained weights (model.safetensors or pytorch_model.bin); "
    "ema_model.bin is always a torch pickle, as the official sampler reads "
    "it.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing "
                               "export at --out.")


def main(argv):
  del argv
  from hart_jax.interop import export_run  # pylint: disable=g-import-not-at-top
  r = export_run.export_run(_CHECKPOINT.value, _OUT.value, _STEP.value,
                            _WEIGHTS.value, _FORMAT.value, _OVERWRITE.value)
  what = "EMA" if r.weights == "ema" else "raw"
  print(f"exported step {r.step} of {r.workdir} ({r.stage} stage, {what} "
        f"weights) to {r.out}")
  for name, files in r.folders.items():
    print(f"  {name + '/':<11} {', '.join(files)}")
  for note in r.notes:
    print(f"note: {note}")


if __name__ == "__main__":
  cli.run(main)
