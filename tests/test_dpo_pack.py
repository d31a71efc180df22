"""rl.dpo.pack_pairs / batch_rows: packed pairs (shared prompt once, chosen and rejected branches; one or several
pairs to a row) give the log-probabilities, and their gradients, of the two sides' own rows; on the study's pairs it holds fewer
tokens than separate rows."""

import dataclasses
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llamalogue import model as M
from llamalogue import ops
from llamalogue import step
from rl import dpo


def _sides(rng, n=5, width=14, vocab=48):
  """Next-token rows of pairs with shared prompts of varying length, replies of varying length, right-padded."""
  out = {f"{s}_{k}": [] for s in ("chosen", "rejected") for k in ("inputs", "targets", "mask")}
  for i in range(n):
    prompt = list(rng.integers(1, vocab, 2 + i))
    for side in ("chosen", "rejected"):
      ids = prompt + list(rng.integers(1, vocab, 1 + (i + (side == "rejected") * 2) % 4)) + [0]
      inputs, targets = np.zeros(width, np.int32), np.zeros(width, np.int32)
      mask = np.zeros(width, np.float32)
      inputs[:len(ids) - 1], targets[:len(ids) - 1] = ids[:-1], ids[1:]
      mask[len(prompt) - 1:len(ids) - 1] = 1.0
      if i == 0:
        mask[0] = 1.0    # a scored position inside the shared prompt counts on both sides
      out[f"{side}_inputs"].append(inputs), out[f"{side}_targets"].append(targets), out[f"{side}_mask"].append(mask)
  sides = {k: np.stack(v) for k, v in out.items()}
  sides["rejected_inputs"][3] = sides["chosen_inputs"][3]       # identical sides: both branches empty
  sides["rejected_targets"][3] = sides["chosen_targets"][3]
  sides["rejected_mask"][3] = sides["chosen_mask"][3]
  return sides


@pytest.mark.parametrize("kernels,average,per_row", [("cpu", False, 1), ("cpu", True, 1), ("cpu", False, 5),
                                                     ("accelerator", True, 5)])
def test_packed_logps_and_gradients_equal_separate_rows(kernels, average, per_row, monkeypatch):
  """Pairs packed one to a row or five to a row: each side's log-probabilities and the gradients of any
  weighted sum of them equal those of separate rows."""
  monkeypatch.setenv("LLAMALOGUE_KERNELS", kernels)
  cfg = dataclasses.replace(M.PRESETS["tiny"], vocab_size=48, hidden_size=32, num_layers=2, num_heads=4,
                            num_kv_heads=2, intermediate_size=48)
  graphdef, params = step.init_params(cfg, 0)
  sides = _sides(np.random.default_rng(0))
  packed = dpo.pack_pairs(sides)
  batch = dpo.batch_rows(packed, np.arange(5), per_row)
  assert batch["tokens"].shape[0] == 5 // per_row
  assert batch["tokens"].size < 2 * sides["chosen_inputs"].size

  def separate(p):
    model = nnx.merge(graphdef, p)
    out = []
    for side in ("chosen", "rejected"):
      lp = model.logprobs(sides[f"{side}_inputs"], sides[f"{side}_targets"])["logprobs"]
      m = sides[f"{side}_mask"]
      out.append(jnp.sum(lp * m, -1) / (np.maximum(m.sum(-1), 1) if average else 1.0))
    return out

  weights = np.linspace(0.5, 1.5, len(packed["tokens"]))
  objective = lambda fn: (lambda p: jnp.sum(weights * (fn(p)[0] - 0.7 * fn(p)[1])))
  with jax.default_matmul_precision("highest"):
    c_p, r_p = jax.jit(lambda p: dpo.both_sides_logps(p, graphdef, batch, average))(params)
    c_s, r_s = jax.jit(separate)(params)
    g_p = jax.jit(jax.grad(objective(lambda p: dpo.both_sides_logps(p, graphdef, batch, average))))(params)
    g_s = jax.jit(jax.grad(objective(separate)))(params)
  np.testing.assert_allclose(c_p, c_s, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(r_p, r_s, rtol=1e-5, atol=1e-5)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_p), jax.tree.leaves(g_s)):
    scale = float(np.max(np.abs(b))) + 1e-6
    np.testing.assert_allclose(a, b, atol=1e-5 * scale + 1e-7, err_msg=jax.tree_util.keystr(path))


