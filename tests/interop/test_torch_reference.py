"""hart_jax's tokenizer against an independent PyTorch reference.

`tests/torch_ref` rebuilds the official `HARTAutoEncoderWithDisc` module
tree (same state-dict keys and shapes) without the official code. These
tests first prove the reference against the golden vectors of the official
implementation, then use it as the judge of hart_jax: a strict
`load_state_dict` of hart_jax's export checks the official key set, and
the reference's encoding checks hart_jax's numbers, in both directions.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch

from hart_jax.interop import official_tokenizer as ot
from hart_jax.models.tokenizer import HybridTokenizer
from hart_jax.interop.official_configs import tokenizer_config_to_official
from hart_jax.models.tokenizer.config import TokenizerConfig
from tests.torch_ref import HARTTokenizerRef, phi_index

# Small enough for CPU CI, yet it has every kind of block: five levels
# (widening once, so 1x1 shortcuts), attention, 4 shared phis, and K = 5
# scales, where scale 2 sits on a float64 tie of the phi ticks.
CONFIG = TokenizerConfig(ch=32, ch_mult=(1, 1, 1, 1, 2), vocab_size=1024,
                         v_patch_nums=(1, 2, 3, 4, 6))
# Squared-distance margin of every codebook argmin. fp32 distance errors
# are ~1e-5 here, so indices must agree exactly above this margin.
MIN_GAP = 1e-3
# Seeds of the random weights, picked so that every argmin margin on the
# test images is >= 0.0098, ten times MIN_GAP (hart_jax's own init with
# key 0 gives >= 0.0146).
SEED_JAX = 2
SEED_TORCH = 3


def assert_close(got, ref, name: str, rtol: float = 1e-4) -> None:
  """Relative to the array's scale (element-wise alone fails near zero)."""
  got, ref = np.asarray(got), np.asarray(ref)
  assert got.shape == ref.shape, (name, got.shape, ref.shape)
  np.testing.assert_allclose(got, ref, rtol=rtol,
                             atol=rtol * np.abs(ref).max(), err_msg=name)


def make_images(side: int) -> np.ndarray:
  """Two smooth deterministic images [2, 3, side, side] in [-0.9, 0.9]."""
  yy, xx = np.meshgrid(np.linspace(-1, 1, side), np.linspace(-1, 1, side),
                       indexing="ij")
  img = 0.9 * np.stack([np.sin(3 * xx + yy), np.cos(2 * yy - xx),
                        np.sin(4 * xx * yy)])
  return np.stack([img, img[:, ::-1]]).astype(np.float32)


def to_torch(state) -> dict[str, torch.Tensor]:
  return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}


def reference_outputs(ref: HARTTokenizerRef, images: np.ndarray) -> dict:
  gaps = []
  with torch.no_grad():
    x = torch.from_numpy(images)
    indices, frest = ref.img_to_idxBl_and_frest(x, gaps=gaps)
    hybrid, discrete = ref.reconstruct(x)
  return dict(indices=[i.numpy() for i in indices], frest=frest.numpy(),
              hybrid=hybrid.numpy(), discrete=discrete.numpy(), gaps=gaps)


@functools.partial(jax.jit, static_argnums=0)
def _jax_run(config, vae_variables, images_nhwc):
  model = HybridTokenizer(config)
  indices, frest = model.apply(vae_variables, images_nhwc,
                               method=HybridTokenizer.encode)
  hybrid, discrete = model.apply(vae_variables, images_nhwc,
                                 method=HybridTokenizer.reconstruct)
  return indices, frest, hybrid, discrete


def assert_same_tokenization(config, vae_variables, ref, images) -> None:
  """hart_jax encode/reconstruct == reference (indices exactly)."""
  want = reference_outputs(ref, images)
  # Without a margin an index mismatch could be fp32 rounding, not a bug.
  assert min(want["gaps"]) > MIN_GAP, want["gaps"]
  indices, frest, hybrid, discrete = jax.device_get(
      _jax_run(config, vae_variables, jnp.asarray(images.transpose(0, 2, 3,
                                                                   1))))
  assert len(indices) == len(want["indices"])
  for si, (got, ref_idx) in enumerate(zip(indices, want["indices"])):
    np.testing.assert_array_equal(got, ref_idx, err_msg=f"scale {si}")
  assert_close(frest, want["frest"], "frest_before_last")
  assert_close(hybrid.transpose(0, 3, 1, 2), want["hybrid"], "hybrid")
  assert_close(discrete.transpose(0, 3, 1, 2), want["discrete"], "discrete")


# --- the reference against the official implementation's golden vectors ----


