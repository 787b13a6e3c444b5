"""Prompt (or class id) -> images in one call.

  from hart_jax import HartPipeline
  pipe = HartPipeline.load("out/demo")                 # a training workdir
  images = pipe(class_ids=[3, 3, 7], seed=0)           # -> PIL images
  pipe = HartPipeline.load("hart-0.7b-1024px",         # official folders
                           text_encoder="Qwen2-VL-1.5B-Instruct")
  images = pipe(["a red fox in snow"], seed=0)

Sampling settings are arguments with the official defaults (`sample.py`):
cfg 4.5, the official top-k schedule (600, then 300 from the 8th scale),
no top-p, `more_smooth` on (it must be off for FID). The same seed and
batch size give the same images. Each phase (text encoding, the AR
scales, the residual diffusion, decoding) is compiled once per shape and
kept: a second call with the same shapes compiles nothing, and
`last_timings` splits the time of the last call by phase.
"""

import dataclasses
import functools
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
from PIL import Image

from hart_jax import model_folders
from hart_jax import sampling
from hart_jax import sharding
from hart_jax.errors import ConfigError
from hart_jax.models.tokenizer import HybridTokenizer
from hart_jax.stages.common import image_grid

OFFICIAL_DEFAULTS = dict(cfg=4.5, top_k=None, top_p=0.0, more_smooth=True)


