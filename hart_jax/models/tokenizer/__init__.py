"""HART's hybrid tokenizer: conv autoencoder + multi-scale hybrid quantizer."""

from hart_jax.models.tokenizer.autoencoder import Decoder, Encoder
from hart_jax.models.tokenizer.config import TokenizerConfig
from hart_jax.models.tokenizer.discriminator import PatchDiscriminator
from hart_jax.models.tokenizer.model import HybridTokenizer
from hart_jax.models.tokenizer.quantizer import MultiScaleQuantizer, phi_index

__all__ = [
    "Decoder", "Encoder", "HybridTokenizer", "MultiScaleQuantizer",
    "PatchDiscriminator", "TokenizerConfig", "phi_index",
]
