"""TokenIterator: windows, determinism, per-epoch reshuffle, exact save/restore, sharding, words."""

import numpy as np
import pytest

from llamalogue.data.iterator import TokenIterator
from llamalogue.errors import DataError


@pytest.fixture
def arrays(tmp_path):
  rng = np.random.default_rng(0)
  tokens_N = rng.integers(0, 1000, size=10_007).astype(np.uint16)
  words_N = (rng.random(10_007) < 0.4).astype(np.uint8)
  tp, wp = tmp_path / "t.npy", tmp_path / "w.npy"
  np.save(tp, tokens_N)
  np.save(wp, words_N)
  return tp, wp, tokens_N, words_N


def take(it, n):
  return [it.next() for _ in range(n)]


def same(a, b):
  return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in ("inputs", "targets")) \
      and [x["words"] for x in a] == [y["words"] for y in b]


def test_windows_shapes_and_targets(arrays):
  tp, wp, tokens_N, words_N = arrays
  it = TokenIterator(tp, wp, batch_size=4, seq_len=16, seed=1)
  assert it.windows == (10_007 - 1) // 16 and it.steps_per_epoch == it.windows // 4
  b = it.next()
  assert b["inputs"].shape == b["targets"].shape == b["loss_mask"].shape == (4, 16)
  assert b["inputs"].dtype == b["targets"].dtype == np.int32 and b["loss_mask"].dtype == np.float32
  np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
  total = 0
  for row in range(4):
    starts = [s for s in range(0, 10_007 - 16, 16) if np.array_equal(tokens_N[s:s + 16], b["inputs"][row])]
    assert starts, "row is not an aligned window"
    s = starts[0]
    np.testing.assert_array_equal(tokens_N[s + 1:s + 17], b["targets"][row])
    total += int(words_N[s:s + 16].sum())
  assert b["words"] == total


def test_epoch_is_a_permutation_and_reshuffles(arrays):
  tp, wp, tokens_N, words_N = arrays
  it = TokenIterator(tp, wp, batch_size=5, seq_len=16, seed=3)
  order = lambda batches: [tuple(r[:4]) for b in batches for r in b["inputs"]]
  e0 = take(it, it.steps_per_epoch)
  assert it.epoch == 0
  e1 = take(it, it.steps_per_epoch)
  assert it.epoch == 1
  assert len(set(order(e0))) == len(order(e0))              # no window twice in an epoch
  assert order(e0) != order(e1) and sorted(order(e0)) != []   # reshuffled
  used = it.steps_per_epoch * 5
  assert sum(b["words"] for b in e0) <= int(words_N.sum())
  assert used <= it.windows < used + 5


def test_deterministic_per_seed(arrays):
  tp, wp, *_ = arrays
  a = take(TokenIterator(tp, wp, 4, 16, seed=7), 30)
  b = take(TokenIterator(tp, wp, 4, 16, seed=7), 30)
  c = take(TokenIterator(tp, wp, 4, 16, seed=8), 30)
  assert same(a, b) and not same(a, c)


@pytest.mark.parametrize("k", [0, 5, 155, 156, 157, 400])
def test_restore_continues_exactly(arrays, k):
  tp, wp, *_ = arrays
  ref = TokenIterator(tp, wp, 4, 16, seed=11)
  assert ref.steps_per_epoch == 156
  take(ref, k)
  state = ref.state()
  assert all(isinstance(v, int) for v in state.values())
  expected = take(ref, 200)                                   # crosses epoch boundaries
  fresh = TokenIterator(tp, wp, 4, 16, seed=11)
  fresh.restore(dict(state))
  assert same(take(fresh, 200), expected)
  assert fresh.epoch == ref.epoch and fresh.state() == ref.state()


def test_shards_partition_the_global_batch(arrays):
  tp, wp, *_ = arrays
  whole = TokenIterator(tp, wp, batch_size=8, seq_len=16, seed=5)
  shards = [TokenIterator(tp, wp, batch_size=2, seq_len=16, seed=5, shard_index=i, shard_count=4)
            for i in range(4)]
  assert all(s.steps_per_epoch == whole.steps_per_epoch for s in shards)
  for _ in range(whole.steps_per_epoch + 3):
    b = whole.next()
    parts = [s.next() for s in shards]
    np.testing.assert_array_equal(np.concatenate([p["inputs"] for p in parts]), b["inputs"])
    assert [p["words"] for p in parts] == [b["words"]] * 4  # every shard counts the whole step's words


def test_restore_rejects_other_data_or_batch(arrays):
  tp, wp, *_ = arrays
  state = TokenIterator(tp, wp, 4, 16, seed=1).state()
  with pytest.raises(DataError, match="global_batch"):
    TokenIterator(tp, wp, 8, 16, seed=1).restore(state)
  with pytest.raises(DataError, match="windows"):
    TokenIterator(tp, wp, 4, 32, seed=1).restore(state)


def test_too_small_or_mismatched_arrays(tmp_path, arrays):
  tp, wp, *_ = arrays
  with pytest.raises(DataError, match="fewer than one batch"):
    TokenIterator(tp, wp, batch_size=1000, seq_len=16, seed=0)
  short = tmp_path / "short.npy"
  np.save(short, np.zeros(10, np.uint8))
  with pytest.raises(DataError, match="does not match"):
    TokenIterator(tp, short, 4, 16, seed=0)


