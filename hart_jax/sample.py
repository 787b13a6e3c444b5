r"""Prompt (or class id) -> PNG files.

  python -m hart_jax.sample --checkpoint=out/demo --class_id=3 --out=samples
  python -m hart_jax.sample --checkpoint=hart-0.7b-1024px \
      --text_encoder=Qwen2-VL-1.5B-Instruct \
      --prompt="a red fox in snow" --prompt="a lighthouse" --out=samples

--checkpoint is a hart_jax training workdir (newest checkpoint, or
--step) or an official HART folder (llm/ + tokenizer/). Writes one PNG per
prompt (named after it), grid.png, and settings.json with the exact
settings, checkpoint and timings; prints a timing breakdown.
"""

import os

from absl import flags
import tqdm

from hart_jax import cli
from hart_jax import sample_outputs
from hart_jax.errors import ConfigError
from hart_jax.pipeline import OFFICIAL_DEFAULTS

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A training workdir or an official HART folder.",
    required=True)
_PROMPT = flags.DEFINE_multi_string("prompt", [], "A prompt (repeatable).")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None,
                                    "A text file of prompts, one per line.")
_CLASS_ID = flags.DEFINE_multi_integer(
    "class_id", [], "A class of a class-conditional model (repeatable).")
_TEXT_ENCODER = flags.DEFINE_string(
    "text_encoder", None, "A Qwen2 text-encoder folder (official models, "
    "and runs trained on precomputed features).")
_STEP = flags.DEFINE_integer("step", None, "A workdir's checkpoint step "
                             "(default: the newest).")
_WEIGHTS = flags.DEFINE_enum("weights", "ema", ["ema", "raw"],
                             "EMA or raw weights.")
_SEED = flags.DEFINE_integer("seed", 0, "Same seed, same images.")
_CFG = flags.DEFINE_float("cfg", OFFICIAL_DEFAULTS["cfg"],
                          "Classifier-free guidance scale (>= 0).")
_TOP_K = flags.DEFINE_integer(
    "top_k", None, "Top-k filter (>= 1); default: the official schedule "
    "(600, then 300 from the 8th scale).")
_TOP_P = flags.DEFINE_float("top_p", None, "Top-p filter in (0, 1]; "
                            "default: off, as the official sampler.")
_MORE_SMOOTH = flags.DEFINE_bool(
    "more_smooth", OFFICIAL_DEFAULTS["more_smooth"], "Gumbel-smoothed "
    "tokens (the official default; turn off for FID).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 4,
                                   "Images per device call.")
_OUT = flags.DEFINE_string("out", None, "The folder to write.",
                           required=True)


def _inputs():
  prompts = list(_PROMPT.value)
  if _PROMPTS_FILE.value:
    prompts += sample_outputs.read_prompts_file(_PROMPTS_FILE.value)
  if prompts and _CLASS_ID.value:
    raise ConfigError("give prompts or --class_id, not both")
  if not prompts and not _CLASS_ID.value:
    raise ConfigError("nothing to generate: give --prompt, --prompts_file "
                      "or --class_id")
  return prompts or None, list(_CLASS_ID.value) or None


def main(argv):
  del argv
  from hart_jax import sampling  # pylint: disable=g-import-not-at-top
  from hart_jax.pipeline import HartPipeline, timing_lines  # pylint: disable=g-import-not-at-top
  out = _OUT.value
  sample_outputs.check_out_dir(out)
  prompts, class_ids = _inputs()
  if _TOP_K.value is not None and _TOP_K.value < 1:
    raise ConfigError(f"--top_k must be >= 1, got {_TOP_K.value} (leave it "
                      "out for the official schedule)")
  if _TOP_P.value is not None and not 0 < _TOP_P.value <= 1:
    raise ConfigError(f"--top_p must be in (0, 1], got {_TOP_P.value} "
                      "(leave it out for no top-p)")
  top_p = _TOP_P.value or 0.0
  # Settings fail before the model loads.
  sampling.SamplingConfig(cfg=_CFG.value, top_p=top_p)
  if _BATCH_SIZE.value < 1:
    raise ConfigError(f"--batch_size must be >= 1, got {_BATCH_SIZE.value}")
  pipe = HartPipeline.load(_CHECKPOINT.value, _TEXT_ENCODER.value,
                           _STEP.value, _WEIGHTS.value)
  n = len(prompts or class_ids)
  chunks = -(-n // _BATCH_SIZE.value)
  scales = pipe.model.t_config.num_scales
  settings = dict(seed=_SEED.value, cfg=_CFG.value, top_k=_TOP_K.value,
                  top_p=top_p, more_smooth=_MORE_SMOOTH.value,
                  batch_size=_BATCH_SIZE.value)
  with tqdm.tqdm(total=chunks * scales, desc="scales", unit="scale",
                 leave=False, dynamic_ncols=True) as bar:
    def on_scale(chunk, si):
      bar.update(chunk * scales + si + 1 - bar.n)
    images = pipe(prompts, class_ids=class_ids, output="np",
                  on_scale=on_scale, **settings)
  written = sample_outputs.write_outputs(
      out, images, prompts or [f"class {c}" for c in class_ids],
      dict(settings, checkpoint=pipe.model.source, prompts=prompts,
           class_ids=class_ids, timings=pipe.last_timings,
           image_size=int(images.shape[1])))
  print(f"wrote {len(images)} image(s) of {images.shape[1]}px and "
        f"grid.png to {os.path.abspath(out)}")
  for path in written[:8]:
    print(f"  {path}")
  if len(written) > 8:
    print(f"  ... and {len(written) - 8} more")
  print("time:")
  print("\n".join(timing_lines(pipe.last_timings)))


if __name__ == "__main__":
  cli.run(main)
