"""Checkpoints written before the decoder layers were stacked (`params/layers/0/...`) still load:
as a model (init_from, evaluate, export) and as a train state to resume, the layers stacked at load.
A save that fails keeps what was committed and removes only what was not."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from llamalogue import checkpoint as ckpt_lib
from llamalogue import model as M
from llamalogue import sharding, step
from llamalogue.errors import LlamalogueError

CFG = M.LlamaConfig(vocab_size=64, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2, intermediate_size=48)


def _tx():
  opt = ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=1, schedule="cosine", min_lr_ratio=0.1, b1=0.9,
                                       b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0))
  return step.make_optimizer(opt, 10)[0]


def _old_run_dir(tmp_path, state):
  """A run directory as the per-layer code wrote it: layers under `layers/<i>/...` in params and
  optimizer moments, and a model_config.json with the old `scan_layers` field."""
  old_state = ckpt_lib.unstack_layers(jax.device_get(state), lambda x, i: np.asarray(x)[i])
  assert sorted(old_state["params"]["layers"]) == [0, 1, 2]
  ck = ckpt_lib.RunCheckpoints(tmp_path)
  ck.save(old_state, {"step": 4, "words": 40, "data": {}})
  ck.close()
  (tmp_path / "checkpoints" / "model_config.json").write_text(
      json.dumps({**dataclasses.asdict(CFG), "scan_layers": False}))
  return tmp_path


def test_per_layer_checkpoint_loads_as_a_stacked_model(tmp_path):
  tx = _tx()
  state = step.init_state(step.init_params(CFG, 3)[1], tx)
  run = _old_run_dir(tmp_path, state)
  model, _ = ckpt_lib.load_model(run)
  assert model.layers.self_attn.q_proj.kernel[...].shape == (3, 32, 32)
  jax.tree.map(np.testing.assert_array_equal, M.pure_dict(nnx.state(model)), jax.device_get(state["params"]))
  tokens = jnp.array([[1, 2, 3, 4, 5]])
  expected = M.Llama(CFG, rngs=nnx.Rngs(params=3))(tokens)
  np.testing.assert_array_equal(np.asarray(model(tokens)), np.asarray(expected))


def test_per_layer_checkpoint_resumes_onto_stacked_shardings(tmp_path):
  tx = _tx()
  state = step.init_state(step.init_params(CFG, 3)[1], tx)
  state = jax.tree.map(lambda x: x + 1 if jnp.issubdtype(x.dtype, jnp.floating) else x, state)  # moments non-zero
  run = _old_run_dir(tmp_path, state)
  mesh = sharding.make_mesh(1, 8)
  target = step.pretrain_layout(CFG, tx, mesh, jax.random.key(3)).target
  abstract = jax.tree.map(lambda t: jax.ShapeDtypeStruct(t.shape, t.dtype), target)
  restored, meta = ckpt_lib.RunCheckpoints(run).restore_latest(target)
  assert meta["words"] == 40
  assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(abstract)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))
  q = restored["params"]["layers"]["self_attn"]["q_proj"]["kernel"]
  assert q.sharding.spec == jax.sharding.PartitionSpec(None, None, "fsdp")


def _failing_save(ck, monkeypatch, after_commit: bool):
  """Makes the next `latest` save fail: after writing the step whole (a peer lost in the save's closing
  sync), or before anything is committed (orbax's temporary directory left behind)."""
  real = ck.latest.save

  def save(n, args, force=False):
    if after_commit:
      real(n, args=args, force=force)
    else:
      (ck.root / "latest" / f"step_{n}.orbax-checkpoint-tmp-1").mkdir()
    raise RuntimeError("Barrier timed out: a peer is gone")
  monkeypatch.setattr(ck.latest, "save", save)


def test_a_save_failing_after_its_commit_keeps_the_checkpoint(tmp_path, monkeypatch):
  state = step.init_state(step.init_params(CFG, 3)[1], _tx())
  ck = ckpt_lib.RunCheckpoints(tmp_path)
  ck.save(state, {"step": 2, "words": 20, "data": {}})
  _failing_save(ck, monkeypatch, after_commit=True)
  with pytest.raises(LlamalogueError, match=r"step_4: checkpoint written, but the save failed after its commit "
                                            r"\(.*Barrier timed out.*\); it is kept \(it resumes from step_4\)"):
    ck.save(state, {"step": 4, "words": 40, "data": {}})
  assert (tmp_path / "checkpoints" / "latest" / "step_4" / ckpt_lib.COMMIT_MARKER).exists()
  ck.close()
  restored, meta = ckpt_lib.RunCheckpoints(tmp_path).restore_latest(state)
  assert meta["step"] == 4


def test_a_save_failing_before_its_commit_removes_the_partial(tmp_path, monkeypatch):
  state = step.init_state(step.init_params(CFG, 3)[1], _tx())
  ck = ckpt_lib.RunCheckpoints(tmp_path)
  ck.save(state, {"step": 2, "words": 20, "data": {}})
  _failing_save(ck, monkeypatch, after_commit=False)
  with pytest.raises(LlamalogueError, match=r"step_4: checkpoint not written .*removed \(it resumes from step_2\)"):
    ck.save(state, {"step": 4, "words": 40, "data": {}})
  assert sorted(p.name for p in (tmp_path / "checkpoints" / "latest").iterdir()) == ["step_2"]