def test_pack_layout():
  sides = _sides(np.random.default_rng(1))
  packed = dpo.pack_pairs(sides)
  for i in range(len(packed["tokens"])):
    n = packed["lengths"][i]
    seg, pos = packed["segments"][i], packed["positions"][i]
    assert (seg[n:] == dpo.PAD_SEGMENT).all() and (packed["chosen_mask"][i, n:] == 0).all()
    s = int((seg == 0).sum())
    assert (seg[:s] == 0).all() and (pos[:s] == np.arange(s)).all()
    for branch, mask in ((1, "chosen_mask"), (2, "rejected_mask")):
      idx = np.flatnonzero(seg == branch)
      assert (pos[idx] == s + np.arange(len(idx))).all()                   # each branch restarts after the prefix
      side = mask.split("_")[0]
      np.testing.assert_array_equal(packed["tokens"][i, idx], sides[f"{side}_inputs"][i, s:s + len(idx)])
      assert packed[mask][i].sum() == sides[f"{side}_mask"][i].sum()        # every scored target, once
  # identical sides: everything is shared, both branches empty, each side's targets scored from the prefix
  end = int(dpo._scored_end(sides["chosen_mask"][3:4])[0])
  assert packed["lengths"][3] == end and (packed["segments"][3, :end] == 0).all()


def test_packing_saves_tokens_on_the_study_pairs():
  """The study's naturalistic pairs share their prompt: packed rows hold far fewer tokens than two rows a pair."""
  from evaluation import testing
  from llamalogue import hf
  from rl import pairs as pairs_lib
  pairs = pairs_lib.load_pairs("data:communicative_baby/dpo_dataset/huggingface_dpo_format.json", limit=64)
  with tempfile.TemporaryDirectory() as tmp:
    texts = [t for p in pairs for t in (p.prompt + " " + p.chosen, p.prompt + " " + p.rejected)]
    testing.make_tokenizer(pathlib.Path(tmp), texts, 512)
    enc = pairs_lib.encode_pairs(pairs, hf.load_tokenizer(tmp))
  packed = dpo.pair_arrays(enc)
  separate = sum(int(dpo._scored_end(getattr(enc, s).loss_mask).sum()) for s in ("chosen", "rejected"))
  assert packed["lengths"].sum() < 0.8 * separate
  assert packed["chosen_mask"].sum() == enc.chosen.loss_mask.sum()
  assert packed["rejected_mask"].sum() == enc.rejected.loss_mask.sum()


def test_balanced_rows_keep_each_pair_in_its_group_and_its_values():
  """Rows are balanced (longest pair first into the emptiest row): the batch is narrower than pairs laid in
  order, each group's pairs stay in its rows, and each pair's log-probabilities come back in `idx` order,
  equal to one pair a row."""
  lengths = np.array([9, 8, 1, 1, 7, 2, 1, 1])
  row_of = dpo.balance_rows(lengths, 2)
  assert sorted(np.bincount(row_of)) == [2, 2, 2, 2]
  assert np.bincount(row_of, weights=lengths).max() == 10           # in order the rows would hold 17, 2, 9, 2
  cfg = dataclasses.replace(M.PRESETS["tiny"], vocab_size=48, hidden_size=32, num_layers=2, num_heads=4,
                            num_kv_heads=2, intermediate_size=48)
  graphdef, params = step.init_params(cfg, 0)
  packed = dpo.pack_pairs(_sides(np.random.default_rng(2), n=8))
  idx = np.array([7, 2, 5, 0, 4, 1, 6, 3])
  one = dpo.batch_rows(packed, idx, 1)
  for per_row, groups in ((2, 1), (2, 2), (4, 2)):
    batch = dpo.batch_rows(packed, idx, per_row, groups)
    rows_per_group = len(idx) // per_row // groups
    # pair i of group g sits in one of g's rows
    assert ((batch["pair_slot"] // per_row) // rows_per_group == np.arange(len(idx)) // (len(idx) // groups)).all()
    assert sorted(batch["pair_slot"]) == list(range(len(idx)))
    in_order = packed["lengths"][idx].reshape(-1, per_row).sum(1)            # rows if laid in order
    assert batch["tokens"].shape[1] <= -(-in_order.max() // 16) * 16
    assert in_order.sum() == int((batch["segments"] % ops.SEGMENT_PARTS != dpo.PAD_SEGMENT).sum())
    with jax.default_matmul_precision("highest"):
      got = jax.jit(lambda p, b: dpo.both_sides_logps(p, graphdef, b))(params, batch)
      want = jax.jit(lambda p, b: dpo.both_sides_logps(p, graphdef, b))(params, one)
    np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-5, atol=1e-5)
