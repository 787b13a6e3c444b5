"""Test-only PyTorch references of HART's official modules (no official
code).

The module trees reproduce the official key names and shapes of
`HARTAutoEncoderWithDisc` (tokenizer/) and `HARTForT2I` (llm/) so strict
`load_state_dict` checks hart_jax's exports; the forward passes reproduce
the official numerics, which the golden vectors confirm
(tests/interop/test_torch_reference.py, tests/interop/test_export_import.py).
"""

from .hart_transformer import HARTForT2IRef
from .quantizer import phi_index
from .tokenizer import HARTTokenizerRef

__all__ = ["HARTForT2IRef", "HARTTokenizerRef", "phi_index"]
