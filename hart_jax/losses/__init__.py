"""Tokenizer-training losses: reconstruction, LPIPS, GAN, codebook health."""

from hart_jax.losses.codebook import (codebook_usage, reset_hit_ema,
                                      restart_dead_codes, update_hit_ema,
                                      update_latent_pool)
from hart_jax.losses.gan import (adaptive_weight, adaptive_weight_from_fns,
                                 decode_with_adaptive_weight,
                                 disc_start_factor, generator_loss,
                                 hinge_discriminator_loss)
from hart_jax.losses.lpips import Lpips, load_lpips_params, make_lpips
from hart_jax.losses.reconstruction import (LossWeights, l1_loss, l2_loss,
                                            reconstruction_loss,
                                            tokenizer_loss)

__all__ = [
    "Lpips", "LossWeights", "adaptive_weight", "adaptive_weight_from_fns",
    "codebook_usage", "decode_with_adaptive_weight", "disc_start_factor",
    "generator_loss", "hinge_discriminator_loss", "l1_loss", "l2_loss",
    "load_lpips_params", "make_lpips", "reconstruction_loss",
    "reset_hit_ema", "restart_dead_codes", "tokenizer_loss",
    "update_hit_ema", "update_latent_pool",
]
