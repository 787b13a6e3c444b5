"""make_dataset: determinism, resume, sharding, corrupt files; global_batch."""

import json

import jax
import numpy as np
import pytest
from PIL import Image

from hart_jax.data import pipeline
from hart_jax.data.sources import ImageFolderSource, SyntheticSource
from tests.data.helpers import IndexSource


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_batch_format():
  ds = pipeline.make_dataset(SyntheticSource(64, 16), image_size=24,
                             batch_size=8, seed=0)
  batch = next(iter(ds))
  assert batch["image"].shape == (8, 24, 24, 3)
  assert batch["image"].dtype == np.float32
  assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  assert batch["label"].dtype == np.int32 and batch["label"].shape == (8,)
  assert batch["valid"].dtype == bool and batch["valid"].all()
  assert batch["caption"].shape == (8,) and batch["caption"].dtype.kind == "U"
  assert batch["skipped"] == 0


def test_same_seed_same_batches_other_seed_differs():
  make = lambda seed: pipeline.make_dataset(
      SyntheticSource(96, 16), image_size=16, batch_size=8, seed=seed)
  first = _take(iter(make(3)), 4)
  _assert_same(first, _take(iter(make(3)), 4))
  other = _take(iter(make(4)), 4)
  assert not all(np.array_equal(a["label"], b["label"])
                 for a, b in zip(first, other))


def test_unshuffled_order_and_epochs():
  ds = pipeline.make_dataset(IndexSource(12), image_size=8, batch_size=4,
                             seed=0, shuffle=False, num_epochs=2)
  labels = [b["label"].tolist() for b in iter(ds)]
  assert labels == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]] * 2


def test_each_epoch_is_a_new_permutation():
  ds = pipeline.make_dataset(IndexSource(16), image_size=8, batch_size=4,
                             seed=0, num_epochs=3)
  labels = np.concatenate([b["label"] for b in iter(ds)]).reshape(3, 16)
  for epoch in labels:
    assert sorted(epoch) == list(range(16))
  assert len({tuple(e) for e in labels}) == 3


@pytest.mark.parametrize("skip", [3, 5])  # Mid-epoch, and across the edge.
def test_resume_from_state_gives_the_same_batches(skip):
  ds = pipeline.make_dataset(IndexSource(20), image_size=8, batch_size=4,
                             seed=7)  # 5 batches per epoch.
  it = iter(ds)
  _take(it, skip)
  # The trainer stores the state as JSON (grain.checkpoint / orbax).
  state = json.loads(json.dumps(it.get_state()))
  expected = _take(it, 7)
  resumed = iter(ds)
  resumed.set_state(state)
  _assert_same(expected, _take(resumed, 7))


def test_shards_are_disjoint_and_cover_the_data():
  seen = []
  for index in range(2):
    ds = pipeline.make_dataset(IndexSource(43), image_size=8, batch_size=3,
                               seed=0, shard_index=index, shard_count=2,
                               num_epochs=1)
    seen.append(np.concatenate([b["label"] for b in iter(ds)]).tolist())
  assert not set(seen[0]) & set(seen[1])
  # 43 is truncated to 42 so both hosts yield 7 batches of 3.
  assert len(seen[0]) == len(seen[1]) == 21
  assert sorted(seen[0] + seen[1]) == list(range(42))


def test_default_shard_is_this_process():
  ds = pipeline.make_dataset(IndexSource(8), image_size=8, batch_size=8,
                             seed=0, num_epochs=1)
  if jax.process_count() == 1:
    assert sorted(next(iter(ds))["label"]) == list(range(8))


def test_padded_last_batch_is_marked_invalid():
  ds = pipeline.make_dataset(IndexSource(10), image_size=8, batch_size=4,
                             seed=0, shuffle=False, num_epochs=1,
                             drop_remainder=False)
  batches = list(iter(ds))
  assert len(batches) == 3
  assert batches[-1]["valid"].tolist() == [True, True, False, False]
  assert batches[-1]["label"].tolist() == [8, 9, 0, 0]
  assert batches[-1]["caption"].tolist() == ["#8", "#9", "", ""]


