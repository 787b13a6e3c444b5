"""BERT's uncased WordPiece tokenizer, from a vocab.txt (no dependencies).

The steps of the reference `BertTokenizer` (do_lower_case, Chinese
characters split, accents stripped when lowercasing): clean control
characters, put spaces around CJK ideographs, split on whitespace,
lowercase and strip accents, split off every punctuation character, then
greedy longest-match WordPiece with "##" continuations; a word that cannot
be matched (or is over 100 characters) becomes [UNK].
"""

import pathlib
import unicodedata

import numpy as np

from hart_jax.errors import InputError

_MAX_WORD_CHARS = 100


class WordPieceTokenizer:
  """Text -> [CLS] pieces [SEP] ids, padded with [PAD] to a fixed length."""

  def __init__(self, vocab_path):
    words = pathlib.Path(vocab_path).read_text(encoding="utf-8").splitlines()
    self.vocab = {w: i for i, w in enumerate(words)}
    for special in ("[PAD]", "[UNK]", "[CLS]", "[SEP]"):
      if special not in self.vocab:
        raise InputError(f"{vocab_path}: no {special} token")
    self.pad, self.unk = self.vocab["[PAD]"], self.vocab["[UNK]"]
    self.cls, self.sep = self.vocab["[CLS]"], self.vocab["[SEP]"]

  def pieces(self, text: str) -> list[str]:
    out = []
    for word in _basic_split(text):
      out.extend(self._wordpiece(word))
    return out

  def encode(self, texts, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [B, max_length], mask bool): truncated to fit [CLS] and
    [SEP], as the reference does with truncation=True."""
    ids = np.full((len(texts), max_length), self.pad, np.int32)
    mask = np.zeros_like(ids, bool)
    for row, text in enumerate(texts):
      body = [self.vocab.get(p, self.unk) for p in self.pieces(str(text))]
      seq = [self.cls] + body[:max_length - 2] + [self.sep]
      ids[row, :len(seq)] = seq
      mask[row, :len(seq)] = True
    return ids, mask

  def _wordpiece(self, word: str) -> list[str]:
    if len(word) > _MAX_WORD_CHARS:
      return ["[UNK]"]
    pieces, start = [], 0
    while start < len(word):
      end = len(word)
      while end > start:
        piece = word[start:end] if start == 0 else "##" + word[start:end]
        if piece in self.vocab:
          break
        end -= 1
      if end == start:
        return ["[UNK]"]
      pieces.append(piece)
      start = end
    return pieces


def _basic_split(text: str) -> list[str]:
  cleaned = []
  for ch in text:
    cp = ord(ch)
    if cp == 0 or cp == 0xFFFD or _is_control(ch):
      continue
    if _is_cjk(cp):
      cleaned.append(f" {ch} ")
    else:
      cleaned.append(" " if _is_whitespace(ch) else ch)
  words = []
  for token in "".join(cleaned).split():
    token = unicodedata.normalize("NFD", token.lower())
    token = "".join(c for c in token if unicodedata.category(c) != "Mn")
    current = ""
    for ch in token:
      if _is_punctuation(ch):
        if current:
          words.append(current)
        words.append(ch)
        current = ""
      else:
        current += ch
    if current:
      words.append(current)
  return words


def _is_whitespace(ch: str) -> bool:
  return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
  if ch in "\t\n\r":
    return False
  return unicodedata.category(ch) in ("Cc", "Cf")


def _is_punctuation(ch: str) -> bool:
  cp = ord(ch)
  # ASCII symbols such as $ and ^ count as punctuation too.
  if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
    return True
  return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
  return any(lo <= cp <= hi for lo, hi in (
      (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF),
      (0x2A700, 0x2B73F), (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF),
      (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))
