r"""Generate a set of images and measure them: FID, CLIP score, and the
demo's own numbers.

  python -m hart_jax.evaluate --checkpoint=out/demo --num_images=200 \
      --out=eval/demo
  python -m hart_jax.evaluate --checkpoint=hart-0.7b-1024px \
      --text_encoder=Qwen2-VL-1.5B-Instruct --prompts=meta_data.json \
      --reference_images=mjhq30k_imgs --fid_weights=pt_inception.pth \
      --clip=clip-vit-large-patch14 --nomore_smooth --out=eval/mjhq

Images go to <out>/images/ (an interrupted run resumes: images already
written are not made again); the metrics to <out>/report.json and
<out>/report.md with a grid. Text models take --prompts (text lines, or
MJHQ-30K's meta_data.json); class-conditional ones make --num_images
images cycling over their classes. The batch is split over all devices.
"""

import os

from absl import flags
import jax
import tqdm

from hart_jax import cli
from hart_jax.errors import ConfigError

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A training workdir or an official HART folder.",
    required=True)
_TEXT_ENCODER = flags.DEFINE_string("text_encoder", None,
                                    "A Qwen2 folder (official models).")
_PROMPTS = flags.DEFINE_string(
    "prompts", None, "Prompts: a text file (one per line) or MJHQ-30K's "
    "meta_data.json.")
_NUM_IMAGES = flags.DEFINE_integer(
    "num_images", None, "How many images (default: one per prompt; "
    "class-conditional models: 1000).")
_REFERENCE_IMAGES = flags.DEFINE_string(
    "reference_images", None, "Real images for FID (a folder, searched "
    "recursively).")
_REFERENCE_STATS = flags.DEFINE_string(
    "reference_stats", None, "Precomputed FID statistics (.npz, mu/sigma).")
_FID_WEIGHTS = flags.DEFINE_string("fid_weights", None,
                                   "pytorch-fid's Inception weights file.")
_CLIP = flags.DEFINE_string("clip", None, "A CLIP Hugging Face folder.")
_OUT = flags.DEFINE_string("out", None, "The folder to write.",
                           required=True)
_RESUME = flags.DEFINE_bool(
    "resume", False, "Keep the images already in --out even if another "
    "evaluation made them.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_CFG = flags.DEFINE_float("cfg", 4.5, "Guidance scale.")
_MORE_SMOOTH = flags.DEFINE_bool("more_smooth", False, "Gumbel-smoothed "
                                 "tokens (off for FID, unlike sampling).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8,
                                   "Images per device call (all devices).")


def main(argv):
  del argv
  from hart_jax import sample_outputs, sharding  # pylint: disable=g-import-not-at-top
  from hart_jax.evals import eval_sets, evaluation  # pylint: disable=g-import-not-at-top
  from hart_jax.pipeline import HartPipeline  # pylint: disable=g-import-not-at-top
  out = _OUT.value
  sample_outputs.check_out_dir(out)
  eval_sets.check_settings(_NUM_IMAGES.value, _BATCH_SIZE.value)
  if _REFERENCE_IMAGES.value and _REFERENCE_STATS.value:
    raise ConfigError("give --reference_images or --reference_stats, not "
                      "both")
  mesh = sharding.make_mesh(dict(data=-1))
  pipe = HartPipeline.load(_CHECKPOINT.value, _TEXT_ENCODER.value,
                           mesh=mesh)
  if pipe.class_conditional:
    if _PROMPTS.value:
      raise ConfigError("this model is class-conditional: it takes no "
                        "--prompts (it makes --num_images over its classes)")
    items = eval_sets.class_items(pipe.model.t_config.num_classes,
                                  _NUM_IMAGES.value or 1000)
  else:
    if not _PROMPTS.value:
      raise ConfigError("a text-to-image model needs --prompts")
    items = eval_sets.read_prompts(_PROMPTS.value)
    items = items[:_NUM_IMAGES.value] if _NUM_IMAGES.value else items
  batch = _BATCH_SIZE.value
  ways = sharding.data_parallel_size(mesh)
  if batch % ways:
    raise ConfigError(f"--batch_size {batch} does not split over the "
                      f"{ways} devices")
  settings = dict(seed=_SEED.value, cfg=_CFG.value,
                  more_smooth=_MORE_SMOOTH.value)
  os.makedirs(out, exist_ok=True)
  with tqdm.tqdm(total=len(items), desc="images", leave=False,
                 dynamic_ncols=True) as bar:
    paths = eval_sets.generate(pipe, items, out, settings, batch,
                               _RESUME.value, bar.update)
  images = eval_sets.load_images(paths, "generated images")
  sources = evaluation.MetricSources(
      fid_weights=_FID_WEIGHTS.value,
      reference_images=_REFERENCE_IMAGES.value,
      reference_stats=_REFERENCE_STATS.value, clip=_CLIP.value,
      fashion_mnist=_is_fashion_mnist(pipe))
  metrics = evaluation.compute_metrics(images, items, sources, mesh)
  header = dict(checkpoint=pipe.model.source, settings=settings,
                batch_size=batch, devices=jax.device_count())
  evaluation.write_report(out, metrics, images, header)
  print(f"{len(images)} images in {os.path.abspath(out)}/images; report in "
        f"{os.path.abspath(out)}/report.md")
  print("\n".join(evaluation.summary_lines(metrics)))


def _is_fashion_mnist(pipe) -> bool:
  """The demo's model: class-conditional on 10 classes at 32 px, trained
  on Fashion-MNIST (what its run config says, when it is a run)."""
  source = pipe.model.source
  if not (pipe.class_conditional and pipe.model.t_config.num_classes == 10
          and pipe.image_size == 32 and source["kind"] == "workdir"):
    return False
  from hart_jax import run_config  # pylint: disable=g-import-not-at-top
  config = run_config.load_run_config(source["path"])
  return config.data.source == "fashion_mnist"


if __name__ == "__main__":
  cli.run(main)
