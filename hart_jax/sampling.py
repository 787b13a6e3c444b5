"""Text (or class) -> image: HART's KV-cached, scale-by-scale sampler.

Follows the official `autoregressive_infer_cfg` (hart_spec.md 2.6): the
batch is doubled for classifier-free guidance (rows [cond; uncond]); the
guidance grows linearly with the scale; top-k 600 then 300; optional top-p;
optional `more_smooth` Gumbel soft embeddings; the last scale's continuous
residual comes from the diffusion head; decode through the tokenizer.

`more_smooth` is on in the official demo (`sample.py`) but must be OFF for
FID: it blurs tokens toward the codebook mean and was not used for the
paper's benchmarks (official issue #14).
"""

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from hart_jax.errors import ConfigError
from hart_jax.models.hart import token_sampling
from hart_jax.models.hart.config import HartConfig
from hart_jax.models.hart.transformer import (HartTransformer, empty_caches,
                                              scale_offsets)
from hart_jax.models.tokenizer.model import HybridTokenizer


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """Sampler knobs; defaults are the official demo's except more_smooth."""
  cfg: float = 4.5
  # None: the official schedule (600 for steps < 7, then 300); the official
  # `top_k` argument is ignored by its sampler, this one is honoured.
  top_k: Optional[int] = None
  top_p: float = 0.0
  more_smooth: bool = False
  # Argmax instead of drawing (debugging and parity tests).
  greedy: bool = False
  diffusion_temperature: float = 1.0

  def __post_init__(self):
    if not np.isfinite(self.cfg) or self.cfg < 0:
      raise ConfigError(f"cfg must be a finite number >= 0, got {self.cfg}")
    if self.top_k is not None and self.top_k < 1:
      raise ConfigError(f"top_k must be >= 1 (or None), got {self.top_k}")
    if not 0.0 <= self.top_p <= 1.0:
      raise ConfigError(f"top_p must be in (0, 1], or 0 for off; got "
                        f"{self.top_p}")
    if self.diffusion_temperature < 0:
      raise ConfigError("diffusion_temperature must be >= 0, got "
                        f"{self.diffusion_temperature}")

  def top_k_at(self, si: int) -> int:
    if self.top_k is not None:
      return self.top_k
    return 600 if si < 7 else 300


def unconditional_inputs(config: HartConfig, context, context_mask,
                         position_ids):
  """Doubles the batch: [cond; uncond] as the official sampler builds it.

  The uncond half has zero features, position ids 0 and a mask that is
  true only at position 0 (class-conditional: the null class).
  """
  if config.num_classes:
    null = jnp.full_like(context, config.num_classes)
    return (jnp.concatenate([context, null]), None, None)
  uncond_mask = jnp.zeros_like(context_mask).at[:, 0].set(True)
  return (jnp.concatenate([context, jnp.zeros_like(context)]),
          jnp.concatenate([context_mask, uncond_mask]),
          jnp.concatenate([position_ids, jnp.zeros_like(position_ids)]))


def generate(t_config: HartConfig, s_config: SamplingConfig,
             transformer_params, tokenizer: HybridTokenizer,
             tokenizer_vars, context, context_mask, position_ids,
             rng: jax.Array, overrides: Optional[dict[str, Any]] = None,
             trace: bool = False):
  """Samples images; pure function (jit it, or use `make_sampler`).

  The three phases (`autoregress`, `add_residual`, `decode`) can also be
  jitted one by one, to time them apart.

  Args:
    t_config: transformer config.
    s_config: sampling config.
    transformer_params: transformer params.
    tokenizer: the tokenizer module (its config's codebook size must match).
    tokenizer_vars: the tokenizer's `vae` variables.
    context: [B, T, context_dim] text features (labels [B] for C2I).
    context_mask: [B, T] bool (ignored for C2I).
    position_ids: [B, T] context position ids (ignored for C2I).
    rng: PRNG key; the same key gives the same images.
    overrides: recorded randomness for parity tests: `gumbel_exponential`
      (one [B, l_k, V] array per step) and `diffusion_noise` (the
      diffusion head's noise list).
    trace: also return per-step intermediates.

  Returns:
    dict(image=[B, H, W, 3] in [0, 1], indices=list of [B, pn*pn],
    fhat=[B, P, P, Cv], and `steps` if trace).
  """
  ar = autoregress(t_config, s_config, transformer_params, tokenizer,
                   tokenizer_vars, context, context_mask, position_ids, rng,
                   overrides, trace)
  out = add_residual(t_config, s_config, transformer_params, tokenizer,
                     tokenizer_vars, ar, overrides, trace)
  out.update(decode(tokenizer, tokenizer_vars, out["fhat"]))
  return out


