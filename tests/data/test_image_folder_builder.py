"""Image folder -> tfds array_record -> tfds.data_source, without TensorFlow."""

import numpy as np
import tensorflow_datasets as tfds

from hart_jax import data
from hart_jax.data import image_folder_builder, pipeline, transforms


def test_round_trip(class_folder, tmp_path):
  root, images = class_folder
  (root / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # Skipped.
  data_dir = tmp_path / "tfds"
  builder = image_folder_builder.build_image_folder_dataset(
      root, data_dir, image_size=16)
  name = image_folder_builder.config_name(root, 16)
  assert name == "pets_16px"
  assert builder.info.features["label"].names == ["cat", "dog_face"]
  files = list((data_dir / "hart_image_folder" / name).rglob(
      "*.array_record*"))
  assert files, "expected array_record files"

  # Read back by name, as the trainer would: tfds rebuilds the dataset from
  # the files' metadata (no builder class needed).
  source = data.make_source(f"tfds:hart_image_folder/{name}:train",
                            data_dir=str(data_dir))
  assert len(source) == len(images)  # broken.png left out.
  assert source.class_names == ("cat", "dog_face")
  raw = tfds.data_source(f"hart_image_folder/{name}", split="train",
                         data_dir=str(data_dir))
  by_caption_and_pixels = {}
  for i in range(len(source)):
    record = source[i]
    assert record["image"].dtype == np.uint8
    assert record["image"].shape == (16, 16, 3)
    key = (record["caption"], int(record["label"]), record["image"].tobytes())
    by_caption_and_pixels[key] = i
    np.testing.assert_array_equal(raw[i]["image"], record["image"])
  for path, array in images.items():
    label = 0 if path.startswith("cat/") else 1
    expected = transforms.fit_square(array, 16)
    key = (("cat", "dog face")[label], label, expected.tobytes())
    assert key in by_caption_and_pixels, path

  # A second call reuses the prepared dataset instead of rebuilding it.
  again = image_folder_builder.build_image_folder_dataset(root, data_dir, 16)
  assert again.info.splits["train"].num_examples == len(images)

  batch = next(iter(pipeline.make_dataset(source, image_size=16,
                                          batch_size=3, seed=0)))
  assert batch["image"].shape == (3, 16, 16, 3)