def _folder_with_corrupt_files(tmp_path):
  """12 good PNGs and 3 bad files (truncated, garbage, empty).

  Sorted by name, the bad ones come first.
  """
  rng = np.random.default_rng(0)
  root = tmp_path / "flat"
  root.mkdir()
  for i in range(12):
    array = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    Image.fromarray(array).save(root / f"good{i:02d}.png")
  data = (root / "good00.png").read_bytes()
  (root / "bad_truncated.png").write_bytes(data[:len(data) // 2])
  (root / "bad_garbage.png").write_bytes(b"\x89PNG not really" * 10)
  (root / "bad_empty.jpg").write_bytes(b"")
  return ImageFolderSource(root)


def test_corrupt_images_are_skipped_and_counted(tmp_path):
  source = _folder_with_corrupt_files(tmp_path)
  assert len(source) == 15
  ds = pipeline.make_dataset(source, image_size=8, batch_size=4, seed=0,
                             shuffle=False, num_epochs=1)
  batches = list(iter(ds))
  assert len(batches) == 3  # The 12 good ones, in full batches.
  assert all(b["valid"].all() for b in batches)
  captions = np.concatenate([b["caption"] for b in batches]).tolist()
  assert sorted(captions) == [f"good{i:02d}" for i in range(12)]
  # A running total: all 3 are dropped while the first batch is formed.
  assert [int(b["skipped"]) for b in batches] == [3, 3, 3]


def test_skip_count_survives_resume(tmp_path):
  ds = pipeline.make_dataset(_folder_with_corrupt_files(tmp_path),
                             image_size=8, batch_size=4, seed=1)
  it = iter(ds)
  _take(it, 5)  # Past the first epoch: its 3 bad files are counted.
  state = json.loads(json.dumps(it.get_state()))
  assert state["skipped"] >= 3
  expected = _take(it, 4)
  resumed = iter(ds)
  resumed.set_state(state)
  _assert_same(expected, _take(resumed, 4))
  assert expected[-1]["skipped"] >= 6


def test_all_corrupt_raises_instead_of_spinning(tmp_path, monkeypatch):
  monkeypatch.setattr(pipeline, "MAX_CONSECUTIVE_SKIPS", 20)
  root = tmp_path / "bad"
  root.mkdir()
  for i in range(4):
    (root / f"{i}.png").write_bytes(b"nope")
  ds = pipeline.make_dataset(ImageFolderSource(root), image_size=8,
                             batch_size=2, seed=0)
  with pytest.raises(RuntimeError, match="could not be decoded"):
    next(iter(ds))


def test_rejects_bad_arguments():
  with pytest.raises(ValueError, match="fill no batch"):
    pipeline.make_dataset(IndexSource(6), image_size=8, batch_size=4,
                          seed=0, shard_index=0, shard_count=2, num_epochs=1)
  # Repeated forever, a dataset smaller than a batch is fine.
  tiny = pipeline.make_dataset(IndexSource(3), image_size=8, batch_size=4,
                               seed=0, shuffle=False)
  assert next(iter(tiny))["label"].tolist() == [0, 1, 2, 0]
  with pytest.raises(ValueError, match="shard_index"):
    pipeline.make_dataset(IndexSource(6), image_size=8, batch_size=1,
                          seed=0, shard_index=2, shard_count=2)
  with pytest.raises(ValueError, match="resize"):
    pipeline.make_dataset(IndexSource(6), image_size=8, batch_size=1,
                          seed=0, resize="nearest")


def _data_mesh():
  n = jax.device_count()
  shape = (n // 2, 2) if n % 2 == 0 else (n, 1)
  return jax.make_mesh(shape, ("data", "fsdp"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def test_global_batch_shards_the_batch_axis():
  mesh = _data_mesh()
  n = mesh.size
  ds = pipeline.make_dataset(SyntheticSource(8 * n, 16), image_size=16,
                             batch_size=2 * n, seed=0)
  batch = next(iter(ds))
  spec = jax.sharding.PartitionSpec(("data", "fsdp"))
  # The trainer runs with transfer_guard("disallow"): this must be explicit.
  with jax.transfer_guard("disallow"):
    arrays = pipeline.global_batch(batch, mesh, spec)
  assert set(arrays) == {"image", "label", "valid"}  # No captions/skipped.
  for name, array in arrays.items():
    assert array.shape == batch[name].shape
    assert array.sharding.spec == spec
    assert array.sharding.mesh.shape == mesh.shape
    shard_rows = {s.data.shape[0] for s in array.addressable_shards}
    assert shard_rows == {2}
    np.testing.assert_array_equal(np.asarray(array), batch[name])
  # The default spec and a NamedSharding mean the same thing.
  named = jax.sharding.NamedSharding(mesh, spec)
  for other in (pipeline.global_batch(batch, mesh),
                pipeline.global_batch(batch, mesh, named)):
    assert other["image"].sharding.spec == spec


def test_worker_processes_give_a_resumable_stream():
  ds = pipeline.make_dataset(IndexSource(24), image_size=8, batch_size=4,
                             seed=0, num_epochs=1, worker_count=1)
  it = iter(ds)
  first = _take(it, 2)
  state = it.get_state()
  rest = list(it)
  it.close()
  labels = np.concatenate([b["label"] for b in first + rest])
  assert sorted(labels.tolist()) == list(range(24))
  resumed = iter(ds)
  resumed.set_state(state)
  _assert_same(rest, list(resumed))
  resumed.close()
