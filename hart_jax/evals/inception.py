"""The Inception-v3 network of FID (TF-FID / pytorch-fid), in Flax NHWC.

This is the graph of TensorFlow's `inception-2015-12-05` as pytorch-fid
ports it (`fid_inception_v3`): torchvision's Inception-v3 layout with four
differences that make it reproduce TF's FID features,

  * Mixed_5b-d (`FIDInceptionA`), Mixed_6b-e (`FIDInceptionC`) and
    Mixed_7b (`FIDInceptionE_1`) average-pool their pool branch 3x3/1 with
    padding 1 *excluding* the padded zeros from the mean, as TF does;
  * Mixed_7c (`FIDInceptionE_2`) max-pools that branch instead (a quirk of
    the TF graph that FID inherited);
  * every conv is bias-free and followed by BatchNorm (eps 1e-3) and ReLU;
  * the output used is pool3: the global average of Mixed_7c, 2048-d.

Input: NHWC float images already in the network's range [-1, 1], at least
75x75 (299x299 for FID). How images get there is the caller's choice:
`resize.clean_fid_inputs` (clean-fid: PIL bicubic in float, then
(x - 128) / 128, as the TF graph itself normalises) or
`pytorch_fid_inputs` (pytorch-fid: bilinear resize without antialiasing,
then 2x - 1 on [0, 1] data).

Weights: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (read with
torch.load(weights_only=True) only), or a .safetensors file with the same
keys (`python -m hart_jax.evals.inception IN.pth OUT.safetensors` writes
one). Keys follow torchvision: `Mixed_6b.branch7x7_2.conv.weight`,
`....bn.{weight,bias,running_mean,running_var}`.

Convs run at HIGHEST precision: on TPU the default bf16 passes would move
FID by more than the differences between models it is meant to resolve.
"""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from hart_jax.errors import InputError
from hart_jax.evals import torch_weights
from hart_jax.interop import state_dict_io

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/"
                   "download/fid_weights/pt_inception-2015-12-05-6726825d.pth")
FEATURES = 2048
FID_SIZE = 299
MIN_SIZE = 75  # smallest input for which every stride-2 stage stays >= 1
_BN_EPS = 1e-3
_HIGHEST = jax.lax.Precision.HIGHEST


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class _FrozenBatchNorm(nn.Module):
  """Inference BatchNorm; the running statistics are params here.

  The network is never trained, so its four torch tensors sit side by side
  in `params` and `load_fid_inception` returns one tree.
  """

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    mean = self.param("mean", nn.initializers.zeros, (c,))
    var = self.param("var", nn.initializers.ones, (c,))
    return (x - mean) * jax.lax.rsqrt(var + _BN_EPS) * scale + bias


class ConvBN(nn.Module):
  """torchvision's BasicConv2d: conv (no bias) -> BatchNorm -> ReLU."""
  features: int
  kernel: int | tuple[int, int]
  stride: int = 1
  padding: int | tuple[int, int] = 0

  @nn.compact
  def __call__(self, x):
    ph, pw = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel), self.stride,
                padding=((ph, ph), (pw, pw)), use_bias=False,
                precision=_HIGHEST, name="conv")(x)
    return nn.relu(_FrozenBatchNorm(name="bn")(x))


def _tf_avg_pool(x):
  # TF's 3x3/1 SAME average pool divides by the in-image count only.
  return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), (2, 2))


