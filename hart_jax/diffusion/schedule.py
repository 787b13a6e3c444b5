"""Gaussian diffusion of HART's residual head: tables and pure functions.

HART's head (hart_spec.md 2.7) is an IDDPM process: a 1000-step cosine beta
schedule, epsilon prediction and a learned-range variance, sampled with 8
respaced ancestral steps. The tables are built once in numpy float64, as the
official code does, and each lookup casts the looked-up values to float32;
keeping float64 tables (not float32 ones) matters for the near-zero betas of
the first steps and for log(beta).

The JAX functions take model outputs, not models, so they are pure and can
be used inside any jitted function; `t` is always an index into the schedule
being run (for a respaced schedule the network itself must be called with
`schedule.timestep_map[t]`, the original timestep).
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

_LN2 = math.log(2.0)


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
  """Betas of the cosine schedule (Nichol & Dhariwal), float64."""
  def alpha_bar(s):
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
  return np.array([
      min(1.0 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps),
          max_beta) for i in range(num_steps)], np.float64)


def space_timesteps(num_steps: int, section_counts) -> tuple[int, ...]:
  """Original timesteps kept by a respacing, ascending.

  Args:
    num_steps: length of the original process.
    section_counts: "" or None (keep all), "ddimN" (the fixed DDIM stride
      giving N steps), a comma-separated string or a sequence of counts:
      the process is cut into len(counts) near-equal sections and each is
      strided evenly to its count, both ends included.

  Returns:
    The sorted kept timesteps.
  """
  if section_counts is None or section_counts == "":
    return tuple(range(num_steps))
  if isinstance(section_counts, str):
    if section_counts.startswith("ddim"):
      want = int(section_counts[len("ddim"):])
      for stride in range(1, num_steps):
        if len(range(0, num_steps, stride)) == want:
          return tuple(range(0, num_steps, stride))
      raise ValueError(f"cannot make exactly {want} steps out of "
                       f"{num_steps} with an integer stride")
    section_counts = [int(c) for c in section_counts.split(",")]
  size_per, extra = divmod(num_steps, len(section_counts))
  start, kept = 0, set()
  for i, count in enumerate(section_counts):
    size = size_per + (1 if i < extra else 0)
    if size < count:
      raise ValueError(f"cannot divide a section of {size} steps into "
                       f"{count}")
    stride = 1 if count <= 1 else (size - 1) / (count - 1)
    # A float stride accumulated by repeated addition and rounded (Python
    # round, half to even), as the official code does: "8" over 1000 gives
    # 0, 143, 285, 428, 571, 714, 856, 999. An integer formula can differ.
    cur = 0.0
    for _ in range(count):
      kept.add(start + round(cur))
      cur += stride
    start += size
  return tuple(sorted(kept))


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
  """float64 tables of one (possibly respaced) diffusion process.

  eq=False keeps identity hashing, so a cached Schedule can be bound into
  jitted functions with functools.partial.
  """
  timestep_map: np.ndarray            # int64: original timestep per index
  betas: np.ndarray
  log_betas: np.ndarray
  alphas_cumprod: np.ndarray
  alphas_cumprod_prev: np.ndarray
  sqrt_alphas_cumprod: np.ndarray
  sqrt_one_minus_alphas_cumprod: np.ndarray
  sqrt_recip_alphas_cumprod: np.ndarray
  sqrt_recipm1_alphas_cumprod: np.ndarray
  posterior_variance: np.ndarray
  posterior_log_variance_clipped: np.ndarray
  posterior_mean_coef1: np.ndarray
  posterior_mean_coef2: np.ndarray

  @property
  def num_steps(self) -> int:
    return int(self.betas.shape[0])


def _tables(betas: np.ndarray, timestep_map: np.ndarray) -> Schedule:
  ac = np.cumprod(1.0 - betas)
  ac_prev = np.append(1.0, ac[:-1])
  post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
  # The posterior variance is 0 at index 0, so its log repeats index 1.
  post_logvar = np.log(np.append(post_var[1], post_var[1:]))
  arrays = dict(
      timestep_map=np.asarray(timestep_map, np.int64),
      betas=betas, log_betas=np.log(betas),
      alphas_cumprod=ac, alphas_cumprod_prev=ac_prev,
      sqrt_alphas_cumprod=np.sqrt(ac),
      sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ac),
      sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ac),
      sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ac - 1.0),
      posterior_variance=post_var,
      posterior_log_variance_clipped=post_logvar,
      posterior_mean_coef1=betas * np.sqrt(ac_prev) / (1.0 - ac),
      posterior_mean_coef2=(1.0 - ac_prev) * np.sqrt(1.0 - betas) / (1.0 - ac))
  for value in arrays.values():
    value.setflags(write=False)  # shared through the cache below
  return Schedule(**arrays)


@functools.lru_cache(maxsize=None)
def make_schedule(num_steps: int = 1000, respace=None) -> Schedule:
  """The cosine process of `num_steps`, optionally respaced.

  Args:
    num_steps: steps of the original process (1000 in HART).
    respace: section counts for `space_timesteps` ("8" at sampling time);
      None or "" keeps every step (the training process).

  Returns:
    The cached Schedule. Respaced betas are 1 - abar(t_k) / abar(t_{k-1})
    over the kept original timesteps t_k.
  """
  if isinstance(respace, list):
    respace = tuple(respace)  # lists are not hashable by lru_cache
  base = cosine_betas(num_steps)
  kept = np.asarray(space_timesteps(num_steps, respace), np.int64)
  ac = np.cumprod(1.0 - base)[kept]
  betas = 1.0 - ac / np.append(1.0, ac[:-1])
  if not ((betas > 0).all() and (betas <= 1).all()):
    raise ValueError(f"respacing {respace!r} gives betas outside (0, 1]")
  return _tables(betas, kept)


def extract(table: np.ndarray, t: jax.Array, ndim: int) -> jax.Array:
  """table[t] as float32, shaped to broadcast over `ndim`-dim arrays."""
  t = jnp.asarray(t)
  value = jnp.asarray(table, jnp.float32)[t]
  return value.reshape(t.shape + (1,) * (ndim - t.ndim))


def original_timestep(sched: Schedule, t: jax.Array) -> jax.Array:
  """The timestep value the network sees for schedule index t."""
  return jnp.asarray(sched.timestep_map, jnp.int32)[t]


def q_sample(sched: Schedule, x_start, t, noise):
  """Sample x_t ~ q(x_t | x_0) with the given standard normal noise."""
  n = x_start.ndim
  return (extract(sched.sqrt_alphas_cumprod, t, n) * x_start
          + extract(sched.sqrt_one_minus_alphas_cumprod, t, n) * noise)


def q_posterior(sched: Schedule, x_start, x_t, t):
  """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0)."""
  n = x_t.ndim
  mean = (extract(sched.posterior_mean_coef1, t, n) * x_start
          + extract(sched.posterior_mean_coef2, t, n) * x_t)
  return (mean, extract(sched.posterior_variance, t, n),
          extract(sched.posterior_log_variance_clipped, t, n))


def p_mean_variance(sched: Schedule, model_output, x, t,
                    clip_denoised: bool = True) -> dict[str, jax.Array]:
  """p(x_{t-1} | x_t) from an epsilon / learned-range-variance output.

  Args:
    sched: the process being run (respaced at sampling time).
    model_output: [..., 2C]: epsilon, then the variance values v. v is used
      unclamped: frac = (v + 1) / 2 interpolates the log variance between
      the clipped posterior one (frac 0) and log beta (frac 1).
    x: [..., C] current x_t.
    t: schedule indices, x's leading shape.
    clip_denoised: clip the x0 prediction to [-1, 1] (sampling does).

  Returns:
    mean, variance, log_variance and pred_xstart, each shaped like x.
  """
  n, c = x.ndim, x.shape[-1]
  if model_output.shape[-1] != 2 * c:
    raise ValueError(f"model output has {model_output.shape[-1]} channels, "
                     f"expected 2 * {c}")
  eps, v = model_output[..., :c], model_output[..., c:]
  frac = (v + 1.0) / 2.0
  log_var = (frac * extract(sched.log_betas, t, n)
             + (1.0 - frac) * extract(sched.posterior_log_variance_clipped,
                                      t, n))
  pred_xstart = (extract(sched.sqrt_recip_alphas_cumprod, t, n) * x
                 - extract(sched.sqrt_recipm1_alphas_cumprod, t, n) * eps)
  if clip_denoised:
    pred_xstart = jnp.clip(pred_xstart, -1.0, 1.0)
  mean, _, _ = q_posterior(sched, pred_xstart, x, t)
  return {"mean": mean, "variance": jnp.exp(log_var), "log_variance": log_var,
          "pred_xstart": pred_xstart}


def p_sample(sched: Schedule, model_output, x, t, noise,
             temperature: float = 1.0) -> jax.Array:
  """One ancestral step x_t -> x_{t-1}; index 0 adds no noise."""
  out = p_mean_variance(sched, model_output, x, t, clip_denoised=True)
  nonzero = (jnp.asarray(t) != 0).astype(x.dtype)
  nonzero = nonzero.reshape(nonzero.shape + (1,) * (x.ndim - nonzero.ndim))
  return (out["mean"]
          + nonzero * jnp.exp(0.5 * out["log_variance"]) * noise * temperature)


def normal_kl(mean1, logvar1, mean2, logvar2):
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + jnp.square(mean1 - mean2) * jnp.exp(-logvar2))


def _approx_std_normal_cdf(x):
  # The tanh approximation, not erf: the official NLL term uses it.
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi)
                               * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
  """log P(x) for a Gaussian binned to 8-bit levels on [-1, 1], nats."""
  centered = x - means
  inv_std = jnp.exp(-log_scales)
  cdf_plus = _approx_std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
  cdf_min = _approx_std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus,
                   jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def training_losses(sched: Schedule, model_output, x_start, x_t, t,
                    noise) -> dict[str, jax.Array]:
  """Per-row MSE + VB terms for epsilon prediction, learned-range variance.

  Args:
    sched: the training process (1000 steps, not respaced).
    model_output: [N, 2C] network output at (x_t, timestep_map[t]).
    x_start: [N, C] clean target (already divided by the VAE scale).
    x_t: [N, C] q_sample(x_start, t, noise).
    t: [N] schedule indices.
    noise: [N, C] the epsilon target.

  Returns:
    mse, vb (bits) and loss = mse + vb, each [N].
  """
  c = x_start.shape[-1]
  eps = model_output[..., :c]
  # The VB term trains only the variance: the mean path is stop-gradiented
  # so the MSE alone drives epsilon.
  frozen = jnp.concatenate([jax.lax.stop_gradient(eps),
                            model_output[..., c:]], axis=-1)
  true_mean, _, true_logvar = q_posterior(sched, x_start, x_t, t)
  out = p_mean_variance(sched, frozen, x_t, t, clip_denoised=False)
  kl = normal_kl(true_mean, true_logvar, out["mean"], out["log_variance"])
  kl = kl.mean(axis=-1) / _LN2
  nll = -discretized_gaussian_log_likelihood(
      x_start, out["mean"], 0.5 * out["log_variance"])
  nll = nll.mean(axis=-1) / _LN2
  vb = jnp.where(jnp.asarray(t) == 0, nll, kl)
  mse = jnp.mean(jnp.square(noise - eps), axis=-1)
  return {"mse": mse, "vb": vb, "loss": mse + vb}
