"""grain input pipeline: source -> shard -> shuffle -> decode/resize -> batch.

    ds = make_dataset(source, image_size=64, batch_size=32, seed=0)
    it = iter(ds)                       # a checkpointable grain iterator
    batch = next(it)                    # this host's numpy batch
    arrays = global_batch(batch, mesh)  # its numeric part as global arrays
    state = it.get_state()              # JSON-able; it.set_state(state)

Batches (B = this host's batch_size, S = image_size):
  image    float32 [B, S, S, 3] in [-1, 1]; from a token cache instead
           `tokens` int32 [B, L] and `frest` float32 [B, P*P, C]
  label    int32 [B]
  valid    bool [B]: False only for the padding of a last partial batch
           (drop_remainder=False); training batches are all valid.
  caption  str numpy array [B]: stays on the host (text encoders run there).
  skipped  int64 scalar: corrupt images skipped by this host's iterator so
           far, restored with its state; log it, don't feed it to the step.

Order of work, and why:
  * Shard first (a strided slice, truncated so every host gets the same
    count): hosts read disjoint examples and, with finite epochs, yield the
    same number of batches, which lockstep multi-host steps need.
  * Shuffle before repeat: grain reseeds each epoch, so every epoch has a
    new order that is still a pure function of (seed, epoch).
  * Decode and resize in the random-access stage: grain runs it in
    `num_threads` threads (PIL releases the GIL) and, with worker_count > 0,
    in worker processes.
  * A corrupt image decodes to None; the next stage drops it and tells the
    next good element how many it dropped, so batches stay full and the
    per-batch counts sum exactly even across worker processes. The running
    total lives in the last stage, in the main process, inside the state.
"""

import functools
import logging
from typing import Any

import grain
import jax
import numpy as np

from hart_jax.data import transforms
from hart_jax.errors import ConfigError

# A source where nothing decodes would otherwise spin forever on repeat.
MAX_CONSECUTIVE_SKIPS = 1000
# Logged individually; beyond this only every 1000th, to keep logs short.
_LOG_FIRST_SKIPS = 10


class _Preprocess:
  """Record -> {"image": uint8 [S, S, 3], "label", "caption"} or None."""

  def __init__(self, image_size: int, resize: str):
    self.image_size, self.resize = image_size, resize
    self._failures = 0  # Per process: only for rate-limiting the log.

  def __call__(self, record: dict) -> dict | None:
    if "tokens" in record:
      # A token-cache record (data/token_cache.py): nothing to decode.
      return {"tokens": record["tokens"], "frest": record["frest"],
              "label": np.int32(record.get("label", 0)),
              "caption": str(record.get("caption", ""))}
    try:
      image = transforms.fit_square(transforms.to_rgb(record["image"]),
                                    self.image_size, self.resize)
    except Exception as e:  # pylint: disable=broad-except
      # Any decoder error (PIL raises OSError, ValueError, SyntaxError,
      # DecompressionBombError, ...) means one bad file, not a bad run.
      self._failures += 1
      if (self._failures <= _LOG_FIRST_SKIPS
          or self._failures % 1000 == 0):
        logging.warning("skipping unreadable image %s (%s: %s); %d so far "
                        "in this process", record.get("path", "?"),
                        type(e).__name__, e, self._failures)
      return None
    return {"image": image, "label": np.int32(record.get("label", 0)),
            "caption": str(record.get("caption", ""))}


class _DropCorruptIterator(grain.DatasetIterator):
  """Drops None elements, stamping each kept one with how many it dropped."""

  def __next__(self):
    dropped = 0
    while True:
      element = next(self._parent)
      if element is not None:
        return {**element, "skipped": dropped}
      dropped += 1
      if dropped >= MAX_CONSECUTIVE_SKIPS:
        raise RuntimeError(f"{dropped} images in a row could not be decoded;"
                           " the source looks broken (see the warnings)")

  # Stateless: a state is only taken between elements, when the pending
  # count is 0, so the parent's state is the whole state.
  def get_state(self) -> dict[str, Any]:
    return self._parent.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state)


class _DropCorrupt(grain.IterDataset):
  """Skips the Nones that `_Preprocess` returns for unreadable images."""

  def __iter__(self):
    return _DropCorruptIterator(self._parent.__iter__())


class _RunningSkipsIterator(grain.DatasetIterator):
  """Turns per-batch skip counts into a running total kept in the state."""

  def __init__(self, parent):
    super().__init__(parent)
    self._skipped = 0

  def __next__(self):
    batch = next(self._parent)
    self._skipped += int(batch["skipped"])
    batch["skipped"] = np.int64(self._skipped)
    return batch

  def get_state(self) -> dict[str, Any]:
    return {"parent": self._parent.get_state(), "skipped": self._skipped}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._skipped = int(state["skipped"])


class _RunningSkips(grain.IterDataset):
  """Last stage: batch["skipped"] becomes this iterator's running total."""

  def __iter__(self):
    return _RunningSkipsIterator(self._parent.__iter__())