def test_phi_rule_matches_golden(golden_dir):
  table = json.loads((golden_dir / "tokenizer_tiny" / "phi_index.json")
                     .read_text())["by_num_scales"]
  for k, want in table.items():
    assert [phi_index(si, int(k), 4) for si in range(int(k))] == want, k


def test_reference_reproduces_golden(golden_dir):
  folder = golden_dir / "tokenizer_tiny"
  ref = HARTTokenizerRef(json.loads((folder / "config.json").read_text()))
  ref.eval()
  keys = json.loads((folder / "state_dict_keys.json").read_text())
  own = ref.state_dict()
  assert sorted(own) == sorted(keys)
  for k, spec in keys.items():
    assert list(own[k].shape) == spec["shape"], k
    assert str(own[k].dtype) == f"torch.{spec['dtype']}", k
  # The golden file stores only vae.* (the official loader makes the disc).
  result = ref.load_state_dict(
      safetensors.torch.load_file(folder / "model.safetensors"), strict=False)
  assert not result.unexpected_keys
  assert result.missing_keys
  assert all(k.startswith("disc.") for k in result.missing_keys)

  gold = np.load(folder / "golden.npz")
  gaps = []
  with torch.no_grad():
    x = torch.from_numpy(gold["x"])
    f = ref.img_to_latent(x)
    indices, frest = ref.quantize.encode(f, gaps=gaps)
    hybrid_fhat, discrete_fhat = ref.hybrid_fhats(indices, frest)
    var_fhat = ref.quantize.indices_to_fhat_var_style(indices)
    got = dict(
        f=f, frest_before_last=frest,
        residual_continuous=frest - ref.quantize.embedding(indices[-1]),
        fhat_discrete_gen=discrete_fhat, fhat_var_style=var_fhat,
        recon_hybrid=ref.decode(hybrid_fhat),
        recon_discrete_gen=ref.decode(discrete_fhat),
        recon_var_style=ref.fhat_to_img(var_fhat))
  for si, idx in enumerate(indices):
    np.testing.assert_array_equal(idx.numpy(), gold[f"idx_s{si}"],
                                  err_msg=f"idx_s{si}")
  for name, value in got.items():
    assert_close(value.numpy(), gold[name], name)
  # Our own margin measure agrees with the one the golden data recorded.
  # The gap is a difference of two near-equal distances of fp32 latents
  # whose last bits depend on the CPU's conv kernels, so a few 1e-3 of it
  # moves between machines (0.28% seen on one scale); 1e-2 still tells a
  # wrong measure from a right one.
  meta = json.loads((folder / "meta.json").read_text())
  np.testing.assert_allclose(gaps, meta["argmin_min_gap_per_scale"],
                             rtol=1e-2)


# --- hart_jax -> reference ---------------------------------------------------


def random_variables(config: TokenizerConfig, seed: int):
  """hart_jax's variable tree (that of `ot.init_variables`), seeded values.

  Flax's init leaves biases at 0 and norm scales at 1, which would hide
  swapped bias or scale keys; random values everywhere do not. Kernels
  N(0, 1/fan_in) (decoder.conv_out halved, to limit clamping), codebook
  N(0, 0.5^2), scales 1 + 0.1 N, biases and means 0.05 N, variances and
  hit counts positive.
  """
  rng = np.random.default_rng(seed)

  def fill(path, spec):
    names = [p.key for p in path]
    leaf, shape = names[-1], spec.shape
    if leaf == "num_batches_tracked":
      return np.full(shape, 1000 + rng.integers(1000), spec.dtype)
    noise = rng.standard_normal(shape)
    if leaf == "kernel":
      gain = 0.5 if names[-3:-1] == ["decoder", "conv_out"] else 1.0
      value = gain * noise / np.sqrt(np.prod(shape[:-1]))
    elif leaf == "embedding":
      value = 0.5 * noise
    elif leaf == "scale":
      value = 1 + 0.1 * noise
    elif leaf in ("var", "ema_vocab_hit_SV"):
      value = np.abs(noise) + 0.5
    else:
      value = 0.05 * noise
    return value.astype(spec.dtype)

  return jax.tree_util.tree_map_with_path(fill,
                                          ot.abstract_variables(config))


@pytest.fixture(scope="module")
def jax_variables():
  return random_variables(CONFIG, seed=SEED_JAX)


