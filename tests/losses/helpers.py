"""Weights and variables shared by the loss tests (no compile needed)."""

import functools

import jax
import numpy as np

# torchvision's vgg16 `features` config ("M" = max-pool).
CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
       512, 512, 512)
TAPS = (3, 8, 15, 22, 29)  # relu1_2 .. relu5_3 indices in `features`
LIN_C = (64, 128, 256, 512, 512)


def random_lpips_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
  """Random weights in the documented layout (He-scaled, so activations
  stay O(1) through 13 layers and the comparison is meaningful)."""
  rng = np.random.default_rng(seed)
  sd, cin, idx = {}, 3, 0
  for v in CFG:
    if v == "M":
      idx += 1
      continue
    std = np.sqrt(2.0 / (cin * 9))
    sd[f"features.{idx}.weight"] = (
        rng.normal(0, std, (v, cin, 3, 3)).astype(np.float32))
    sd[f"features.{idx}.bias"] = rng.normal(0, .05, (v,)).astype(np.float32)
    cin, idx = v, idx + 2
  for k, c in enumerate(LIN_C):
    sd[f"lin{k}.model.1.weight"] = (
        rng.uniform(0, 1, (1, c, 1, 1)).astype(np.float32))
  return sd


def numpy_init(module, seed, *args, **kwargs):
  """Variables by name rule from eval_shape: no init program to compile
  (jitting the random initialisers costs ~10 s of CPU here)."""
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if name.endswith(("['scale']", "['var']")):
      return np.ones(s.shape, s.dtype)
    if s.ndim < 2 or "buffers" in name or "batch_stats" in name:
      return np.zeros(s.shape, s.dtype)
    fan_in = int(np.prod(s.shape[:-1]))
    return rng.normal(0, fan_in ** -0.5, s.shape).astype(s.dtype)

  shapes = jax.eval_shape(functools.partial(module.init, **kwargs),
                          jax.random.key(0), *args)
  return jax.tree_util.tree_map_with_path(fill, shapes)