def _collate(elements: list[dict], batch_size: int) -> dict[str, np.ndarray]:
  """Stacks elements; pads a short (last) batch with invalid zeros."""
  n = len(elements)
  fields = [k for k in elements[0] if k not in ("caption", "skipped")]
  out = {k: np.stack([np.asarray(e[k]) for e in elements]) for k in fields}
  captions = [e["caption"] for e in elements]
  valid = np.ones(batch_size, bool)
  if n < batch_size:
    pad = batch_size - n
    out = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
           for k, v in out.items()}
    captions += [""] * pad
    valid[n:] = False
  if "image" in out:
    out["image"] = transforms.to_model_range(out["image"])
  out["label"] = out["label"].astype(np.int32)
  return {**out, "valid": valid, "caption": np.array(captions, dtype=np.str_),
          "skipped": np.int64(sum(e["skipped"] for e in elements))}


def make_dataset(source, *, image_size: int, batch_size: int, seed: int,
                 shard_index: int | None = None,
                 shard_count: int | None = None, shuffle: bool = True,
                 num_epochs: int | None = None, worker_count: int = 0,
                 resize: str = "bicubic", drop_remainder: bool = True,
                 num_threads: int = 8) -> grain.IterDataset:
  """Builds this host's batched, deterministic, checkpointable dataset.

  Args:
    source: a random-access source (see sources.py) of {"image", "label",
      "caption"} records; `image` is encoded bytes or a uint8 array.
    image_size: the square side S of every output image.
    batch_size: examples per batch on this host (global batch / hosts).
    seed: shuffle seed; the same seed gives the same batches.
    shard_index: this host's shard; default `jax.process_index()`.
    shard_count: number of shards; default `jax.process_count()`.
    shuffle: shuffle (reshuffled every epoch).
    num_epochs: passes over the data; None repeats forever.
    worker_count: decode/batch processes (0: in this process). Needs a
      `__main__` guard in scripts (spawn) and gives a different, equally
      deterministic order than 0.
    resize: "bicubic" or "pad"; see `transforms.fit_square`.
    drop_remainder: drop a last partial batch (True), or pad it to
      `batch_size` and mark the padding in `valid` (for evaluation).
    num_threads: decode threads per process.

  Returns:
    A grain IterDataset; `iter()` gives an iterator with get_state and
    set_state (also savable by orbax via grain.checkpoint).
  """
  if shard_index is None:
    shard_index = jax.process_index()
  if shard_count is None:
    shard_count = jax.process_count()
  if not 0 <= shard_index < shard_count:
    raise ConfigError(f"shard_index {shard_index} not in "
                      f"[0, {shard_count})")
  per_shard = len(source) // shard_count
  # Repeated forever, batches simply span epochs; finite epochs must fill
  # at least one batch or the iterator would be empty.
  if per_shard < 1 or (drop_remainder and num_epochs is not None
                       and per_shard * num_epochs < batch_size):
    raise ConfigError(f"{len(source)} examples over {shard_count} shard(s) "
                      f"and {num_epochs} epoch(s) fill no batch of "
                      f"{batch_size}")
  if resize not in transforms.RESIZE_MODES:
    raise ConfigError(f"resize must be one of {transforms.RESIZE_MODES}, "
                      f"got {resize!r}")
  ds = grain.MapDataset.source(source)
  ds = ds[:per_shard * shard_count][shard_index::shard_count]
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  ds = ds.map(_Preprocess(image_size, resize))
  read = grain.ReadOptions(num_threads=num_threads,
                           prefetch_buffer_size=max(64, 2 * batch_size))
  it_ds = _DropCorrupt(ds.to_iter_dataset(read, allow_nones=True))
  it_ds = it_ds.batch(batch_size, drop_remainder=drop_remainder,
                      batch_fn=functools.partial(_collate,
                                                   batch_size=batch_size))
  if worker_count > 0:
    _mark_flags_parsed()
    it_ds = it_ds.mp_prefetch(
        grain.MultiprocessingOptions(num_workers=worker_count))
  return _RunningSkips(it_ds)


def _mark_flags_parsed() -> None:
  # grain's worker processes read absl flags; outside `app.run` (tests,
  # notebooks) nothing has parsed them and grain would raise.
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def default_batch_spec(mesh: jax.sharding.Mesh) -> jax.sharding.PartitionSpec:
  """Batch axis over the mesh's data-parallel axes ("data", "fsdp")."""
  axes = tuple(a for a in ("data", "fsdp") if a in mesh.axis_names)
  return jax.sharding.PartitionSpec(axes or None)


def global_batch(batch: dict, mesh: jax.sharding.Mesh,
                 spec=None) -> dict[str, jax.Array]:
  """This host's numpy batch -> global jax.Arrays sharded on the batch axis.

  Every host calls this with its own batch (same shapes on all hosts); the
  global batch is their concatenation in process order. Only numeric
  arrays with a batch axis are converted: captions (strings) and the
  `skipped` scalar are host-side and left out.

  Args:
    batch: a batch from `make_dataset` (or any dict of arrays).
    mesh: the device mesh.
    spec: a PartitionSpec (or NamedSharding) for the leading axis; default
      `default_batch_spec(mesh)`. Trailing axes are replicated.

  Returns:
    {name: jax.Array} with global shape [B * process_count, ...].
  """
  if isinstance(spec, jax.sharding.NamedSharding):
    sharding = spec
  else:
    sharding = jax.sharding.NamedSharding(
        mesh, default_batch_spec(mesh) if spec is None else spec)
  out = {}
  for name, value in batch.items():
    if not isinstance(value, (np.ndarray, jax.Array)):
      continue
    if value.ndim == 0 or value.dtype.kind not in "biuf":
      continue
    out[name] = jax.make_array_from_process_local_data(sharding, value)
  return out

