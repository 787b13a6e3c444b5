"""CLIP towers against transformers.CLIPModel; tokenizer; preprocessing.

A tiny random CLIP (hidden 64, 2 layers, patch 8, 32px images) and a tiny
BPE tokenizer are written with transformers' save_pretrained, so nothing
is downloaded; hart_jax then reads the folder without transformers.
"""

import json
import shutil

import numpy as np
import pytest

from hart_jax import sharding
from hart_jax.errors import CheckpointError, InputError
from hart_jax.evals import clip as hclip
from hart_jax.interop.state_dict_io import read_safetensors
from hart_jax.interop.state_dict_io import write_safetensors
from tests.helpers import require_module

# Byte-level BPE merges for a few words; every single byte is in the
# vocabulary too, so any text tokenizes.
MERGES = [("p", "h"), ("ph", "o"), ("pho", "t"), ("phot", "o</w>"),
          ("c", "a"), ("ca", "t</w>"), ("o", "f</w>"), ("d", "o"),
          ("do", "g</w>")]
PROMPTS = ["a photo of a cat", "A  PHOTO\tof Dogs!!", "a " * 100,
           "photo", "cat, dog & photo of 2 cats", "ünïcödé text"]


def _vocab():
  from tokenizers import pre_tokenizers  # pylint: disable=g-import-not-at-top
  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  vocab = {}
  for tok in (alphabet + [a + "</w>" for a in alphabet]
              + [a + b for a, b in MERGES]
              + ["<|startoftext|>", "<|endoftext|>"]):
    vocab.setdefault(tok, len(vocab))
  return vocab


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """(folder, torch CLIPModel, transformers tokenizer)."""
  torch = require_module("torch", "pip install torch==2.13.0")
  transformers = require_module("transformers", "pip install transformers")
  folder = tmp_path_factory.mktemp("clip")
  vocab = _vocab()
  tok = transformers.CLIPTokenizerFast(vocab=vocab, merges=MERGES)
  tok.save_pretrained(folder)
  eos, bos = vocab["<|endoftext|>"], vocab["<|startoftext|>"]
  config = transformers.CLIPConfig(
      text_config=dict(vocab_size=len(vocab), hidden_size=64,
                       intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=77,
                       eos_token_id=eos, bos_token_id=bos, pad_token_id=eos),
      vision_config=dict(hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4,
                         image_size=32, patch_size=8),
      projection_dim=48)
  torch.manual_seed(0)
  model = transformers.CLIPModel(config).eval()
  with torch.no_grad():
    # transformers initialises LayerNorms to (1, 0): perturb them so a
    # swapped weight/bias or a missing norm would show.
    for name, p in model.named_parameters():
      if "norm" in name or "layrnorm" in name:
        p.add_(0.2 * torch.randn_like(p))
  model.save_pretrained(folder)
  return folder, model, tok


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(0)
  # Landscape, portrait, square and exact-size images.
  return [rng.integers(0, 256, shape, dtype=np.uint8)
          for shape in ((40, 50, 3), (37, 32, 3), (32, 32, 3), (64, 33, 3),
                        (90, 45, 3), (33, 35, 3))]