def autoregress(t_config: HartConfig, s_config: SamplingConfig,
                transformer_params, tokenizer: HybridTokenizer,
                tokenizer_vars, context, context_mask, position_ids,
                rng: jax.Array, overrides: Optional[dict[str, Any]] = None,
                trace: bool = False,
                on_scale: Optional[Callable[[int], None]] = None
                ) -> dict[str, Any]:
  """Every scale through the transformer (args as `generate`).

  `on_scale(si)` (optional) is called on the host as each scale's tokens
  are drawn, for progress bars.

  Returns the running f_hat without the last scale, and what the last
  scale's residual needs: its hidden states, drawn indices and token
  embeddings, the guidance scale and the diffusion key.
  """
  c = t_config
  overrides = overrides or {}
  model = HartTransformer(c)
  apply = functools.partial(model.apply, {"params": transformer_params})
  codebook = tokenizer_vars["params"]["quantize"]["embedding"]
  b = context.shape[0]
  if c.num_classes:
    position_ids = jnp.zeros((b, 1), jnp.int32)
    context_mask = jnp.ones((b, 1), bool)
  ctx2, mask2, pos2 = unconditional_inputs(c, context, context_mask,
                                           position_ids)
  if c.num_classes:
    mask2 = jnp.ones((2 * b, 1), bool)
    pos2 = jnp.zeros((2 * b, 1), jnp.int32)
  cond_tokens = apply(ctx2, method=HartTransformer.condition)
  caches = empty_caches(c, 2 * b)
  offsets = scale_offsets(c)
  k_scales, side = c.num_scales, c.patch_nums[-1]
  x = apply(cond_tokens, method=HartTransformer.prefix_tokens)
  cos, sin = apply(pos2, method=HartTransformer.context_tables)
  fhat = jnp.zeros((b, side, side, c.latent_channels), jnp.float32)
  indices, steps = [], []
  keys = jax.random.split(rng, k_scales + 1)
  for si in range(k_scales):
    hidden, logits, caches = apply(x, cond_tokens, mask2, cos, sin, caches,
                                   offsets[si], method=HartTransformer.step)
    # The last step reuses the previous step's ratio (official loop quirk).
    ratio = min(si, k_scales - 2) / (k_scales - 1)
    t = s_config.cfg * ratio
    guided = (1 + t) * logits[:b] - t * logits[b:]
    if si == 0:
      guided = guided[:, -1:]  # the last context slot predicts scale 0
    filtered = token_sampling.filter_top_k_top_p(
        guided, s_config.top_k_at(si), s_config.top_p)
    r_draw, r_gumbel = jax.random.split(keys[si])
    idx = (jnp.argmax(filtered, -1) if s_config.greedy
           else token_sampling.draw(r_draw, filtered))
    pn = c.patch_nums[si]
    if s_config.more_smooth:
      expo = overrides.get("gumbel_exponential", [None] * k_scales)[si]
      if expo is None:
        expo = jax.random.exponential(r_gumbel, filtered.shape)
      h = token_sampling.gumbel_soft(filtered, ratio, expo) @ codebook
    else:
      h = jnp.take(codebook, idx, axis=0)
    indices.append(idx.reshape(b, pn * pn))
    if on_scale is not None:
      # idx as the argument: the call waits for this scale's draw.
      jax.debug.callback(functools.partial(_notify, on_scale, si), idx)
    step = dict(logits_guided=guided, idx=idx, h=h, hidden=hidden)
    if si == k_scales - 1:
      return dict(fhat=fhat, indices=indices, steps=steps, last=step,
                  cfg_scale=jnp.float32(t), diffusion_key=keys[-1])
    fhat, next_map = tokenizer.apply(
        tokenizer_vars, si, fhat, h.reshape(b, pn, pn, -1), c.patch_nums,
        method=lambda m, *a: m.quantize.next_autoregressive_input(*a))
    if trace:
      steps.append(dict(step, fhat=fhat))
    nxt = next_map.reshape(b, -1, c.latent_channels)
    x = apply(jnp.concatenate([nxt, nxt]), si + 1,
              method=HartTransformer.scale_tokens)
    cos, sin = apply(pos2, si + 1, method=HartTransformer.image_tables)
  raise AssertionError("unreachable: the loop returns at the last scale")


