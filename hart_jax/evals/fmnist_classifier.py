"""A quality number for the Fashion-MNIST demo that needs no downloaded weights.

FID needs Inception weights, which cannot be downloaded here. Instead a
small CNN is trained (in about a minute on a CPU) on the real
Fashion-MNIST training split, exactly as the demo's pipeline feeds it to
HART, and then measures generated class-conditional samples two ways:

  class_accuracy(images, labels)  does a sample of class 3 look like
                                  class 3 to the classifier?
  feature_frechet(images)         the Frechet distance between the
                                  samples and the real test split in the
                                  classifier's penultimate features
                                  (128-d), FID's formula in float64.

Images: [N, 32, 32, 3] RGB, either uint8 (what the pipeline makes before
scaling) or float in [0, 1] (what `sampling.generate` returns). Real
images come from `real_images`, which runs the pipeline's own transforms
(`transforms.to_rgb`, then `fit_square` with the pipeline's default
resize, which the trainer uses: PIL bicubic 28 -> 32px), so a real test
image scores as in-distribution: its features are those the classifier
was trained and its statistics computed on.

    clf = load_or_train_classifier()   # trains once, then cached
    clf.class_accuracy(samples, labels), clf.feature_frechet(samples)

The classifier, its test accuracy and the real test split's feature
statistics are cached together in one folder under `cache_dir` (default
`$HART_DATA_DIR/fmnist_classifier` or `~/.cache/hart_jax/data/
fmnist_classifier`), named by seed and a hash of the architecture, the
training budget and the preprocessing. The folder is written whole
(`atomic_io.atomic_write_folder`) and reused only when its metadata
matches, data fingerprint included; an unreadable one is retrained with a
warning.

Both numbers are for comparing demo runs with each other, not with
published FIDs: the feature space is this classifier's own, and the
distance is biased upward for small sample counts, as FID is.
"""

import dataclasses
import hashlib
import json
import logging
import pathlib

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from hart_jax.atomic_io import atomic_write_folder, atomic_write_json
from hart_jax.data import debian, pipeline, transforms
from hart_jax.data.sources import FASHION_MNIST_CLASSES, FashionMnistSource
from hart_jax.errors import CheckpointError, InputError
from hart_jax.evals import fid, sharded
from hart_jax.evals.fmnist_classifier_train import TrainConfig, train
from hart_jax.interop.state_dict_io import read_safetensors, write_safetensors

__all__ = ["FmnistClassifier", "FmnistCNN", "TrainConfig",
           "load_or_train_classifier", "real_images"]

IMAGE_SIZE = 32
NUM_CLASSES = len(FASHION_MNIST_CLASSES)
# Raise when the network or the meaning of its inputs changes: old caches
# then stop matching and are retrained.
ARCH_VERSION = 1
# `trainer.py` calls `make_dataset` without `resize`, so the demo's images
# are made with the pipeline's default; read it there rather than copy it.
RESIZE = pipeline.make_dataset.__kwdefaults__["resize"]
WEIGHTS, STATS, META = "weights.safetensors", "test_stats.npz", "meta.json"


class FmnistCNN(nn.Module):
  """Three stride-2 3x3 convolutions, a 128-unit layer, 10 logits.

  Strided convolutions instead of convolution + max-pool: XLA's CPU
  gradient of max-pool (select-and-scatter) and of stride-1 convolutions
  at full resolution made an epoch 3-4x slower for under 1% accuracy.

  Input: [B, 32, 32, 3], uint8 (0..255) or float in [0, 1].
  """
  widths: tuple[int, ...] = (24, 48, 96)
  hidden: int = 128

  def setup(self):
    # setup, not compact: two public methods share the layers.
    self.convs = [nn.Conv(w, (3, 3), strides=2, name=f"conv_{i}")
                  for i, w in enumerate(self.widths)]
    self.dense = nn.Dense(self.hidden, name="hidden")
    self.head = nn.Dense(NUM_CLASSES, name="logits")

  def features(self, images: jax.Array) -> jax.Array:
    """Penultimate features, float32 [B, hidden] (after the ReLU)."""
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
      x = x / 255.0
    x = x * 2.0 - 1.0  # centred, as the demo's model sees its inputs
    for conv in self.convs:
      x = nn.relu(conv(x))
    return nn.relu(self.dense(x.reshape(x.shape[0], -1)))

  def __call__(self, images: jax.Array) -> jax.Array:
    """Class logits, float32 [B, 10]."""
    return self.head(self.features(images))


