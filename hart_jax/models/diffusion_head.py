"""HART's residual diffusion head (official `DiffLoss` + `SimpleMLPAdaLN`).

The head models the continuous residual of the last scale, one token per
row: an AdaLN MLP predicts epsilon and learned-range variance values from
(x_t, timestep, z), where z is the transformer's condition for that token
(hart_spec.md 2.7). Module names follow the official attributes so that
`interop.naming.torch_key` maps them to the state-dict keys
(`net.res_blocks.0.adaLN_modulation.1.weight`, ...).

Numerics: the diffusion tables are float64 and cast to float32 per lookup
(hart_jax.diffusion.schedule); norms, the timestep sinusoids, the diffusion
math and the outputs are float32 whatever `dtype` the matmuls use.
"""

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from hart_jax.diffusion import schedule as sched_lib


@dataclasses.dataclass(frozen=True)
class DiffusionHeadConfig:
  """Sizes and process of the head; defaults are the released 0.7B model."""
  in_channels: int = 32              # tokenizer latent channels (Cvae)
  width: int = 1024                  # official diff_width
  depth: int = 6                     # official diff_depth (res blocks)
  cond_dim: int = 1536               # transformer width C (z channels)
  num_train_steps: int = 1000
  num_sampling_steps: str = "8"      # section counts, as the official str
  vae_scale: float = 0.6             # targets / vae_scale; samples * it
  batch_mul: int = 4                 # official diffusion_batch_mul
  temperature: float = 1.0           # sampling noise scale
  freq_dim: int = 256                # timestep sinusoid size
  max_period: float = 10000.0
  dtype: Any = jnp.float32           # matmul compute dtype
  param_dtype: Any = jnp.float32

  @property
  def out_channels(self) -> int:
    return 2 * self.in_channels      # [epsilon | variance values]

  @property
  def train_schedule(self) -> sched_lib.Schedule:
    return sched_lib.make_schedule(self.num_train_steps, None)

  @property
  def gen_schedule(self) -> sched_lib.Schedule:
    return sched_lib.make_schedule(self.num_train_steps,
                                   self.num_sampling_steps)


# The official initialisation: xavier-uniform Linear weights and zero
# biases, N(0, 0.02) for the timestep MLP, and zeros for every AdaLN
# modulation and the output layer, so a fresh head outputs zeros.
_xavier = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros_init()


def _dense(cfg: DiffusionHeadConfig, features: int, name: str,
           kernel_init=_xavier) -> nn.Dense:
  # Logical names: the head is small and is replicated by the default
  # rules (its rows are what gets sharded), but every param is named.
  return nn.Dense(
      features,
      kernel_init=nn.with_logical_partitioning(kernel_init,
                                               ("diff_in", "diff_out")),
      bias_init=nn.with_logical_partitioning(_zeros, ("diff_out",)),
      dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name)


