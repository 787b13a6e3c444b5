"""Metrics of a set of generated images, and the report that holds them.

  metrics = compute_metrics(images, items, MetricSources(...), mesh)
  write_report(out, metrics, images)      # report.json, report.md, grid.png

Each metric runs only when what it needs is there, and says why when it
is not (never a silent zero):
  * FID: the FID Inception weights (`fid_weights`) and reference images
    or statistics;
  * CLIP score: a CLIP folder (`clip`) and prompts;
  * the demo's class accuracy and feature-space Frechet distance: a
    class-conditional model on Fashion-MNIST's 10 classes at 32 px
    (hart_jax/evals/fmnist_classifier.py; no download needed).
"""

import dataclasses
import logging
import os
from typing import Any, Optional, Sequence

import numpy as np

from hart_jax import atomic_io
from hart_jax import image_io
from hart_jax.evals import eval_sets
from hart_jax.stages.common import image_grid


@dataclasses.dataclass
class MetricSources:
  fid_weights: Optional[str] = None       # pytorch-fid .pth / .safetensors
  reference_images: Optional[str] = None  # a folder
  reference_stats: Optional[str] = None   # an .npz of mu and sigma
  clip: Optional[str] = None              # a CLIP Hugging Face folder
  fashion_mnist: bool = False             # the demo's own measures


def compute_metrics(images: np.ndarray, items: Sequence[eval_sets.Item],
                    sources: MetricSources, mesh=None
                    ) -> dict[str, Any]:
  """{metric: value, ..., "unavailable": {metric: why}} for uint8 images
  [N, H, W, 3] made from `items`."""
  out: dict[str, Any] = {"num_images": int(len(images))}
  missing: dict[str, str] = {}
  _fid(images, sources, mesh, out, missing)
  prompts = [i.prompt for i in items]
  if sources.clip and all(p is not None for p in prompts):
    from hart_jax.evals import clip  # pylint: disable=g-import-not-at-top
    scores = clip.clip_score(clip.load_clip(sources.clip), list(images),
                             prompts, mesh)
    out["clip_score"] = float(np.mean(scores))
  elif all(p is None for p in prompts):
    missing["clip_score"] = "a class-conditional model has no prompts"
  else:
    missing["clip_score"] = ("no CLIP weights: pass --clip=DIR, a local "
                             "Hugging Face CLIPModel folder (e.g. "
                             "openai/clip-vit-large-patch14)")
  if sources.fashion_mnist:
    from hart_jax.evals import fmnist_classifier  # pylint: disable=g-import-not-at-top
    classifier = fmnist_classifier.load_or_train_classifier(mesh=mesh)
    labels = np.asarray([i.class_id for i in items])
    out["class_accuracy"] = float(classifier.class_accuracy(images, labels))
    out["feature_frechet"] = float(classifier.feature_frechet(images))
    out["classifier_test_accuracy"] = float(classifier.test_accuracy)
  if missing:
    out["unavailable"] = missing
    for name, why in missing.items():
      logging.warning("%s not computed: %s", name, why)
  return out


def _fid(images, sources, mesh, out, missing):
  if not sources.fid_weights:
    missing["fid"] = ("no Inception weights: pass --fid_weights=FILE "
                      "(pytorch-fid's pt_inception-2015-12-05-6726825d.pth"
                      " or its .safetensors copy)")
    return
  if not (sources.reference_images or sources.reference_stats):
    missing["fid"] = ("no reference: pass --reference_images=DIR or "
                      "--reference_stats=F.npz")
    return
  from hart_jax.evals import fid, inception  # pylint: disable=g-import-not-at-top
  module, params = inception.load_fid_inception(sources.fid_weights)
  if sources.reference_stats:
    mu, sigma = fid.load_statistics(sources.reference_stats)
  else:
    reference = eval_sets.load_images(
        eval_sets.reference_paths(sources.reference_images),
        "reference images")
    mu, sigma = fid.feature_statistics(
        fid.image_features(module, params, reference, mesh))
    out["num_reference_images"] = int(len(reference))
  out["fid"] = fid.fid_from_features(
      fid.image_features(module, params, images, mesh), mu, sigma)


_NAMES = dict(fid="FID (clean-fid resize)", clip_score="CLIP score",
              class_accuracy="class accuracy (Fashion-MNIST classifier)",
              feature_frechet="Frechet distance (classifier features)",
              classifier_test_accuracy="classifier's real test accuracy",
              num_images="images", num_reference_images="reference images")


def write_report(out: str, metrics: dict[str, Any], images: np.ndarray,
                 header: dict[str, Any]) -> None:
  """report.json (everything), report.md (a table) and grid.png."""
  atomic_io.atomic_write_json(os.path.join(out, "report.json"),
                              dict(header, metrics=metrics))
  grid = image_grid(images[:64].astype(np.float32) / 255.0,
                    cols=min(len(images), 8))
  image_io.save_png(os.path.join(out, "grid.png"), grid)
  lines = ["# hart_jax evaluation", ""]
  lines += [f"- {k}: `{v}`" for k, v in header.items()
            if not isinstance(v, dict)]
  lines += ["", "| metric | value |", "|---|---|"]
  for key, value in metrics.items():
    if key == "unavailable":
      continue
    shown = f"{value:.4f}" if isinstance(value, float) else str(value)
    lines.append(f"| {_NAMES.get(key, key)} | {shown} |")
  for key, why in metrics.get("unavailable", {}).items():
    lines.append(f"| {_NAMES.get(key, key)} | not computed: {why} |")
  lines += ["", "![samples](grid.png)", ""]
  atomic_io.atomic_write_bytes(os.path.join(out, "report.md"),
                               "\n".join(lines).encode())


def summary_lines(metrics: dict[str, Any]) -> list[str]:
  return [f"  {_NAMES.get(k, k):<42} {v:.4f}" if isinstance(v, float)
          else f"  {_NAMES.get(k, k):<42} {v}" for k, v in metrics.items()
          if k != "unavailable"]