def _check_images(images) -> np.ndarray:
  """The demo's [N, 32, 32, 3] uint8 or [0, 1] float images, or InputError."""
  images = np.asarray(images)
  want = f"[N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3]"
  if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
    raise InputError(f"the Fashion-MNIST classifier takes {want} RGB "
                     f"images, got {list(images.shape)}")
  if images.dtype == np.uint8:
    return images
  if images.dtype.kind != "f":
    raise InputError(f"the Fashion-MNIST classifier takes uint8 or float "
                     f"[0, 1] images, got {images.dtype}")
  if len(images):
    lo, hi = float(images.min()), float(images.max())
    # A little slack for rounding in a decoder's (x + 1) / 2; [-1, 1]
    # model-range images (the black background is -1) fail loudly here.
    if not (np.isfinite(lo) and np.isfinite(hi) and lo >= -1e-3
            and hi <= 1 + 1e-3):
      raise InputError(f"float images must be in [0, 1] (map model-range "
                       f"[-1, 1] outputs with (x + 1) / 2), got values in "
                       f"[{lo:.3g}, {hi:.3g}]")
  return images


def real_images(split: str = "test", data_cache_dir=None,
                limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Real Fashion-MNIST images exactly as the demo's pipeline makes them.

  Args:
    split: "train" or "test".
    data_cache_dir: where the Debian package is cached
      (`debian.default_cache_dir()` if None).
    limit: only the first `limit` examples (all if None).

  Returns:
    (uint8 [N, 32, 32, 3], int32 [N] labels); `/ 255` gives the [0, 1]
    convention of generated samples, `transforms.to_model_range` the
    [-1, 1] batches the model trains on.
  """
  source = FashionMnistSource(split, cache_dir=data_cache_dir)
  n = len(source) if limit is None else min(limit, len(source))
  images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
  labels = np.empty((n,), np.int32)
  for i in range(n):
    record = source[i]
    # The two calls `pipeline._Preprocess` makes for an in-memory image.
    images[i] = transforms.fit_square(transforms.to_rgb(record["image"]),
                                      IMAGE_SIZE, RESIZE)
    labels[i] = record["label"]
  return images, labels


@dataclasses.dataclass(frozen=True, eq=False)
class FmnistClassifier:
  """The trained classifier and the real test split's feature statistics.

  Attributes:
    module: the `FmnistCNN`.
    params: its params (placed on the device or mesh once).
    test_accuracy: its accuracy on the 10,000 real test images.
    real_mu: float64 [128], mean of the test split's features.
    real_sigma: float64 [128, 128], their covariance.
    meta: what the cache records (seed, budget, fingerprint, timing).
    mesh: a `hart_jax.sharding.make_mesh` mesh to split batches over, or
      None for the default device.
    batch_size: images per jitted call.
  """
  module: FmnistCNN
  params: dict
  test_accuracy: float
  real_mu: np.ndarray
  real_sigma: np.ndarray
  meta: dict
  mesh: jax.sharding.Mesh | None = None
  batch_size: int = 256

  def _run(self, method: str, images) -> np.ndarray:
    return sharded.run_batched(self.module, method, self.params,
                               [_check_images(images)], self.mesh,
                               self.batch_size)

  def logits(self, images) -> np.ndarray:
    """float32 [N, 10] logits of uint8 or [0, 1] images [N, 32, 32, 3]."""
    return self._run("__call__", images)

  def features(self, images) -> np.ndarray:
    """float32 [N, 128] penultimate features of the same images."""
    return self._run("features", images)

  def feature_statistics(self, images) -> tuple[np.ndarray, np.ndarray]:
    """float64 mean [128] and covariance [128, 128] of the features."""
    return fid.feature_statistics(self.features(images))

  def class_accuracy(self, images, labels) -> float:
    """The fraction of `images` classified as their `labels` (int [N])."""
    labels = np.asarray(labels)
    images = _check_images(images)
    if labels.shape != (len(images),) or labels.dtype.kind not in "iu":
      raise InputError(f"labels must be integers [{len(images)}] (one per "
                       f"image), got {labels.dtype} {list(labels.shape)}")
    if len(labels) and not 0 <= labels.min() <= labels.max() < NUM_CLASSES:
      raise InputError(f"labels must be class ids in [0, {NUM_CLASSES}), got"
                       f" [{labels.min()}, {labels.max()}]")
    predicted = self.logits(images).argmax(axis=-1)
    return float(np.mean(predicted == labels))

  def feature_frechet(self, images) -> float:
    """Frechet distance from the images to the real test split (features).

    The squared distance, as FID reports it; 0 for the test split itself.
    Needs at least 2 images, and is biased upward at small counts: compare
    values computed from the same number of images.
    """
    mu, sigma = self.feature_statistics(images)
    return fid.frechet_distance(mu, sigma, self.real_mu, self.real_sigma)


def default_cache_dir() -> pathlib.Path:
  """`debian.default_cache_dir()` / "fmnist_classifier"."""
  return debian.default_cache_dir() / "fmnist_classifier"


def _fingerprint(data_dir: pathlib.Path) -> str:
  """sha256 of the four idx files: another copy of the data retrains."""
  digest = hashlib.sha256()
  for name in debian.FASHION_MNIST_FILES:
    with open(data_dir / name, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
  return digest.hexdigest()


def _identity(module: FmnistCNN, seed: int, config: TrainConfig) -> dict:
  """What the weights are a function of, besides the data."""
  return dict(arch_version=ARCH_VERSION, widths=list(module.widths),
              hidden=module.hidden, seed=seed,
              train=dataclasses.asdict(config),
              preprocessing=dict(image_size=IMAGE_SIZE, resize=RESIZE))


def _folder(cache_dir, identity: dict) -> pathlib.Path:
  key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode())
  root = pathlib.Path(cache_dir).expanduser() if cache_dir else (
      default_cache_dir())
  return root / f"seed{identity['seed']}-{key.hexdigest()[:12]}"


def _read_cache(folder: pathlib.Path, module: FmnistCNN, expected: dict):
  """(params, accuracy, mu, sigma, meta), None when stale; raises
  CheckpointError or InputError when a file is damaged."""
  try:
    meta = json.loads((folder / META).read_text(encoding="utf-8"))
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{folder / META} is unreadable ({e})") from e
  if not isinstance(meta, dict) or not isinstance(
      meta.get("test_accuracy"), float):
    raise CheckpointError(f"{folder / META} lacks a test_accuracy")
  stale = sorted(k for k in expected if meta.get(k) != expected[k])
  if stale:
    logging.info("fmnist classifier in %s does not match (%s); retraining",
                 folder, ", ".join(stale))
    return None
  flat = read_safetensors(str(folder / WEIGHTS))
  want = traverse_util.flatten_dict(jax.eval_shape(
      module.init, jax.random.key(0),
      jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.uint8))["params"],
                                    sep="/")
  for name, shape in want.items():
    got = flat.get(name)
    if got is None or got.shape != shape.shape or got.dtype != shape.dtype:
      raise CheckpointError(
          f"{folder / WEIGHTS}: {name} is "
          f"{'missing' if got is None else f'{got.dtype}{list(got.shape)}'}"
          f", want {shape.dtype}{list(shape.shape)}")
  if set(flat) != set(want):
    raise CheckpointError(f"{folder / WEIGHTS}: unexpected tensors "
                          f"{sorted(set(flat) - set(want))}")
  mu, sigma = fid.load_statistics(str(folder / STATS))
  if mu.shape != (module.hidden,):
    raise CheckpointError(f"{folder / STATS}: mu is {list(mu.shape)}, want "
                          f"[{module.hidden}]")
  params = traverse_util.unflatten_dict(flat, sep="/")
  return params, meta["test_accuracy"], mu, sigma, meta


def load_or_train_classifier(cache_dir=None, seed: int = 0, *,
                             train_config: TrainConfig = TrainConfig(),
                             data_cache_dir=None, mesh=None,
                             batch_size: int = 256) -> FmnistClassifier:
  """The cached classifier for (seed, budget, data), trained if absent.

  Args:
    cache_dir: the cache's root (default `default_cache_dir()`).
    seed: the training seed; each seed is cached separately.
    train_config: the training budget (the default: about 90% accuracy).
    data_cache_dir: where Fashion-MNIST's Debian package is cached (see
      `debian.default_cache_dir`); fetched there when missing.
    mesh: a mesh to split evaluation batches over, or None.
    batch_size: images per jitted evaluation call.

  Returns:
    An `FmnistClassifier` (`.module`, `.params`, `.test_accuracy`,
    `.class_accuracy(images, labels)`, `.feature_frechet(images)`).

  Raises:
    DatasetUnavailableError: Fashion-MNIST is absent and cannot be
      fetched.
    ConfigError: a training budget that fills no batch.
  """
  module = FmnistCNN()
  data_dir = debian.ensure_fashion_mnist(data_cache_dir)
  # Before any reading or training: a budget that cannot run fails now.
  train_config.validate(len(FashionMnistSource("train", data_dir)))
  expected = dict(_identity(module, seed, train_config),
                  data_fingerprint=_fingerprint(data_dir))
  folder = _folder(cache_dir, expected)
  cached = None
  if (folder / META).exists():
    try:
      cached = _read_cache(folder, module, expected)
    except (CheckpointError, InputError, OSError) as e:
      # A damaged cache (or one with a file missing) costs a minute of
      # training, not the run.
      logging.warning("the cached Fashion-MNIST classifier is damaged (%s);"
                      " retraining it", e)

  def make(params, accuracy, mu, sigma, meta):
    return FmnistClassifier(module, sharded.place_params(params, mesh),
                            accuracy, mu, sigma, meta, mesh, batch_size)

  if cached is not None:
    return make(*cached)

  limit = train_config.train_examples
  train_x, train_y = real_images("train", data_cache_dir, limit)
  params, info = train(module, train_x, train_y, train_config, seed)
  del train_x, train_y
  test_x, test_y = real_images("test", data_cache_dir)
  # Measured through the same `class_accuracy` a caller uses, so the two
  # agree exactly; the placeholders are replaced before anyone sees them.
  clf = make(params, float("nan"), None, None, {})
  accuracy = clf.class_accuracy(test_x, test_y)
  mu, sigma = clf.feature_statistics(test_x)
  meta = dict(expected, test_accuracy=accuracy, **info)
  logging.info("fmnist classifier: test accuracy %.4f after %d steps in "
               "%.1f s; cached in %s", accuracy, info["steps"],
               info["seconds"], folder)
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  try:
    atomic_write_folder(str(folder), {
        WEIGHTS: lambda p: write_safetensors(p, flat),
        STATS: lambda p: fid.save_statistics(p, mu, sigma),
        META: lambda p: atomic_write_json(p, meta),
    })
  except InputError as e:
    # The classifier is trained and usable; only the next run pays again.
    logging.warning("the Fashion-MNIST classifier could not be cached (%s);"
                    " it will be retrained next time", e)
  return dataclasses.replace(clf, test_accuracy=accuracy, real_mu=mu,
                             real_sigma=sigma, meta=meta)
