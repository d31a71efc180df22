"""Sharded train step on 8 simulated CPU devices equals the 1-device step; accumulation is exact."""

import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from llamalogue import model as M
from llamalogue import sharding, step
from tests.helpers import close_after_adam

CFG = M.LlamaConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                    intermediate_size=48)


def _opt_cfg():
  return ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1,
                                        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0))


def _batch(n, seq=12, seed=0):
  rs = np.random.RandomState(seed)
  toks = rs.randint(0, CFG.vocab_size, (n, seq + 1)).astype(np.int32)
  mask = (rs.rand(n, seq) > 0.2).astype(np.float32)
  return {"inputs": toks[:, :-1], "targets": toks[:, 1:], "loss_mask": mask}


def _run(mesh, batch_AxB, steps=2):
  graphdef, params = step.init_params(CFG, seed=0)
  tx, _ = step.make_optimizer(_opt_cfg(), total_steps=10)
  state = step.init_state(params, tx)
  shardings = sharding.tree_shardings(state, mesh)
  state = sharding.shard(state, shardings)
  train = step.jit_train_step(step.lm_loss(graphdef), tx, mesh, shardings)
  grads = jax.jit(jax.grad(lambda p, b: (lambda s, n: s / n)(*step.lm_loss(graphdef)(p, b))))(
      params, jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), batch_AxB))
  losses = []
  for _ in range(steps):
    state, metrics = train(state, batch_AxB)
    losses.append(float(metrics["loss"]))
  return jax.device_get(state["params"]), losses, grads, state


def test_mesh_shapes():
  assert len(jax.devices()) == 8, "conftest must simulate 8 CPU devices"
  assert sharding.make_mesh(-1, 1).shape == {"data": 8, "fsdp": 1}
  assert sharding.make_mesh(2, 4).shape == {"data": 2, "fsdp": 4}
  assert sharding.make_mesh(-1, 2, devices=jax.devices()[:4]).shape == {"data": 2, "fsdp": 2}
  from llamalogue.errors import ConfigError
  with pytest.raises(ConfigError, match="mesh"):
    sharding.make_mesh(3, 2)


def test_rule_table():
  assert sharding.spec_for("params/embed_tokens", (64, 32), 4) == P("fsdp", None)
  assert sharding.spec_for("params/layers/0/self_attn/q_proj/kernel", (32, 32), 4) == P(None, "fsdp")
  assert sharding.spec_for("params/layers/0/mlp/down_proj/kernel", (48, 32), 4) == P("fsdp", None)
  assert sharding.spec_for("params/norm/weight", (32,), 4) == P()
  assert sharding.spec_for("params/layers/0/self_attn/k_proj/kernel", (32, 6), 4) == P()  # 6 % 4: replicated
  # The stacked decoder layers `[layers, ...]`: the same dimension counted from the end, never the layer axis.
  assert sharding.spec_for("params/layers/self_attn/q_proj/kernel", (2, 32, 32), 4) == P(None, None, "fsdp")
  assert sharding.spec_for("params/layers/mlp/down_proj/kernel", (2, 48, 32), 4) == P(None, "fsdp", None)
  assert sharding.spec_for("params/layers/input_layernorm/weight", (2, 32), 4) == P()
  assert sharding.spec_for("opt_state/0/mu/layers/mlp/up_proj/kernel", (4, 32, 48), 4) == P(None, None, "fsdp")


@pytest.mark.parametrize("data,fsdp", [(8, 1), (2, 4), (1, 8)])
def test_eight_devices_equal_one(data, fsdp):
  batch = jax.tree.map(lambda x: x[None], _batch(8))  # [1, 8, L]
  p1, l1, g1, _ = _run(sharding.make_mesh(1, 1, devices=jax.devices()[:1]), batch)
  p8, l8, g8, state8 = _run(sharding.make_mesh(data, fsdp), batch)
  np.testing.assert_allclose(l8, l1, rtol=1e-6, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g8, g1)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), p8, p1)
  if fsdp > 1:  # parameters really are split over the fsdp axis
    emb = state8["params"]["embed_tokens"]
    assert emb.sharding.spec == P("fsdp", None)
    assert emb.addressable_shards[0].data.shape[0] == CFG.vocab_size // fsdp


