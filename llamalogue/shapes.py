"""Padded shapes: a few distinct lengths and batch sizes, so each jitted function compiles a few times.

Shared by the scorer (evaluation/scoring.py), the sampler (llamalogue/sampling.py) and the PPO
rollouts: prompts and texts are padded to length buckets, batches to powers of two.
"""


def batch_size_for(pad_len: int, batch_tokens: int, max_batch: int) -> int:
  """A power-of-two batch size with about `batch_tokens` tokens per batch."""
  b = max(1, batch_tokens // pad_len)
  return min(max_batch, 1 << (b.bit_length() - 1))


def bucket_len(n: int, multiple: int, linear_units: int = 4) -> int:
  """Padded length: a multiple of `multiple` up to `linear_units` (a power of two) of them, then steps of about x1.5.

  Few distinct lengths means few compilations; the geometric steps waste at most
  about a third of a long batch on padding. Lengths that cluster (DPO's rows, each the sum of
  several pairs) take more linear steps: few of them occur, and each wastes less.
  """
  padded = max(multiple, -(-n // multiple) * multiple)
  if padded <= linear_units * multiple:
    return padded
  units = linear_units            # 4, 6, 8, 12, 16, 24, ... times `multiple`
  while units * multiple < padded:
    units = units * 3 // 2 if units & (units - 1) == 0 else units * 4 // 3
  return units * multiple


def tail_batch_size(n: int, smallest: int = 8) -> int:
  """The batch size for a last, partial batch of `n` rows: the next power of two (at least `smallest`).

  Keeps shapes few (one compile each) while a small remainder is not padded to a full batch.
  """
  return max(smallest, 1 << (n - 1).bit_length())
