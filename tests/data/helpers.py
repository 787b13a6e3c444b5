"""Test helpers for the data tests."""

import numpy as np


class IndexSource:
  """Record i has label i, caption "#i", and pixels that encode i.

  Labels identify examples, which makes order, shard and resume checks
  exact.
  """

  def __init__(self, n: int, size: int = 8):
    self.n, self.size = n, size

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    image = np.zeros((self.size, self.size, 3), np.uint8)
    image[..., 0] = i % 256
    image[..., 1] = i // 256
    return {"image": image, "label": np.int32(i), "caption": f"#{i}"}
