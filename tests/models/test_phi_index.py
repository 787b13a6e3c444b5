"""The float64 tick rule for choosing a shared phi (hart_spec.md 3)."""

import json

from hart_jax.models.tokenizer import phi_index


def test_matches_official_for_every_k(golden_dir):
  table = json.loads(
      (golden_dir / "tokenizer_tiny" / "phi_index.json").read_text())
  by_k = table["by_num_scales"]
  assert set(by_k) == {str(k) for k in range(2, 17)}
  for k, expected in by_k.items():
    k = int(k)
    assert [phi_index(si, k) for si in range(k)] == expected, k


def test_float64_ties_from_the_spec():
  # Exact arithmetic would give 0 and 2 at si = 2 and 7; float64 gives 1, 3.
  assert [phi_index(si, 10) for si in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3,
                                                     3, 3]
  assert [phi_index(si, 5) for si in range(5)] == [0, 1, 2, 2, 3]
  assert [phi_index(si, 14) for si in range(14)] == [0, 0, 0, 1, 1, 1, 1, 2,
                                                     2, 2, 2, 3, 3, 3]


def test_other_sharing_modes():
  assert {phi_index(si, 10, 1) for si in range(10)} == {0}
  # Non-shared with one phi per scale: ticks at (i + 0.5) / K.
  assert [phi_index(si, 10, 10) for si in range(10)] == list(range(10))
