"""CLIP's inputs without transformers: the BPE tokenizer and image pixels.

Text: the folder's `tokenizer.json` is run by the `tokenizers` library,
which holds CLIP's whole pipeline in that file (NFC, whitespace squashed,
lowercase, CLIP's split regex, byte-level BPE with `</w>` word ends,
<|startoftext|> ... <|endoftext|> around the ids). Prompts are truncated
to the text tower's 77 positions (the end token kept) and padded to that
length with <|endoftext|>, as `CLIPTokenizer(padding="max_length")` does
for the OpenAI checkpoints. The text tower is causal and pools at the
first end token, so what follows it never changes the embedding.

Images: the PIL path of transformers' CLIPImageProcessor (its
`CLIPImageProcessorPil`, which is also the historical slow processor):

  1. the uint8 RGB image is resized with PIL BICUBIC (on uint8, rounded
     back to uint8) so that its shorter side is `shortest_edge` and the
     longer one int(shortest_edge * long / short);
  2. center-cropped to crop x crop, top = (H - crop) // 2,
     left = (W - crop) // 2;
  3. scaled by 1/255 (in float64, then float32) and normalised per channel
     with the CLIP mean and std.

transformers' torchvision backend (used when torchvision is installed)
resizes tensors with torchvision instead and differs by a few 1/255 steps
at edges; this module follows the PIL path on purpose, since it needs no
torch.
"""

import dataclasses
import json
import pathlib

import numpy as np
from PIL import Image
import tokenizers

from hart_jax.errors import CheckpointError, InputError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
EOS_TOKEN = "<|endoftext|>"


class ClipTokenizer:
  """Prompts -> int32 ids [B, length] from a CLIP `tokenizer.json`."""

  def __init__(self, path, length: int):
    """Reads the tokenizer.

    Args:
      path: the `tokenizer.json` of a CLIP folder.
      length: the text tower's positions (77 for every OpenAI CLIP).

    Raises:
      CheckpointError: an unreadable file, or one without <|endoftext|>.
    """
    try:
      self._tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception
      raise CheckpointError(f"{path}: not a tokenizers tokenizer.json: "
                            f"{e}") from e
    eos = self._tok.token_to_id(EOS_TOKEN)
    if eos is None:
      raise CheckpointError(f"{path}: has no {EOS_TOKEN} token; not a CLIP "
                            "tokenizer")
    self.eos_id = eos
    self.length = length
    # Truncation leaves room for the start and end tokens added after it.
    self._tok.enable_truncation(length)
    self._tok.enable_padding(length=length, pad_id=eos, pad_token=EOS_TOKEN)

  def __call__(self, prompts) -> np.ndarray:
    if isinstance(prompts, str):
      raise InputError("CLIP prompts must be a list of strings, not one "
                       "string")
    encodings = self._tok.encode_batch(list(prompts))
    return np.array([e.ids for e in encodings], np.int32).reshape(
        len(encodings), self.length)


def _side(value, what: str, path) -> int:
  """An int size, or a {"shortest_edge"|"height"/"width": n} dict."""
  if isinstance(value, int):
    return value
  if isinstance(value, dict):
    if "shortest_edge" in value:
      return int(value["shortest_edge"])
    if value.get("height") == value.get("width") and "height" in value:
      return int(value["height"])
  raise CheckpointError(f"{path}: unsupported {what} {value!r} (want an "
                        "int, shortest_edge, or a square height/width)")


@dataclasses.dataclass(frozen=True)
class ClipPreprocess:
  """CLIPImageProcessor's PIL path (module docstring) as a callable."""
  shortest_edge: int = 224
  crop: int = 224
  mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
  std: tuple[float, float, float] = OPENAI_CLIP_STD

  @classmethod
  def from_folder(cls, folder, image_size: int) -> "ClipPreprocess":
    """The folder's preprocessor_config.json, else OpenAI's at image_size.

    Raises:
      CheckpointError: a crop other than the vision tower's image size.
    """
    path = pathlib.Path(folder) / "preprocessor_config.json"
    if not path.exists():
      return cls(image_size, image_size)
    raw = json.loads(path.read_text())
    out = cls(_side(raw.get("size", image_size), "size", path),
              _side(raw.get("crop_size", image_size), "crop_size", path),
              tuple(raw.get("image_mean", OPENAI_CLIP_MEAN)),
              tuple(raw.get("image_std", OPENAI_CLIP_STD)))
    if out.crop != image_size or out.shortest_edge < out.crop:
      raise CheckpointError(
          f"{path}: crop {out.crop} from a {out.shortest_edge}px resize "
          f"does not fit the vision tower's {image_size}px input")
    return out

  def one(self, image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [crop, crop, 3], normalised."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise InputError(f"CLIP takes uint8 RGB images [H, W, 3], got "
                       f"{image.dtype} {list(image.shape)}")
    h, w = image.shape[:2]
    edge = self.shortest_edge
    if w <= h:
      new_h, new_w = int(edge * h / w), edge
    else:
      new_h, new_w = edge, int(edge * w / h)
    resized = np.asarray(Image.fromarray(image).resize(
        (new_w, new_h), resample=Image.BICUBIC))
    top, left = (new_h - self.crop) // 2, (new_w - self.crop) // 2
    crop = resized[top:top + self.crop, left:left + self.crop]
    x = (crop.astype(np.float64) * (1 / 255)).astype(np.float32)
    return ((x - np.float32(self.mean)) / np.float32(self.std)).astype(
        np.float32)

  def __call__(self, images) -> np.ndarray:
    """A list (or array) of uint8 images -> float32 [B, crop, crop, 3]."""
    return np.stack([self.one(im) for im in images])
