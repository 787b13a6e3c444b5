"""Sources, transforms, the make_source factory and the Debian datasets."""

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from hart_jax import data
from hart_jax.data import debian, pipeline, sources, synthetic, transforms


def test_synthetic_is_deterministic_per_index():
  a = sources.SyntheticSource(50, 32, num_classes=10, seed=1)
  b = sources.SyntheticSource(50, 32, num_classes=10, seed=1)
  for i in (0, 17, 49):
    np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
    assert a[i]["caption"] == b[i]["caption"]
  c = sources.SyntheticSource(50, 32, num_classes=10, seed=2)
  assert not np.array_equal(a[0]["image"], c[0]["image"])
  labels = [int(a[i]["label"]) for i in range(50)]
  assert set(labels) <= set(range(10)) and len(set(labels)) > 5
  assert a[0]["image"].shape == (32, 32, 3) and a[0]["image"].dtype == np.uint8
  with pytest.raises(IndexError):
    a[50]  # pylint: disable=pointless-statement


def test_synthetic_class_decides_shape_and_caption():
  source = sources.SyntheticSource(40, 16, num_classes=30, seed=0)
  for i in range(40):
    record = source[i]
    label = int(record["label"])
    shape = synthetic.SHAPES[label % 10]
    color = synthetic.COLORS[label // 10][0]
    assert record["caption"].endswith(f"{color} {shape}")
    # The shape's pixels are there: some pixels differ from the background.
    assert len(np.unique(record["image"].reshape(-1, 3), axis=0)) == 2


def test_transforms_alpha_grayscale_and_resizing():
  rgba = np.zeros((4, 4, 4), np.uint8)
  rgba[..., 0] = 200
  rgba[0, 0, 3] = 255
  buf = io.BytesIO()
  Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
  rgb = transforms.to_rgb(buf.getvalue())
  assert rgb[0, 0].tolist() == [200, 0, 0]
  assert rgb[1, 1].tolist() == [255, 255, 255]  # Transparent -> white.
  np.testing.assert_array_equal(transforms.to_rgb(rgba), rgb)
  gray = np.arange(16, dtype=np.uint8).reshape(4, 4)
  assert transforms.to_rgb(gray).shape == (4, 4, 3)

  image = np.random.default_rng(0).integers(0, 256, (28, 30, 3), np.uint8)
  assert transforms.fit_square(image, 64).shape == (64, 64, 3)
  assert transforms.fit_square(image, 16).shape == (16, 16, 3)
  # Center crop to 28x28 only: the pixels are untouched.
  np.testing.assert_array_equal(transforms.fit_square(image, 28),
                                image[:, 1:29])
  # Pad keeps every pixel and frames it in the border's color.
  framed = np.zeros((28, 28, 3), np.uint8)
  framed[5:20, 5:20] = 100
  padded = transforms.fit_square(framed, 32, "pad")
  np.testing.assert_array_equal(padded[2:30, 2:30], framed)
  assert padded[0, 0].tolist() == [0, 0, 0]
  assert transforms.to_model_range(np.array([0, 255], np.uint8)).tolist() \
      == [-1.0, 1.0]


def test_image_folder_with_classes(class_folder):
  root, images = class_folder
  source = sources.ImageFolderSource(root)
  assert source.class_names == ("cat", "dog_face")
  assert len(source) == len(images)
  for i in range(len(source)):
    record = source[i]
    expected_label = 0 if record["path"].startswith("cat/") else 1
    assert int(record["label"]) == expected_label
    assert record["caption"] == ("cat", "dog face")[expected_label]
    np.testing.assert_array_equal(transforms.to_rgb(record["image"]),
                                  images[record["path"]])
  # Sources travel to grain worker processes.
  assert len(pickle.loads(pickle.dumps(source))) == len(source)


def test_flat_image_folder_with_sidecars(tmp_path):
  for name in ("a", "b_c"):
    Image.new("RGB", (5, 5)).save(tmp_path / f"{name}.png")
  (tmp_path / "a.txt").write_text("a red apple\n")
  source = sources.ImageFolderSource(tmp_path)
  assert [source[i]["caption"] for i in range(2)] == ["a red apple", "b c"]
  assert source.flat and {int(source[i]["label"]) for i in range(2)} == {0}
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no images"):
    sources.ImageFolderSource(tmp_path / "empty")
  with pytest.raises(ValueError, match="not found"):
    sources.ImageFolderSource(tmp_path / "a.png")


def test_make_source_names(class_folder):
  root, images = class_folder
  assert isinstance(data.make_source("synthetic", num_examples=4),
                    sources.SyntheticSource)
  assert len(data.make_source(f"folder:{root}")) == len(images)
  with pytest.raises(ValueError, match="unknown data source 'imagenet'.*"
                     "fashion_mnist"):
    data.make_source("imagenet")
  with pytest.raises(ValueError, match="unknown data source"):
    data.make_source("folder:")
  with pytest.raises(debian.DatasetUnavailableError, match="prepared"):
    data.make_source("tfds:hart_no_such_dataset:train",
                     data_dir=str(root))


def test_missing_apt_get_says_how_to_install(tmp_path, monkeypatch):
  monkeypatch.setattr(debian.shutil, "which", lambda name: None)
  # Not found anywhere, even where an installed package would put it.
  monkeypatch.setattr(debian, "FASHION_MNIST_DIR", "no/such/dir")
  with pytest.raises(debian.DatasetUnavailableError,
                     match="apt-get install -y dataset-fashion-mnist"):
    debian.ensure_fashion_mnist(tmp_path)


def test_fashion_mnist(fashion_mnist_dir, tmp_path):
  source = sources.FashionMnistSource("test", path=fashion_mnist_dir)
  assert len(source) == 10000
  record = source[0]
  assert record["image"].shape == (28, 28, 3)
  assert (record["image"][..., 0] == record["image"][..., 2]).all()
  labels = np.array([int(source[i]["label"]) for i in range(200)])
  assert set(labels) == set(range(10))
  trouser = next(i for i in range(200) if labels[i] == 1)
  assert source[trouser]["caption"] == "a photo of a trouser"
  assert source[int(np.argmax(labels == 9))]["caption"] == \
      "a photo of an ankle boot"
  # Loaded pixels stay behind when the source goes to a worker process.
  assert len(pickle.dumps(source)) < 10_000
  assert len(data.make_source("fashion_mnist", split="all",
                              path=fashion_mnist_dir)) == 70000
  # 28px -> 32px: exactly padded, as the tokenizer needs a scale size.
  ds = pipeline.make_dataset(source, image_size=32, batch_size=16, seed=0,
                             resize="pad")
  batch = next(iter(ds))
  assert batch["image"].shape == (16, 32, 32, 3)
  assert batch["caption"][0].startswith("a photo of")


def test_gemojione(gemojione_dir):
  source = sources.GemojioneSource(gemojione_dir)
  assert len(source) >= 1700  # 1,794 in gemojione 3.3.0.
  names = [source[i]["caption"] for i in range(len(source))]
  assert "hundred points symbol" in names
  labels = {int(source[i]["label"]) for i in range(0, len(source), 7)}
  assert labels <= set(range(10)) and len(labels) >= 8
  rgb = transforms.to_rgb(source[names.index("hundred points symbol")]
                          ["image"])
  assert rgb.shape == (64, 64, 3)
  assert rgb[0, 0].tolist() == [255, 255, 255]  # Transparent corner.
  ds = pipeline.make_dataset(source, image_size=32, batch_size=8, seed=0)
  batch = next(iter(ds))
  assert batch["image"].shape == (8, 32, 32, 3) and batch["skipped"] == 0