class InceptionA(nn.Module):
  """FIDInceptionA (Mixed_5b-d): 64 + 64 + 96 + pool_features channels."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = ConvBN(64, 1, name="branch1x1")(x)
    b5 = ConvBN(48, 1, name="branch5x5_1")(x)
    b5 = ConvBN(64, 5, padding=2, name="branch5x5_2")(b5)
    b3 = ConvBN(64, 1, name="branch3x3dbl_1")(x)
    b3 = ConvBN(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = ConvBN(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = ConvBN(self.pool_features, 1, name="branch_pool")(_tf_avg_pool(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a, the 35 -> 17 reduction: 384 + 96 + input channels."""

  @nn.compact
  def __call__(self, x):
    b3 = ConvBN(384, 3, stride=2, name="branch3x3")(x)
    bd = ConvBN(64, 1, name="branch3x3dbl_1")(x)
    bd = ConvBN(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = ConvBN(96, 3, stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """FIDInceptionC (Mixed_6b-e): factorised 7x7 convs, 4 x 192 channels."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = ConvBN(192, 1, name="branch1x1")(x)
    b7 = ConvBN(c7, 1, name="branch7x7_1")(x)
    b7 = ConvBN(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = ConvBN(c7, 1, name="branch7x7dbl_1")(x)
    bd = ConvBN(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = ConvBN(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = ConvBN(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = ConvBN(192, 1, name="branch_pool")(_tf_avg_pool(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a, the 17 -> 8 reduction: 320 + 192 + input channels."""

  @nn.compact
  def __call__(self, x):
    b3 = ConvBN(192, 1, name="branch3x3_1")(x)
    b3 = ConvBN(320, 3, stride=2, name="branch3x3_2")(b3)
    b7 = ConvBN(192, 1, name="branch7x7x3_1")(x)
    b7 = ConvBN(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = ConvBN(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = ConvBN(192, 3, stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """FIDInceptionE_1 (pool "avg", Mixed_7b) / _E_2 ("max", Mixed_7c).

  320 + 2 x 384 + 2 x 384 + 192 = 2048 channels.
  """
  pool: str

  @nn.compact
  def __call__(self, x):
    b1 = ConvBN(320, 1, name="branch1x1")(x)
    b3 = ConvBN(384, 1, name="branch3x3_1")(x)
    b3 = [ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
          ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)]
    bd = ConvBN(448, 1, name="branch3x3dbl_1")(x)
    bd = ConvBN(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = [ConvBN(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
          ConvBN(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)]
    if self.pool == "avg":
      pooled = _tf_avg_pool(x)
    else:
      pooled = nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))
    bp = ConvBN(192, 1, name="branch_pool")(pooled)
    return jnp.concatenate([b1, *b3, *bd, bp], axis=-1)


class FIDInception(nn.Module):
  """NHWC images in [-1, 1] ([B, H, W, 3], H, W >= 75) -> pool3 [B, 2048]."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if min(x.shape[1:3]) < MIN_SIZE:
      raise InputError(f"FID Inception needs images of at least {MIN_SIZE}x"
                       f"{MIN_SIZE} pixels, got {x.shape[1]}x{x.shape[2]}")
    x = x.astype(jnp.float32)
    x = ConvBN(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
    x = ConvBN(32, 3, name="Conv2d_2a_3x3")(x)
    x = ConvBN(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = ConvBN(80, 1, name="Conv2d_3b_1x1")(x)
    x = ConvBN(192, 3, name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_s2(x)
    for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64),
                                ("Mixed_5d", 64)):
      x = InceptionA(pool_features, name=name)(x)
    x = InceptionB(name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160),
                     ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = InceptionC(c7, name=name)(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE("avg", name="Mixed_7b")(x)
    x = InceptionE("max", name="Mixed_7c")(x)
    return jnp.mean(x, axis=(1, 2))


def pytorch_fid_inputs(images: jax.Array) -> jax.Array:
  """pytorch-fid's input handling: [B, H, W, 3] in [0, 1] -> 299, [-1, 1].

  `F.interpolate(mode="bilinear", align_corners=False)` samples with half-
  pixel centres and no antialiasing, which is `jax.image.resize` "linear"
  with antialias=False (edge samples clamp the same way).
  """
  b, _, _, c = images.shape
  x = jax.image.resize(images.astype(jnp.float32), (b, FID_SIZE, FID_SIZE, c),
                       "linear", antialias=False)
  return 2.0 * x - 1.0


@functools.cache
def _abstract_params():
  # Tracing the init of 94 convs takes a second or two: do it once.
  return torch_weights.abstract_params(
      FIDInception(), jnp.zeros((1, MIN_SIZE, MIN_SIZE, 3), jnp.float32))


def fid_inception_params(state, what: str) -> dict:
  """A torch state dict (pytorch-fid / torchvision keys) -> params."""
  return torch_weights.params_from_state(_abstract_params(), state, what)


def safetensors_state(path: str) -> dict:
  """The state dict of a pytorch-fid weights file, checked against the
  network, without the BatchNorm counters: what a .safetensors copy
  holds."""
  load_fid_inception(path)  # validates every key first
  return {k: v for k, v in state_dict_io.read_state_dict(path).items()
          if not k.endswith("num_batches_tracked")}


def load_fid_inception(path: str) -> tuple[FIDInception, dict]:
  """The FID Inception network and its params, from a local weights file.

  Args:
    path: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (any name
      not ending in .safetensors is read by torch.load(weights_only=True))
      or a .safetensors file with the same keys.

  Returns:
    (module, params): `module.apply({"params": params}, x)` gives pool3.

  Raises:
    InputError: the file does not exist (the message says what to
      download and where to put it).
    CheckpointError: the file is unreadable, or a key is missing or
      mis-shaped (each is named).
  """
  if not os.path.exists(path):
    raise InputError(
        f"FID Inception weights not found at {path}. hart_jax never "
        "downloads weights: download pytorch-fid's Inception weights from "
        f"{FID_WEIGHTS_URL} and put the file at {path} (e.g. `curl -L -o "
        f"{path} {FID_WEIGHTS_URL}`), or point the path at a .safetensors "
        "copy made by `python -m hart_jax.convert_fid_inception`")
  state = state_dict_io.read_state_dict(path)
  return FIDInception(), fid_inception_params(state, path)
