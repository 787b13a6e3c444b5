"""Test-only PyTorch reference of HART's tokenizer (no official code).

The module tree reproduces the official key names and shapes of
`HARTAutoEncoderWithDisc` so strict `load_state_dict` checks hart_jax's
exports; the forward passes reproduce the official numerics, which the
golden vectors confirm (tests/interop/test_torch_reference.py).
"""

from .quantizer import phi_index
from .tokenizer import HARTTokenizerRef

__all__ = ["HARTTokenizerRef", "phi_index"]