def _layer_norm(cfg: DiffusionHeadConfig, affine: bool, name: str):
  # eps 1e-6 as in the official module (torch's default would be 1e-5);
  # two-pass variance like torch, in float32.
  return nn.LayerNorm(
      epsilon=1e-6, use_bias=affine, use_scale=affine,
      use_fast_variance=False, dtype=jnp.float32,
      param_dtype=cfg.param_dtype, name=name,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones,
                                              ("diff_out",)),
      bias_init=nn.with_logical_partitioning(_zeros, ("diff_out",)))


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
  """[cos | sin] sinusoids of (possibly fractional) timesteps, float32."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period)
                  * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class TimestepEmbedder(nn.Module):
  """Sinusoids -> Linear -> SiLU -> Linear (official `TimestepEmbedder`)."""
  cfg: DiffusionHeadConfig

  @nn.compact
  def __call__(self, t):
    cfg, normal = self.cfg, nn.initializers.normal(0.02)
    h = timestep_embedding(t, cfg.freq_dim, cfg.max_period)
    h = _dense(cfg, cfg.width, "mlp_0", normal)(h)
    return _dense(cfg, cfg.width, "mlp_2", normal)(nn.silu(h))


class ResBlock(nn.Module):
  """x + gate * MLP(LN(x) * (1 + scale) + shift), modulated by y."""
  cfg: DiffusionHeadConfig

  @nn.compact
  def __call__(self, x, y):
    cfg = self.cfg
    mod = _dense(cfg, 3 * cfg.width, "adaLN_modulation_1", _zeros)(
        nn.silu(y))
    shift, scale, gate = jnp.split(mod, 3, axis=-1)
    h = _layer_norm(cfg, True, "in_ln")(x) * (1 + scale) + shift
    h = _dense(cfg, cfg.width, "mlp_0")(h)
    h = _dense(cfg, cfg.width, "mlp_2")(nn.silu(h))
    return x + gate * h


class FinalLayer(nn.Module):
  """Non-affine LN, AdaLN (shift, scale) from y, then Linear to 2C."""
  cfg: DiffusionHeadConfig

  @nn.compact
  def __call__(self, x, y):
    cfg = self.cfg
    mod = _dense(cfg, 2 * cfg.width, "adaLN_modulation_1", _zeros)(
        nn.silu(y))
    shift, scale = jnp.split(mod, 2, axis=-1)
    h = _layer_norm(cfg, False, "norm_final")(x) * (1 + scale) + shift
    return _dense(cfg, cfg.out_channels, "linear", _zeros)(h)


class SimpleMLPAdaLN(nn.Module):
  """The denoiser: (x_t [N,C], timestep [N], z [N,D]) -> [N, 2C] float32."""
  cfg: DiffusionHeadConfig

  @nn.compact
  def __call__(self, x, t, z):
    cfg = self.cfg
    h = _dense(cfg, cfg.width, "input_proj")(x)
    y = (TimestepEmbedder(cfg, name="time_embed")(t)
         + _dense(cfg, cfg.width, "cond_embed")(z))
    for i in range(cfg.depth):
      h = ResBlock(cfg, name=f"res_blocks_{i}")(h, y)
    return FinalLayer(cfg, name="final_layer")(h, y).astype(jnp.float32)


class DiffusionHead(nn.Module):
  """The official `DiffLoss`: training loss and CFG sampler around `net`.

  All row inputs are 2-D ([rows, channels]); callers flatten tokens first.
  Randomness comes from explicit jax PRNG keys, or from explicit arrays so
  that recorded official draws can be replayed.
  """
  config: DiffusionHeadConfig

  def setup(self):
    self.net = SimpleMLPAdaLN(self.config)

  def __call__(self, x, t, z):
    """Network output [N, 2C] at original timesteps t (init entry point)."""
    self._check_rows(x, z, "x")
    return self.net(x, t, z)

  def _check_rows(self, x, z, what: str):
    cfg = self.config
    if x.ndim != 2 or x.shape[-1] != cfg.in_channels:
      raise ValueError(f"{what} must be [rows, {cfg.in_channels}], got "
                       f"{tuple(x.shape)}")
    if z.ndim != 2 or z.shape[-1] != cfg.cond_dim:
      raise ValueError(f"z must be [rows, {cfg.cond_dim}], got "
                       f"{tuple(z.shape)}")
    if x.shape[0] != z.shape[0]:
      raise ValueError(f"{what} has {x.shape[0]} rows but z has "
                       f"{z.shape[0]}")

  def training_losses(self, x_start, z, t, noise):
    """Per-row loss terms at given t and noise; x_start already scaled.

    Args:
      x_start: [N, C] target in the head's space (residual / vae_scale).
      z: [N, D] condition.
      t: [N] int timesteps in [0, num_train_steps).
      noise: [N, C] standard normal epsilon.

    Returns:
      {"mse", "vb", "loss"}, each [N] float32 (official `training_losses`).
    """
    self._check_rows(x_start, z, "x_start")
    t, noise = jnp.asarray(t), jnp.asarray(noise, jnp.float32)
    if noise.shape != x_start.shape or t.shape != x_start.shape[:1]:
      raise ValueError(f"t {tuple(t.shape)} / noise {tuple(noise.shape)} do "
                       f"not match x_start {tuple(x_start.shape)}")
    sched = self.config.train_schedule
    x_start = x_start.astype(jnp.float32)
    x_t = sched_lib.q_sample(sched, x_start, t, noise)
    out = self.net(x_t, sched_lib.original_timestep(sched, t), z)
    return sched_lib.training_losses(sched, out, x_start, x_t, t, noise)

  def loss(self, target, z, rng=None, *, t=None, noise=None):
    """The training loss of `forward_diff_loss` + `DiffLoss.forward`.

    Rows are tiled `batch_mul` times as whole blocks (row r of the output
    uses input row r mod N), each copy with its own t and noise.

    Args:
      target: [N, C] residual targets (unscaled; divided by vae_scale here).
      z: [N, D] conditions.
      rng: PRNG key for t ~ U{0..T-1} and the noise; or give both t and
        noise ([batch_mul * N] and [batch_mul * N, C]) explicitly.
      t: optional explicit timesteps.
      noise: optional explicit noise.

    Returns:
      {"mse", "vb", "loss"}, each [batch_mul * N]; the official scalar loss
      is loss["loss"].mean() (or a masked mean).
    """
    cfg = self.config
    self._check_rows(target, z, "target")
    rows = cfg.batch_mul * target.shape[0]
    if (t is None) != (noise is None) or (t is None and rng is None):
      raise ValueError("pass rng, or both t and noise")
    if t is None:
      rng_t, rng_n = jax.random.split(rng)
      t = jax.random.randint(rng_t, (rows,), 0, cfg.num_train_steps)
      noise = jax.random.normal(rng_n, (rows, cfg.in_channels), jnp.float32)
    target = jnp.tile(target.astype(jnp.float32) / cfg.vae_scale,
                      (cfg.batch_mul, 1))
    return self.training_losses(target, jnp.tile(z, (cfg.batch_mul, 1)),
                                t, noise)

  def guided_output(self, x, t, z, cfg_scale):
    """Official `forward_with_cfg`: [2B, 2C] from the cond half's x.

    Both halves are evaluated on x[:B] with their own z (rows [cond;
    uncond]); eps = (1 + s) eps_c - s eps_u goes to both halves, each keeps
    its own variance values. No s == 1 special case here (see `sample`).
    """
    self._check_rows(x, z, "x")
    if x.shape[0] % 2:
      raise ValueError(f"x and z need 2B rows (cond, then uncond), got "
                       f"{x.shape[0]}")
    return _guided(self.net, x, t, z, cfg_scale, self.config.in_channels)

  def sample(self, z, cfg_scale, rng=None, *,
             noise: Sequence[jax.Array] | None = None, temperature=None):
    """Official `DiffLoss.sample` (IDDPM, respaced), cond half only.

    Args:
      z: [2B, D] conditions, rows [cond; uncond].
      cfg_scale: guidance s (python number or traced scalar). The official
        quirk is kept: s == 1.0 exactly switches guidance off, which for
        the returned cond half is the same as s = 0.
      rng: PRNG key for the initial and per-step noise, or
      noise: num_sampling_steps + 1 arrays in the official call order:
        the initial noise, then one per step from the noisiest down. Each
        has B or 2B rows; only the first B are read, since the cond half
        depends on nothing else (the last step's noise is unused).
      temperature: noise scale; defaults to config.temperature.

    Returns:
      [B, C] float32 residual samples, multiplied by vae_scale.
    """
    cfg, sched = self.config, self.config.gen_schedule
    if z.ndim != 2 or z.shape[-1] != cfg.cond_dim or z.shape[0] % 2:
      raise ValueError(f"z must be [2B, {cfg.cond_dim}] (cond rows, then "
                       f"uncond rows), got {tuple(z.shape)}")
    b = z.shape[0] // 2
    noise = jnp.stack(self._sample_noise(b, rng, noise))  # [steps + 1, B, C]
    s = _check_scale(cfg_scale)
    # Official: `if not cfg == 1.0` selects the guided path; otherwise
    # both halves run plain and the cond rows equal guidance with s = 0.
    s = jnp.where(s == 1.0, 0.0, s)
    temperature = cfg.temperature if temperature is None else temperature
    t_map = jnp.asarray(sched.timestep_map, jnp.int32)
    if self.is_initializing():  # create the params the loop body reads
      self.net(jnp.concatenate([noise[0]] * 2), t_map[:1].repeat(2 * b), z)
    # The loop body applies the net as a pure function of its variables:
    # a rolled loop keeps one step's activations alive (an unrolled one
    # made XLA CPU hold ~7.5 GiB at 2 x 4096 rows) and compiles once.
    net_vars, net = self.net.variables, SimpleMLPAdaLN(cfg, parent=None)

    def step(k, x):
      idx = sched.num_steps - 1 - k  # noisiest respaced index first
      # The net sees the original timestep (official _WrappedModel).
      t = jnp.broadcast_to(t_map[idx], (2 * b,))
      out = _guided(lambda *a: net.apply(net_vars, *a),
                    jnp.concatenate([x, x]), t, z, s, cfg.in_channels)
      return sched_lib.p_sample(sched, out[:b], x,
                                jnp.broadcast_to(idx, (b,)), noise[k + 1],
                                temperature)

    x = jax.lax.fori_loop(0, sched.num_steps, step, noise[0])
    return x * cfg.vae_scale

  def _sample_noise(self, b: int, rng, noise):
    cfg, steps = self.config, self.config.gen_schedule.num_steps
    if noise is None:
      if rng is None:
        raise ValueError("pass rng or an explicit noise list")
      keys = jax.random.split(rng, steps + 1)
      return [jax.random.normal(k, (b, cfg.in_channels), jnp.float32)
              for k in keys]
    if len(noise) != steps + 1:
      raise ValueError(f"noise must hold {steps + 1} arrays (initial + one "
                       f"per step), got {len(noise)}")
    for i, n in enumerate(noise):
      if n.ndim != 2 or n.shape[0] not in (b, 2 * b) or (
          n.shape[1] != cfg.in_channels):
        raise ValueError(f"noise[{i}] must be [{b} or {2 * b}, "
                         f"{cfg.in_channels}], got {tuple(n.shape)}")
    return [jnp.asarray(n[:b], jnp.float32) for n in noise]


def _guided(net, x, t, z, cfg_scale, c: int):
  """forward_with_cfg on 2B rows for any `net(x, t, z)` callable."""
  half = x.shape[0] // 2
  out = net(jnp.concatenate([x[:half], x[:half]]), t, z)
  eps_c, eps_u = out[:half, :c], out[half:, :c]
  eps = (1.0 + cfg_scale) * eps_c - cfg_scale * eps_u
  return jnp.concatenate([jnp.concatenate([eps, eps]), out[:, c:]], -1)


def _check_scale(cfg_scale) -> jax.Array:
  s = jnp.asarray(cfg_scale, jnp.float32)
  if s.ndim:
    raise ValueError(f"cfg_scale must be a scalar, got shape {s.shape}")
  if not isinstance(s, jax.core.Tracer) and not bool(jnp.isfinite(s)):
    raise ValueError(f"cfg_scale must be finite, got {cfg_scale}")
  return s
