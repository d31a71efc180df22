"""Batches of packed token windows, deterministic per seed, with saveable state.

The token array is cut into `W = (N - 1) // L` non-overlapping windows of
L inputs; window w reads tokens[w*L : w*L + L + 1] (inputs and shifted
targets). Each epoch visits the windows in a fresh permutation drawn from
(seed, epoch); a step takes the next B * shard_count windows of it, and
shard k gets rows [k*B, (k+1)*B) of those, so the shards of one step
together are exactly the batch of a single unsharded iterator with batch
size B * shard_count. The incomplete last step of an epoch is skipped.
"""

import numpy as np

from llamalogue.errors import DataError


class TokenIterator:
  """`next()` -> dict(inputs, targets: int32[B, L], loss_mask: float32[B, L], words: int): this shard's rows,
  and the lexical words of the whole step (all shards' rows)."""

  def __init__(self, tokens_path, words_path, batch_size: int, seq_len: int, seed: int,
               shard_index: int = 0, shard_count: int = 1):
    if batch_size < 1 or seq_len < 1:
      raise ValueError(f"batch_size and seq_len must be >= 1, got {batch_size}, {seq_len}")
    if not 0 <= shard_index < shard_count:
      raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    self.tokens_N = np.load(tokens_path, mmap_mode="r")
    self.words_N = np.load(words_path, mmap_mode="r")
    if self.tokens_N.shape != self.words_N.shape:
      raise DataError(f"{words_path}: {self.words_N.shape} does not match {tokens_path}: "
                      f"{self.tokens_N.shape}")
    self.batch_size = batch_size
    self.seq_len = seq_len
    self.seed = seed
    self.shard_index = shard_index
    self.shard_count = shard_count
    self.global_batch = batch_size * shard_count
    self.windows = max(0, (self.tokens_N.shape[0] - 1) // seq_len)
    self.steps_per_epoch = self.windows // self.global_batch
    if self.steps_per_epoch == 0:
      raise DataError(f"{tokens_path}: {self.tokens_N.shape[0]} tokens make {self.windows} "
                      f"windows of {seq_len}, fewer than one batch of {self.global_batch}")
    self.epoch = 0
    self.step = 0            # steps taken within the current epoch
    self._order_W = None

  def _order(self) -> np.ndarray:
    if self._order_W is None:
      rng = np.random.default_rng([self.seed, self.epoch])
      self._order_W = rng.permutation(self.windows)
    return self._order_W

  def next(self) -> dict:
    if self.step >= self.steps_per_epoch:
      self.epoch += 1
      self.step = 0
      self._order_W = None
    start = self.step * self.global_batch + self.shard_index * self.batch_size
    windows_B = self._order()[start:start + self.batch_size]
    self.step += 1
    L = self.seq_len
    index_BxL1 = windows_B[:, None] * L + np.arange(L + 1)[None, :]
    tokens_BxL1 = np.asarray(self.tokens_N[index_BxL1], dtype=np.int32)
    words = int(self.words_N[index_BxL1[:, :L]].sum(dtype=np.int64))
    if self.shard_count > 1:  # every shard counts the words of the whole step (milestones count global words)
      all_W = self._order()[(self.step - 1) * self.global_batch:self.step * self.global_batch]
      words = int(self.words_N[(all_W[:, None] * L + np.arange(L)[None, :])].sum(dtype=np.int64))
    return {
        "inputs": tokens_BxL1[:, :-1],
        "targets": tokens_BxL1[:, 1:],
        "loss_mask": np.ones((self.batch_size, L), np.float32),
        "words": words,
    }

  __next__ = next

  def __iter__(self):
    return self

  def state(self) -> dict:
    """Position as plain ints; restore() on a fresh iterator continues from here."""
    return {"epoch": self.epoch, "step": self.step, "seed": self.seed,
            "windows": self.windows, "global_batch": self.global_batch}

  def restore(self, state: dict) -> None:
    for key in ("seed", "windows", "global_batch"):
      if key in state and int(state[key]) != getattr(self, key):
        raise DataError(f"data iterator state: {key}={int(state[key])} was saved, but this "
                        f"iterator has {key}={getattr(self, key)} (different data or batch?)")
    self.epoch = int(state["epoch"])
    self.step = int(state["step"])
    self._order_W = None
