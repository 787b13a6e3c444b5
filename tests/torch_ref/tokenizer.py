"""HART's tokenizer folder model (`vae.*` + `disc.*`) as a torch reference.

`HARTTokenizerRef(config_dict)` takes the official tokenizer config.json
content and builds a module tree whose `state_dict()` keys and shapes are
those of the official `HARTAutoEncoderWithDisc` (hart_spec.md 4b), so
`load_state_dict(..., strict=True)` checks an exporter's key set, and
its methods reproduce the official encode/decode numerics.
"""

from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from .quantizer import HybridQuantizerRef
from .vae_nets import Decoder, Encoder

# Official HARTAutoEncoderConfig defaults for fields a config may omit.
_DEFAULTS = dict(vocab_size=4096, z_channels=32, ch=160,
                 ch_mult=(1, 1, 2, 2, 4), beta=0.25, quant_conv_ks=3,
                 quant_resi=0.5, share_quant_resi=4, default_qresi_counts=0,
                 v_patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16),
                 double_decoder=False, using_znorm=False)


class AutoEncoderRef(nn.Module):
  """The official `HARTAutoEncoder` (the `vae.` subtree)."""

  def __init__(self, cfg: Mapping[str, Any]):
    super().__init__()
    z, ks = cfg["z_channels"], cfg["quant_conv_ks"]
    nets = dict(ch=cfg["ch"], ch_mult=tuple(cfg["ch_mult"]), z_channels=z)
    self.encoder = Encoder(num_res_blocks=2, **nets)
    self.decoder = Decoder(num_res_blocks=2, **nets)  # 3 blocks per level
    self.quant_conv = nn.Conv2d(z, z, ks, padding=ks // 2)
    self.post_quant_conv = nn.Conv2d(z, z, ks, padding=ks // 2)
    if cfg["double_decoder"]:
      self.decoder2 = Decoder(num_res_blocks=2, **nets)
      self.post_quant_conv2 = nn.Conv2d(z, z, ks, padding=ks // 2)
    self.quantize = HybridQuantizerRef(
        cfg["vocab_size"], z, cfg["v_patch_nums"], cfg["quant_resi"],
        cfg["share_quant_resi"], cfg["default_qresi_counts"], cfg["beta"])


def patch_discriminator(in_channels: int = 3, ndf: int = 64,
                        n_layers: int = 3) -> nn.Sequential:
  """pix2pix PatchGAN with BatchNorm, laid out as the official `main`."""
  layers: List[nn.Module] = [
      nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1),
      nn.LeakyReLU(0.2)]
  width = ndf
  for n in range(1, n_layers + 1):
    # Stride 2 except for the last hidden conv; BatchNorm makes the conv
    # bias redundant, so those convs have none.
    out = ndf * min(2 ** n, 8)
    layers += [nn.Conv2d(width, out, 4, stride=2 if n < n_layers else 1,
                         padding=1, bias=False),
               nn.BatchNorm2d(out), nn.LeakyReLU(0.2)]
    width = out
  layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
  return nn.Sequential(*layers)


class PatchDiscriminatorRef(nn.Module):
  """The official `NLayerDiscriminator` (the `disc.` subtree)."""

  def __init__(self):
    super().__init__()
    self.main = patch_discriminator()

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.main(x)


class HARTTokenizerRef(nn.Module):
  """`HARTAutoEncoderWithDisc`: `.vae` and `.disc`, with inference methods.

  Images are NCHW in [-1, 1]; latents are NCHW.
  """

  def __init__(self, config_dict: Mapping[str, Any]):
    super().__init__()
    cfg = dict(_DEFAULTS)
    cfg.update({k: v for k, v in config_dict.items() if k in _DEFAULTS})
    if config_dict.get("quantizer_type", "var_hybrid") != "var_hybrid":
      raise ValueError("only the hybrid quantizer is modelled")
    if cfg["using_znorm"]:
      raise ValueError("using_znorm (cosine lookup) is not modelled")
    self.config: Dict[str, Any] = cfg
    self.vae = AutoEncoderRef(cfg)
    self.disc = PatchDiscriminatorRef()

  @property
  def quantize(self) -> HybridQuantizerRef:
    return self.vae.quantize

  def img_to_latent(self, x: torch.Tensor) -> torch.Tensor:
    """f = quant_conv(encoder(x)) [B, C, P, P]."""
    return self.vae.quant_conv(self.vae.encoder(x))

  def img_to_idxBl_and_frest(self, x: torch.Tensor, v_patch_nums=None,
                             gaps: Optional[List[float]] = None
                             ) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """(index maps [B, pn*pn] per scale, rest before last [B, P*P, C])."""
    return self.quantize.encode(self.img_to_latent(x), v_patch_nums, gaps)

  def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
    """decoder(post_quant_conv(f_hat)), unclamped."""
    return self.vae.decoder(self.vae.post_quant_conv(f_hat))

  def decode_discrete_only(self, f_hat: torch.Tensor) -> torch.Tensor:
    if self.config["double_decoder"]:
      return self.vae.decoder2(self.vae.post_quant_conv2(f_hat))
    return self.decode(f_hat)

  def fhat_to_img(self, f_hat: torch.Tensor) -> torch.Tensor:
    return self.decode(f_hat).clamp(-1, 1)

  def hybrid_fhats(self, indices: List[torch.Tensor], frest: torch.Tensor,
                   v_patch_nums=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(hybrid f_hat, discrete-only f_hat) from an encoding.

    The continuous token is frest - codebook[last indices]; adding it back
    to the generation-style discrete f_hat gives f up to rounding.
    """
    q = self.quantize
    residual = frest - q.embedding(indices[-1])
    return (q.indices_to_fhat(indices, residual, v_patch_nums),
            q.indices_to_fhat(indices, None, v_patch_nums))

  def reconstruct(self, x: torch.Tensor, v_patch_nums=None,
                  clamp: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Image -> (hybrid reconstruction, discrete-only reconstruction)."""
    indices, frest = self.img_to_idxBl_and_frest(x, v_patch_nums)
    hybrid, discrete = self.hybrid_fhats(indices, frest, v_patch_nums)
    imgs = (self.decode(hybrid), self.decode_discrete_only(discrete))
    return tuple(i.clamp(-1, 1) for i in imgs) if clamp else imgs