def _torch_embeds(model, tok, images):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  proc = transformers.CLIPImageProcessorPil(
      size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
  pixels = proc(images=images, return_tensors="np")["pixel_values"]
  text = tok(PROMPTS, padding="max_length", max_length=77, truncation=True,
             return_tensors="pt")
  with torch.no_grad():
    out = model(input_ids=text["input_ids"],
                attention_mask=text["attention_mask"],
                pixel_values=torch.from_numpy(pixels))
    image_features = model.get_image_features(
        pixel_values=torch.from_numpy(pixels)).pooler_output
  return pixels, out, image_features.numpy()


def test_tokenizer_matches_transformers(tiny):
  folder, _, tok = tiny
  clip = hclip.load_clip(folder)
  want = tok(PROMPTS, padding="max_length", max_length=77, truncation=True,
             return_tensors="np")["input_ids"]
  got = clip.tokenizer(PROMPTS)
  np.testing.assert_array_equal(got, want)
  assert got.dtype == np.int32 and got.shape == (len(PROMPTS), 77)
  # The 100-word prompt keeps its end token after truncation.
  assert got[2, -1] == clip.tokenizer.eos_id


def test_preprocessing_matches_clip_image_processor(tiny, images):
  pixels, _, _ = _torch_embeds(tiny[1], tiny[2], images)
  got = hclip.load_clip(tiny[0]).preprocess(images)
  assert got.shape == (len(images), 32, 32, 3)
  # Measured: 0 (the same PIL resize; the same float ops).
  np.testing.assert_allclose(got, pixels.transpose(0, 2, 3, 1), atol=1e-6)


def test_embeddings_and_score_match_transformers(tiny, images):
  folder, model, tok = tiny
  _, out, image_features = _torch_embeds(model, tok, images)
  clip = hclip.load_clip(folder)
  img = hclip.image_embeds(clip, images)
  txt = hclip.text_embeds(clip, PROMPTS)
  # Measured: 7e-7 absolute on embeddings up to 2.2; 1.6e-7 once unit.
  np.testing.assert_allclose(img, image_features, rtol=1e-4, atol=1e-4)
  unit = lambda e: e / np.linalg.norm(e, axis=-1, keepdims=True)
  np.testing.assert_allclose(unit(img), out.image_embeds.numpy(),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(unit(txt), out.text_embeds.numpy(),
                             rtol=1e-4, atol=1e-4)
  cos = np.sum(out.image_embeds.numpy() * out.text_embeds.numpy(), -1)
  score = hclip.clip_score(clip, images, PROMPTS)
  # Measured: 7e-6 (scores are in [0, 100]); 5 of these 6 are clipped.
  np.testing.assert_allclose(score, 100 * np.maximum(cos, 0), atol=1e-4)
  # Clipping at 0: of a pair and its negation exactly one scores > 0.
  flipped = hclip.score_from_embeds(img, -txt)
  plain = hclip.score_from_embeds(img, txt)
  assert np.all((plain > 0) ^ (flipped > 0))
  cos64 = np.sum(unit(img.astype(np.float64)) * unit(txt.astype(np.float64)),
                 -1)
  np.testing.assert_allclose(plain + flipped, 100 * np.abs(cos64),
                             rtol=1e-12)


def test_sharded_embeddings_equal_single_device(tiny, images):
  clip = hclip.load_clip(tiny[0])
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
  for fn, inputs in ((hclip.image_embeds, images),
                     (hclip.text_embeds, PROMPTS)):
    # 6 rows on 8 devices: one chunk, padded to 8.
    np.testing.assert_allclose(fn(clip, inputs, mesh=mesh),
                               fn(clip, inputs), rtol=1e-5, atol=1e-6)


def test_legacy_eos_token_id_pools_at_the_same_token(tiny, tmp_path):
  """Configs with eos_token_id 2 pool at argmax(ids), which is the end
  token's position too (it has the largest id)."""
  folder = tmp_path / "legacy"
  shutil.copytree(tiny[0], folder)
  raw = json.loads((folder / "config.json").read_text())
  raw["text_config"]["eos_token_id"] = 2
  (folder / "config.json").write_text(json.dumps(raw))
  legacy = hclip.load_clip(folder)
  assert legacy.module.config.eos_token_id == 2
  np.testing.assert_allclose(hclip.text_embeds(legacy, PROMPTS),
                             hclip.text_embeds(hclip.load_clip(tiny[0]),
                                               PROMPTS), rtol=1e-6)


def test_bad_folders_and_inputs_are_named(tiny, tmp_path, images):
  with pytest.raises(InputError, match="no config.json"):
    hclip.load_clip(tmp_path)
  folder = tmp_path / "bad"
  shutil.copytree(tiny[0], folder)
  state = read_safetensors(str(folder / "model.safetensors"))
  del state["text_model.encoder.layers.1.mlp.fc2.bias"]
  write_safetensors(str(folder / "model.safetensors"), state)
  with pytest.raises(CheckpointError,
                     match="missing text_model.encoder.layers.1.mlp.fc2.bias"):
    hclip.load_clip(folder)
  clip = hclip.load_clip(tiny[0])
  with pytest.raises(InputError, match="one prompt per image"):
    hclip.clip_score(clip, images, PROMPTS[:2])
  with pytest.raises(InputError, match="uint8 RGB"):
    clip.preprocess([np.zeros((32, 32), np.uint8)])
