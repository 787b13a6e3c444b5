"""LPIPS perceptual distance, "vgg" variant, from a local weights file.

The network is the standard LPIPS v0.1 "vgg" model (Zhang et al. 2018):
inputs in [-1, 1] go through the LPIPS scaling layer, then VGG16 up to the
relu after conv1_2, conv2_2, conv3_3, conv4_3 and conv5_3; each stage's
features are unit-normalised over channels, their squared difference is
weighted per channel by a non-negative 1x1 conv (`lin0..lin4`), averaged
over space, and the five stages are summed.

Weights are never downloaded. `load_lpips_params` reads one .safetensors or
.npz file holding torch-layout tensors under these keys:

  features.{i}.weight  [O, I, 3, 3]   torchvision `vgg16().features` conv i,
  features.{i}.bias    [O]            i in 0 2 5 7 10 12 14 17 19 21 24 26 28
  lin{k}.model.1.weight [1, C_k, 1, 1]  k in 0..4, C = 64 128 256 512 512

Extra keys (torchvision's `classifier.*`, ...) are ignored. Whoever has the
torchvision VGG16 weights and the `lpips` package's `weights/v0.1/vgg.pth`
makes the file with `convert_torch_lpips` + `save_lpips_params`, or with
`python -m hart_jax.convert_lpips --vgg=VGG16.pth --lin=VGG_LIN.pth
--out=OUT.safetensors`.
"""

import logging
import os
import re
from typing import Any, Mapping

from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from hart_jax.interop import state_dict_io
from hart_jax.interop.state_dict_io import CheckpointError

# torchvision VGG16 `features` indices of the 13 convs, with (in, out).
VGG_CONVS = ((0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128),
             (10, 128, 256), (12, 256, 256), (14, 256, 256),
             (17, 256, 512), (19, 512, 512), (21, 512, 512),
             (24, 512, 512), (26, 512, 512), (28, 512, 512))
# Convs per stage: LPIPS taps the relu after the last conv of each stage,
# and a 2x2 max-pool opens every stage but the first.
_STAGE_SIZES = (2, 2, 3, 3, 3)
LIN_CHANNELS = (64, 128, 256, 512, 512)
_SHIFT = np.array([-.030, -.088, -.188], np.float32)
_SCALE = np.array([.458, .448, .450], np.float32)
_EPS = 1e-10  # lpips.normalize_tensor's eps