class HartPipeline:
  """A loaded model and its compiled sampling phases."""

  def __init__(self, model: model_folders.LoadedModel, mesh=None):
    self.tokenizer = HybridTokenizer(model.tok_config)
    self.mesh = mesh
    if mesh is not None:
      # Params on every device; each batch is split over the data axes.
      put = functools.partial(jax.device_put,
                              device=sharding.replicated(mesh))
      model = dataclasses.replace(
          model, t_params=put(model.t_params), tok_vars=put(model.tok_vars),
          text_params=None if model.text_params is None else put(
              model.text_params))
    self.model = model
    self._compiled: dict[tuple, Any] = {}
    self.last_timings: dict[str, float] = {}
    # The compiled AR phase calls `_tick` (one stable function, so one
    # compile serves every call); it forwards to this call's listener.
    self._listener: Optional[Callable[[int], None]] = None

  @classmethod
  def load(cls, path: str, text_encoder: Optional[str] = None,
           step: Optional[int] = None, weights: str = "ema",
           mesh=None) -> "HartPipeline":
    """From a training workdir (newest checkpoint or `step`; EMA weights
    unless weights="raw") or an official HART folder (+ its Qwen2
    text-encoder folder). With a `mesh` (hart_jax.sharding.make_mesh)
    each batch is split over its data axes."""
    return cls(model_folders.load_model(path, text_encoder, step, weights),
               mesh)

  @property
  def class_conditional(self) -> bool:
    return bool(self.model.t_config.num_classes)

  @property
  def image_size(self) -> int:
    return self.model.tok_config.image_size

  def __call__(self, prompts: Optional[Sequence[str]] = None, *,
               class_ids: Optional[Sequence[int]] = None, seed: int = 0,
               cfg: float = OFFICIAL_DEFAULTS["cfg"],
               top_k: Optional[int] = OFFICIAL_DEFAULTS["top_k"],
               top_p: float = OFFICIAL_DEFAULTS["top_p"],
               more_smooth: bool = OFFICIAL_DEFAULTS["more_smooth"],
               batch_size: Optional[int] = None, output: str = "pil",
               on_scale: Optional[Callable[[int, int], None]] = None,
               first_chunk: int = 0):
    """Generates one image per prompt (text models) or class id.

    Args:
      prompts: the prompts of a text-to-image model.
      class_ids: the classes of a class-conditional model.
      seed: the same seed (and batch size) gives the same images.
      cfg, top_k, top_p, more_smooth: sampling settings (official
        defaults; top_k None is the official 600/300 schedule).
      batch_size: images per device call; more are made in chunks of it
        (default: all at once).
      output: "pil" (a list of PIL images) or "np" (uint8 [N, H, W, 3]).
      on_scale: called on the host as (chunk, scale) progress.
      first_chunk: the index of the first chunk: a call on the inputs
        from chunk c on, with first_chunk=c, makes the same images as one
        call on them all (resumable generation).

    Returns:
      The images, in the order of `prompts` / `class_ids`.
    """
    inputs = self._check_inputs(prompts, class_ids)
    s_config = sampling.SamplingConfig(
        cfg=float(cfg), top_k=None if top_k in (None, 0) else int(top_k),
        top_p=float(top_p), more_smooth=bool(more_smooth))
    if output not in ("pil", "np"):
      raise ConfigError(f"output must be 'pil' or 'np', got {output!r}")
    n = len(inputs)
    batch = n if batch_size is None else int(batch_size)
    if batch < 1:
      raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    ways = 1 if self.mesh is None else sharding.data_parallel_size(
        self.mesh)
    if batch % ways:
      raise ConfigError(f"batch_size {batch} does not split over the "
                        f"mesh's {ways} data-parallel devices")
    timings = dict(compile=0.0, text=0.0, ar=0.0, diffusion=0.0,
                   decode=0.0)
    chunks = []
    for index, start in enumerate(range(0, n, batch)):
      part = list(inputs[start:start + batch])
      # A short last chunk is padded: every chunk has one compiled shape.
      padded = part + [part[-1]] * (batch - len(part))
      rng = jax.random.fold_in(jax.random.key(seed), first_chunk + index)
      self._listener = None if on_scale is None else functools.partial(
          on_scale, index)
      try:
        images = self._sample_chunk(padded, s_config, rng, timings)
      finally:
        self._listener = None
      chunks.append(images[:len(part)])
    self.last_timings = timings
    images = np.concatenate(chunks)
    if output == "np":
      return images
    return [Image.fromarray(image) for image in images]

  def _check_inputs(self, prompts, class_ids) -> list:
    if (prompts is None) == (class_ids is None):
      raise ConfigError("give either prompts or class_ids")
    num_classes = self.model.t_config.num_classes
    if self.class_conditional:
      if prompts is not None:
        raise ConfigError(f"this model is class-conditional ({num_classes}"
                          " classes): give class ids, not prompts")
      ids = [int(c) for c in class_ids]
      bad = [c for c in ids if not 0 <= c < num_classes]
      if bad:
        raise ConfigError(f"class id(s) {bad} out of range: this model has "
                          f"classes 0..{num_classes - 1}")
      if not ids:
        raise ConfigError("no class ids given")
      return ids
    if class_ids is not None:
      raise ConfigError("this model is text-to-image: give prompts, not "
                        "class ids")
    if isinstance(prompts, str):
      prompts = [prompts]
    prompts = [str(p) for p in prompts]
    if not prompts:
      raise ConfigError("no prompts given")
    return prompts

  def _phase(self, name: str, fn, args, timings, static=()):
    """Runs a jitted phase; compiles it once per argument shapes."""
    key = (name, static, tuple(
        (x.shape, str(x.dtype)) for x in jax.tree.leaves(args)))
    if key not in self._compiled:
      start = time.perf_counter()
      self._compiled[key] = jax.jit(fn).lower(*args).compile()
      timings["compile"] += time.perf_counter() - start
    start = time.perf_counter()
    out = jax.block_until_ready(self._compiled[key](*args))
    if name in timings:
      timings[name] += time.perf_counter() - start
    return out

  def _tick(self, si: int) -> None:
    if self._listener is not None:
      self._listener(si)

  def _sample_chunk(self, inputs, s_config, rng, timings):
    m = self.model
    put = (lambda x: x) if self.mesh is None else functools.partial(
        jax.device_put, device=sharding.batch_sharding(self.mesh))
    if self.class_conditional:
      context = put(np.asarray(inputs, np.int32))
      mask = put(np.ones((len(inputs), 1), bool))
      position_ids = put(np.zeros((len(inputs), 1), np.int32))
    else:
      start = time.perf_counter()
      host = jax.tree.map(put, m.encoder.host_inputs(inputs))
      timings["text"] += time.perf_counter() - start
      context, mask, position_ids = self._phase(
          "text", m.encoder.encode, (m.text_params, host), timings)
    ar = self._phase(
        "ar", lambda p, v, c, k, i, r: sampling.autoregress(
            m.t_config, s_config, p, self.tokenizer, v, c, k, i, r,
            on_scale=self._tick),
        (m.t_params, m.tok_vars, context, mask, position_ids, rng), timings,
        static=(s_config,))
    out = self._phase(
        "diffusion", lambda p, v, a: sampling.add_residual(
            m.t_config, s_config, p, self.tokenizer, v, a),
        (m.t_params, m.tok_vars, ar), timings, static=(s_config,))
    decoded = self._phase(
        "decode", lambda v, f: sampling.decode(self.tokenizer, v, f)["image"],
        (m.tok_vars, out["fhat"]), timings)
    return np.asarray(np.round(np.asarray(decoded) * 255), np.uint8)


def grid(images, cols: int = 8) -> Image.Image:
  """The images (PIL or uint8 arrays) as one grid image, 2px gutters."""
  arrays = np.stack([np.asarray(im) for im in images]).astype(np.float32)
  return Image.fromarray(image_grid(arrays / 255.0,
                                    cols=min(len(arrays), cols)))


def timing_lines(timings: dict[str, float]) -> list[str]:
  """The breakdown as printed by `python -m hart_jax.sample`."""
  names = dict(compile="compile", text="text encoding",
               ar="AR scales", diffusion="residual diffusion",
               decode="decode")
  total = sum(timings.values())
  lines = [f"  {names[k]:<19} {v:7.2f} s" for k, v in timings.items()]
  return lines + [f"  {'total':<19} {total:7.2f} s"]