def test_gradient_accumulation_1x4_equals_4x1():
  b = _batch(4)
  one_by_four = jax.tree.map(lambda x: x[None], b)           # 1 micro-batch of 4
  four_by_one = jax.tree.map(lambda x: x[:, None], b)        # 4 micro-batches of 1
  mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  pa, la, _, _ = _run(mesh, one_by_four)
  pb, lb, _, _ = _run(mesh, four_by_one)
  np.testing.assert_allclose(la, lb, rtol=1e-6)
  jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, atol=1e-6), pa, pb)


def test_nan_loss_leaves_state_unchanged():
  mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  graphdef, params = step.init_params(CFG, seed=0)
  tx, _ = step.make_optimizer(_opt_cfg(), total_steps=10)
  state = step.init_state(params, tx)
  shardings = sharding.tree_shardings(state, mesh)
  train = step.jit_train_step(step.lm_loss(graphdef), tx, mesh, shardings)
  bad = jax.tree.map(lambda x: x[None], _batch(2))
  bad["loss_mask"] = bad["loss_mask"] * np.nan
  before = jax.device_get(state["params"])
  state, metrics = train(sharding.shard(state, shardings), bad)
  assert not bool(metrics["finite"]) and int(state["step"]) == 0
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state["params"]), before)


def test_cpu_data_parallel_sums_gradients_in_one_flat_all_reduce():
  """On CPU (data > 1, fsdp 1) the step sums every gradient, the loss and the count in ONE all-reduce of
  one flat vector (step.flat_gradient_allreduce: XLA:CPU reduces a tuple buffer by buffer); fsdp keeps
  XLA's own collectives."""
  import re
  graphdef, params = step.init_params(CFG, seed=0)
  tx, _ = step.make_optimizer(_opt_cfg(), total_steps=10)
  state = step.init_state(params, tx)
  batch = jax.tree.map(lambda x: x[None], _batch(8))
  n_params = sum(x.size for x in jax.tree.leaves(params))
  for (data, fsdp), flat in (((8, 1), True), ((2, 4), False), ((1, 1), False)):
    mesh = sharding.make_mesh(data, fsdp, devices=jax.devices()[:data * fsdp])
    assert step.flat_gradient_allreduce(mesh) is flat
    shardings = sharding.tree_shardings(state, mesh)
    hlo = step.jit_train_step(step.lm_loss(graphdef), tx, mesh, shardings).lower(
        sharding.shard(state, shardings), batch).compile().as_text()
    reduces = re.findall(r"= (\S+) all-reduce(?:-start)?\(", hlo)
    one_vector = f"f32[{n_params + 2}]{{0}}"           # every gradient, the loss sum and the count
    if flat:
      assert reduces == [one_vector], reduces
    else:
      assert one_vector not in reduces and bool(reduces) == (data * fsdp > 1), reduces


@pytest.mark.parametrize("data", [4, 8])
def test_flat_all_reduce_with_accumulation_equals_one_device(data):
  """2 micro-batches of 8 rows split over `data` CPU devices: the flat all-reduce's mean gradient, loss and
  count equal one device's; after two Adam steps the params agree to Adam's rounding (a gradient near 0
  moves its update by up to lr: at most lr / 10 here, on fewer than 1 in 1,000 weights)."""
  graphdef, params = step.init_params(CFG, seed=0)
  two_micro = jax.tree.map(lambda x: x.reshape(2, 8, *x.shape[1:]), _batch(16))
  mesh = sharding.make_mesh(data, 1, devices=jax.devices()[:data])
  assert step.flat_gradient_allreduce(mesh)
  loss_fn = step.lm_loss(graphdef)
  flat = jax.jit(lambda p, b: step._flat_mean_grads(loss_fn, p, b, mesh),
                 in_shardings=(sharding.replicated(mesh), sharding.batch_sharding(mesh, 1)))(params, two_micro)
  ref = jax.jit(lambda p, b: step._mean_grads(loss_fn, p, b))(params, two_micro)
  for a, b in zip(jax.tree.leaves(flat), jax.tree.leaves(ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  p1, l1, _, _ = _run(sharding.make_mesh(1, 1, devices=jax.devices()[:1]), two_micro)
  pd, ld, _, _ = _run(mesh, two_micro)
  np.testing.assert_allclose(ld, l1, rtol=1e-6)
  close_after_adam(pd, p1, _opt_cfg().lr)