def _notify(on_scale, si, _):
  on_scale(si)


def add_residual(t_config: HartConfig, s_config: SamplingConfig,
                 transformer_params, tokenizer: HybridTokenizer,
                 tokenizer_vars, ar: dict[str, Any],
                 overrides: Optional[dict[str, Any]] = None,
                 trace: bool = False) -> dict[str, Any]:
  """The last scale's continuous residual from the diffusion head, added
  to its tokens, and the final f_hat (`ar` from `autoregress`)."""
  c = t_config
  overrides = overrides or {}
  apply = functools.partial(HartTransformer(c).apply,
                            {"params": transformer_params})
  codebook = tokenizer_vars["params"]["quantize"]["embedding"]
  last = ar["last"]
  b, pn = ar["fhat"].shape[0], c.patch_nums[-1]
  # Condition both halves on the hard index (official quirk).
  hard = jnp.take(codebook, last["idx"], axis=0)
  z = apply(last["hidden"], jnp.concatenate([hard, hard]),
            method=HartTransformer.diffusion_condition)
  residual = apply(z.reshape(-1, c.embed_dim), ar["cfg_scale"],
                   ar["diffusion_key"],
                   noise=overrides.get("diffusion_noise"),
                   temperature=s_config.diffusion_temperature,
                   method=lambda m, *a, **k: m.diffloss.sample(*a, **k))
  h = last["h"] + residual.reshape(last["h"].shape)
  fhat, _ = tokenizer.apply(
      tokenizer_vars, c.num_scales - 1, ar["fhat"], h.reshape(b, pn, pn, -1),
      c.patch_nums,
      method=lambda m, *a: m.quantize.next_autoregressive_input(*a))
  out = dict(fhat=fhat, indices=ar["indices"])
  if trace:
    out["steps"] = ar["steps"] + [dict(last, h=h, fhat=fhat)]
  return out


def decode(tokenizer: HybridTokenizer, tokenizer_vars, fhat
           ) -> dict[str, jax.Array]:
  """f_hat -> images in [0, 1] (and the raw decoder output)."""
  decoded = tokenizer.apply(tokenizer_vars, fhat,
                            method=HybridTokenizer.decode)
  return dict(image=(jnp.clip(decoded, -1, 1) + 1) / 2, decoded=decoded)


def make_sampler(t_config: HartConfig, s_config: SamplingConfig,
                 tokenizer: HybridTokenizer):
  """A jitted `generate`: same shapes -> no recompilation."""
  def run(transformer_params, tokenizer_vars, context, context_mask,
          position_ids, rng):
    return generate(t_config, s_config, transformer_params, tokenizer,
                    tokenizer_vars, context, context_mask, position_ids,
                    rng)["image"]
  return jax.jit(run)