@pytest.mark.parametrize("weights_format", ["safetensors", "bin"])
def test_hart_jax_export_loads_strictly(tmp_path, jax_variables,
                                        weights_format):
  ot.save_tokenizer(str(tmp_path), CONFIG, jax_variables,
                    weights_format=weights_format)
  # The reference is built from the config.json hart_jax wrote.
  ref = HARTTokenizerRef(json.loads((tmp_path / "config.json").read_text()))
  if weights_format == "safetensors":
    state = safetensors.torch.load_file(tmp_path / "model.safetensors")
  else:
    state = torch.load(tmp_path / "pytorch_model.bin", weights_only=True)
  ref.load_state_dict(state, strict=True)  # the official key set, exactly
  own = ref.state_dict()
  for k, value in ot.export_state_dict(CONFIG, jax_variables).items():
    assert state[k].dtype == own[k].dtype, k
    np.testing.assert_array_equal(own[k].numpy(), value, err_msg=k)


# "random" exercises every tensor; "hart_jax" is its own init (zero
# biases, unit norm scales), i.e. what `ot.init_variables` produces.
@pytest.mark.parametrize("init", ["random", "hart_jax"])
def test_hart_jax_matches_reference(jax_variables, init):
  variables = (jax_variables if init == "random"
               else ot.init_variables(CONFIG, jax.random.key(0)))
  ref = HARTTokenizerRef(tokenizer_config_to_official(CONFIG)).eval()
  ref.load_state_dict(to_torch(ot.export_state_dict(CONFIG, variables)),
                      strict=True)
  assert_same_tokenization(CONFIG, variables["vae"], ref,
                           make_images(CONFIG.image_size))


@pytest.mark.parametrize("changes", [
    dict(share_quant_resi=0), dict(share_quant_resi=1),
    dict(double_decoder=True), dict(quant_resi=0.0)],
    ids=["phi_per_scale", "one_phi", "double_decoder", "no_phi"])
def test_hart_jax_key_set_variants(changes):
  # Shapes only (no weights): cheap, and covers the other phi layouts.
  config = CONFIG.replace(**changes)
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                       ot.abstract_variables(config))
  ref = HARTTokenizerRef(tokenizer_config_to_official(config))
  ref.load_state_dict(to_torch(ot.export_state_dict(config, zeros)),
                      strict=True)


# --- reference -> hart_jax ---------------------------------------------------


def randomize_(model: torch.nn.Module, seed: int) -> None:
  """`random_variables`' scheme in torch: buffers too, so they round-trip."""
  g = torch.Generator().manual_seed(seed)
  randn = functools.partial(torch.randn, generator=g)

  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("embedding.weight"):
        p.copy_(0.5 * randn(p.shape))
      elif p.ndim > 1:
        gain = 0.5 if name.endswith("decoder.conv_out.weight") else 1.0
        p.copy_(gain * randn(p.shape) / p[0].numel() ** 0.5)
      elif name.endswith("weight"):
        p.copy_(1 + 0.1 * randn(p.shape))
      else:
        p.copy_(0.05 * randn(p.shape))
    for i, (name, b) in enumerate(model.named_buffers()):
      if name.endswith("num_batches_tracked"):
        b.fill_(1000 + i)  # distinct per layer, so a swap would show
      elif name.endswith("running_mean"):
        b.copy_(0.1 * randn(b.shape))
      else:  # running_var and ema_vocab_hit_SV: positive
        b.copy_(randn(b.shape).abs() + 0.5)


def test_reference_checkpoint_loads_into_hart_jax(tmp_path):
  # Written independently of hart_jax: the official HARTAutoEncoderConfig
  # fields, with CONFIG's values.
  official = dict(
      vocab_size=1024, z_channels=32, ch=32, dropout=0.0, beta=0.25,
      using_znorm=False, quant_conv_ks=3, quant_resi=0.5, share_quant_resi=4,
      default_qresi_counts=0, v_patch_nums=[1, 2, 3, 4, 6], test_mode=False,
      ch_mult=[1, 1, 1, 1, 2], levels=[8, 8, 8, 6, 5],
      quantizer_type="var_hybrid", hybrid=True, disable_quant_resi=False,
      freeze_codebook_for_hybrid=True, double_decoder=False,
      model_type="hart_autoencoder_with_disc",
      architectures=["HARTAutoEncoderWithDisc"])
  (tmp_path / "config.json").write_text(json.dumps(official, indent=2))
  ref = HARTTokenizerRef(official).eval()
  randomize_(ref, seed=SEED_TORCH)
  state = ref.state_dict()
  safetensors.torch.save_file(state, tmp_path / "model.safetensors")

  config, variables = ot.load_tokenizer(str(tmp_path))
  assert config == CONFIG
  assert_same_tokenization(config, variables["vae"], ref,
                           make_images(config.image_size))

  # Every tensor, buffers included, survives hart_jax's import + export.
  again = ot.export_state_dict(config, variables)
  assert sorted(again) == sorted(state)
  for k, value in state.items():
    assert again[k].dtype == value.numpy().dtype, k
    np.testing.assert_array_equal(again[k], value.numpy(), err_msg=k)