def _conv3x3(x, kernel, bias):
  y = jax.lax.conv_general_dilated(
      x, kernel, (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + bias


def _unit_normalise(feat: jax.Array) -> jax.Array:
  """feat / (||feat||_channels + eps), with a finite gradient at 0.

  Where ReLU zeroes a whole channel vector, sqrt's derivative at 0 would
  make the backward pass inf * 0 = NaN; the double `where` keeps the
  forward value bit-identical to lpips and the gradient finite.
  """
  sq = jnp.sum(feat * feat, axis=-1, keepdims=True)
  pos = sq > 0
  norm = jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)
  return feat / (norm + _EPS)


def vgg_features(params, x: jax.Array) -> list[jax.Array]:
  """The five LPIPS taps of VGG16 for scaled NHWC inputs."""
  convs, feats, h, i = params["vgg"], [], x, 0
  for stage, n in enumerate(_STAGE_SIZES):
    if stage:
      h = jax.lax.reduce_window(h, -jnp.inf, jax.lax.max, (1, 2, 2, 1),
                                (1, 2, 2, 1), "VALID")
    for _ in range(n):
      h = jax.nn.relu(_conv3x3(h, convs[i]["kernel"], convs[i]["bias"]))
      i += 1
    feats.append(h)
  return feats


def lpips_distance(params, x: jax.Array, y: jax.Array) -> jax.Array:
  """LPIPS(x, y) per image.

  Args:
    params: the tree from `load_lpips_params` (no gradient reaches it).
    x: images [B, H, W, 3] in [-1, 1]. H and W of at least 16 (four pools).
    y: images like x.

  Returns:
    [B] float32 distances (lpips returns the same values as [B, 1, 1, 1]).
  """
  params = jax.lax.stop_gradient(params)
  fx, fy = (vgg_features(params, (z.astype(jnp.float32) - _SHIFT) / _SCALE)
            for z in (x, y))
  total = jnp.zeros((x.shape[0],), jnp.float32)
  for a, b, w in zip(fx, fy, params["lin"]):
    d = _unit_normalise(a) - _unit_normalise(b)
    # Multiply-and-sum rather than `d**2 @ w`: with a dot here XLA:CPU
    # computed the two normalisations differently (LPIPS(x, x) ~ 1e-15);
    # this form keeps LPIPS(x, x) exactly 0 and costs nothing next to VGG.
    total = total + jnp.mean(jnp.sum(d * d * w, axis=-1), axis=(1, 2))
  return total


@struct.dataclass
class Lpips:
  """A callable LPIPS loss whose weights are a pytree field.

  Being a pytree, it can be passed *as an argument* to a jitted train step,
  which keeps VGG16's 59 MB out of the compiled program; closing over it
  also works, but jit then bakes the weights in as HLO constants.
  `params` is None when the loss is disabled: calls then return zeros.
  """
  params: Any = None

  @property
  def enabled(self) -> bool:
    return self.params is not None

  def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """Per-image LPIPS [B] of NHWC images in [-1, 1] (zeros if disabled)."""
    if self.params is None:
      return jnp.zeros((x.shape[0],), jnp.float32)
    return lpips_distance(self.params, x, y)


def _read_tensors(path: str) -> dict[str, np.ndarray]:
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
      raise CheckpointError(f"{path}: cannot be read as .npz: {e}") from e
  if path.endswith(".safetensors"):
    return state_dict_io.read_safetensors(path)
  raise CheckpointError(f"{path}: LPIPS weights must be .safetensors or .npz")


def load_lpips_params(path: str) -> dict[str, Any]:
  """Reads LPIPS-vgg weights (layout in the module docstring) for JAX.

  Args:
    path: a .safetensors or .npz file.

  Returns:
    {"vgg": [13 x {"kernel": [3, 3, I, O], "bias": [O]}],
     "lin": [5 x [C_k]]}, float32 jax arrays.

  Raises:
    CheckpointError: unreadable file, missing keys, wrong shapes, or
      negative lin weights (LPIPS clamps them to >= 0 when training, so a
      negative one means this is not an LPIPS file).
  """
  t = _read_tensors(path)
  want = {f"features.{i}.weight": (o, c, 3, 3) for i, c, o in VGG_CONVS}
  want.update({f"features.{i}.bias": (o,) for i, _, o in VGG_CONVS})
  want.update({f"lin{k}.model.1.weight": (1, c, 1, 1)
               for k, c in enumerate(LIN_CHANNELS)})
  missing = sorted(k for k in want if k not in t)
  if missing:
    raise CheckpointError(f"{path}: not an LPIPS-vgg weights file; missing "
                          f"{len(missing)} keys, e.g. {missing[:3]}")
  for k, shape in want.items():
    if tuple(t[k].shape) != shape:
      raise CheckpointError(f"{path}: {k} has shape {list(t[k].shape)}, "
                            f"expected {list(shape)}")
  lin = [np.asarray(t[f"lin{k}.model.1.weight"], np.float32).reshape(-1)
         for k in range(len(LIN_CHANNELS))]
  if any((w < 0).any() for w in lin):
    raise CheckpointError(f"{path}: negative lin weights; LPIPS lin layers "
                          "are non-negative")
  vgg = [{"kernel": jnp.asarray(np.asarray(
              t[f"features.{i}.weight"], np.float32).transpose(2, 3, 1, 0)),
          "bias": jnp.asarray(t[f"features.{i}.bias"], jnp.float32)}
         for i, _, _ in VGG_CONVS]
  return {"vgg": vgg, "lin": [jnp.asarray(w) for w in lin]}


def make_lpips(path: str | None) -> tuple[Lpips, bool]:
  """The perceptual loss for a config's weights path, or a disabled one.

  A missing file is not an error: tokenizer training still runs without
  the perceptual term, so this logs exactly one warning saying so and why
  (the returned loss never logs; it runs under jit). A file that exists but
  is not valid LPIPS weights raises.

  Args:
    path: LPIPS weights file, or None.

  Returns:
    (loss, enabled): `loss(x, y)` gives per-image distances [B] (zeros
    when disabled).
  """
  if path is None:
    why = "no weights path is configured (lpips path is None)"
  elif not os.path.exists(path):
    why = f"the weights file {path!r} does not exist"
  else:
    return Lpips(load_lpips_params(path)), True
  logging.warning(
      "LPIPS perceptual loss DISABLED: %s, and weights are never "
      "downloaded. Training continues without the perceptual term (expect "
      "blurrier reconstructions). To enable it, build the file with "
      "`python -m hart_jax.losses.lpips VGG16.pth VGG_LIN.pth OUT` (see "
      "hart_jax/losses/lpips.py).", why)
  return Lpips(None), False


def _as_numpy(v) -> np.ndarray:
  # torch tensors (without importing torch) or arrays.
  if hasattr(v, "detach"):
    v = v.detach().cpu().float().numpy()
  return np.asarray(v, np.float32)


def convert_torch_lpips(vgg_state_dict: Mapping[str, Any],
                        lin_state_dict: Mapping[str, Any]
                        ) -> dict[str, np.ndarray]:
  """torch state dicts -> the tensors `load_lpips_params` reads.

  Args:
    vgg_state_dict: torchvision `vgg16().state_dict()` (`features.{i}.*`),
      `vgg16().features.state_dict()` (`{i}.*`), or an `lpips.LPIPS`
      state dict (`net.slice{s}.{i}.*`, i being the same global index).
    lin_state_dict: the lpips `weights/v0.1/vgg.pth` dict or an
      `lpips.LPIPS` state dict (`lin{k}.model.1.weight`, or `lins.{k}.`).

  Returns:
    float32 numpy arrays keyed as in the module docstring; write them with
    `save_lpips_params`.
  """
  out = {}
  pattern = re.compile(r"^(?:features\.|net\.slice\d\.)?(\d+)\.(weight|bias)$")
  for k, v in vgg_state_dict.items():
    m = pattern.match(k)
    if m:
      out[f"features.{m.group(1)}.{m.group(2)}"] = _as_numpy(v)
  for k in range(len(LIN_CHANNELS)):
    for name in (f"lin{k}.model.1.weight", f"lins.{k}.model.1.weight"):
      if name in lin_state_dict:
        out[f"lin{k}.model.1.weight"] = _as_numpy(lin_state_dict[name])
        break
  return out


def save_lpips_params(path: str, tensors: Mapping[str, np.ndarray]) -> None:
  """Writes converted tensors as .safetensors (or .npz by extension)."""
  if path.endswith(".npz"):
    np.savez(path, **tensors)
  else:
    state_dict_io.write_safetensors(path, tensors)
