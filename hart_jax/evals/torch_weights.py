"""torch state dicts -> the metric networks' Flax params.

The metric modules name their submodules after the torch attributes, so a
torch key is the Flax path joined with dots, with `layers_{i}` standing for
the ModuleList entry `layers.{i}` and the leaf renamed (kernel -> weight,
scale -> weight, mean -> running_mean, ...). Every missing or mis-shaped
key is named in one CheckpointError; keys the module does not use (the
Inception classifier `fc.*`, BatchNorm's `num_batches_tracked`, CLIP's
`logit_scale`) are ignored.
"""

import re
from typing import Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np

from hart_jax.errors import CheckpointError
from hart_jax.interop import naming

_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias",
           "embedding": "weight", "mean": "running_mean",
           "var": "running_var"}
_LIST_ITEM = re.compile(r"^(layers)_(\d+)$")


def torch_key(path: tuple[str, ...]) -> str:
  """The torch state-dict key of a Flax param path."""
  *modules, leaf = path
  modules = [_LIST_ITEM.sub(r"\1.\2", m) for m in modules]
  return ".".join(modules + [_LEAVES.get(leaf, leaf)])


def params_from_state(abstract, state: Mapping[str, np.ndarray], what: str,
                      key_of: Callable[[tuple[str, ...]], str] = torch_key
                      ) -> dict:
  """Fills an abstract params tree from a torch state dict.

  Args:
    abstract: the module's params as shapes (`jax.eval_shape` of init).
    state: torch-layout arrays by key (float32 or any float dtype).
    what: names the weights in errors (usually the file).
    key_of: Flax path -> torch key.

  Returns:
    The params tree as float32 jax arrays (Dense kernels transposed to
    [in, out], conv kernels to [kh, kw, in, out]).

  Raises:
    CheckpointError: naming every missing key and every shape mismatch
      (the first ten, and how many more).
  """
  flat = flax.traverse_util.flatten_dict(abstract)
  out, problems = {}, []
  for path, spec in flat.items():
    key, leaf = key_of(path), path[-1]
    if key not in state:
      problems.append(f"missing {key}")
      continue
    value = np.asarray(state[key], np.float32)
    want = naming.torch_shape(tuple(spec.shape), leaf)
    if value.shape != want:
      problems.append(f"{key} has shape {list(value.shape)}, expected "
                      f"{list(want)}")
      continue
    out[path] = jnp.asarray(naming.from_torch_layout(value, leaf))
  if problems:
    more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
    raise CheckpointError(f"{what}: weights do not fit the network: "
                          + "; ".join(problems[:10]) + more)
  return flax.traverse_util.unflatten_dict(out)


def abstract_params(module, *example_inputs) -> dict:
  """The module's params as ShapeDtypeStructs (nothing is computed)."""
  return jax.eval_shape(lambda: module.init(jax.random.key(0),
                                            *example_inputs)["params"])
