"""`python -m hart_jax.evaluate` on a demo-like run: resumable generation,
the demo's classifier measures with the default (demo) classifier, a
report, and metrics that say why they were not computed.

The classifier cache and Fashion-MNIST live under a temporary
HART_DATA_DIR (the dataset is linked in from the shared cache), so the
default classifier is trained here, once, and its real test accuracy
checked: the number the demo prints.
"""

import json
import os
import pathlib

import numpy as np
import pytest

from configs import tiny
from hart_jax import trainer
from hart_jax.data import debian
from hart_jax.data.debian import DatasetUnavailableError
from hart_jax.evals import eval_sets
from hart_jax.evals import fmnist_classifier as fc
from tests import cli_runner
from tests.helpers import unavailable

N = 20


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  try:
    real = debian.ensure_fashion_mnist()
  except DatasetUnavailableError as e:
    unavailable(f"Fashion-MNIST: {e}")
  root = tmp_path_factory.mktemp("hart_data")
  # .../dataset-fashion-mnist/usr/share/datasets/fashion-mnist
  package = pathlib.Path(real).parents[3]
  (root / package.name).symlink_to(package)
  saved = os.environ.get("HART_DATA_DIR")
  os.environ["HART_DATA_DIR"] = str(root)
  yield root
  if saved is None:
    os.environ.pop("HART_DATA_DIR")
  else:
    os.environ["HART_DATA_DIR"] = saved


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
  """A class-conditional tiny HART trained 2 steps on Fashion-MNIST."""
  del data_dir
  path = tmp_path_factory.mktemp("run")
  config = tiny.get_config("stage=hart,steps=2")
  with config.unlocked():
    config.mesh.data = 1
    config.sample.every = 0
    config.data.source = "fashion_mnist"
  trainer.train_and_evaluate(config, str(path))
  return path


def _evaluate(run, out, *extra):
  return cli_runner.run_module(
      "hart_jax.evaluate", [f"--checkpoint={run}", f"--num_images={N}",
                            "--batch_size=10", f"--out={out}", *extra],
      out.parent, devices=2, timeout=900)


def test_evaluate_the_demo_run(run, tmp_path):
  out = tmp_path / "eval"
  res = _evaluate(run, out)
  assert res.returncode == 0, res.stderr[-3000:]
  report = json.loads((out / "report.json").read_text())
  metrics = report["metrics"]
  # The default classifier, trained here: the number the demo prints.
  assert metrics["classifier_test_accuracy"] > 0.85
  assert set(metrics["unavailable"]) == {"fid", "clip_score"}
  assert "--fid_weights" in metrics["unavailable"]["fid"]
  assert "class-conditional" in metrics["unavailable"]["clip_score"]
  assert (out / "grid.png").exists()
  md = (out / "report.md").read_text()
  assert "class accuracy (Fashion-MNIST classifier)" in md
  assert "FID (clean-fid resize) | not computed" in md
  # The report's numbers are the classifier's on the written images.
  files = sorted((out / "images").iterdir())
  assert len(files) == N
  images = eval_sets.load_images([str(f) for f in files], "generated")
  classifier = fc.load_or_train_classifier()
  labels = np.arange(N) % 10
  assert metrics["class_accuracy"] == classifier.class_accuracy(images,
                                                                labels)
  np.testing.assert_allclose(metrics["feature_frechet"],
                             classifier.feature_frechet(images), rtol=1e-9)

  # Resumable: removed images come back identical, the others untouched.
  before = {f.name: f.read_bytes() for f in files}
  stamps = {f.name: f.stat().st_mtime_ns for f in files}
  for f in files[3:5] + files[17:18]:
    f.unlink()
  res = _evaluate(run, out)
  assert res.returncode == 0, res.stderr[-3000:]
  after = {f.name: f for f in sorted((out / "images").iterdir())}
  assert {k: v.read_bytes() for k, v in after.items()} == before
  untouched = [f.name for f in files[:3] + files[5:17] + files[18:]]
  assert all(after[k].stat().st_mtime_ns == stamps[k] for k in untouched)

  # Another evaluation's images: refused unless --resume.
  res = _evaluate(run, out, "--seed=1")
  assert res.returncode == 2
  assert "holds images of a different evaluation" in res.stderr
  assert _evaluate(run, out, "--seed=1", "--resume").returncode == 0


def test_class_model_takes_no_prompts(run, tmp_path):
  (tmp_path / "p.txt").write_text("a cat\n")
  res = _evaluate(run, tmp_path / "eval", f"--prompts={tmp_path / 'p.txt'}")
  assert res.returncode == 2
  assert "is class-conditional: it takes no --prompts" in res.stderr
