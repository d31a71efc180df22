"""Nothing constant-folds: every jitted entry point takes its PRNG key and its data as arguments.

The 135M preset's init, train step (64x128 and 32x512) and eval loss, and the scorer's
jitted statistics, are traced and lowered (never run) and checked for two things:

- no literal constant over 1 MiB in the lowered StableHLO text (closed-over parameters
  or data arrays are printed there as `stablehlo.constant dense<...> : tensor<...>`);
- no constant expression over 1 MiB: a value that depends on no argument and is
  computed from a PRNG key made inside the function (a closed-over seed) or from a
  closed-over array. XLA:GPU folds such an expression on the host at compile time
  (issue 13: the init with an int seed did not reach step 1 in 200 s). Its lowered text
  holds only a 4 x u32 seed constant, so the text alone cannot show it: the check
  follows the jaxpr's data flow. Values built from `iota`/`broadcast` alone (position
  tables, zero-filled optimizer moments) are not counted: XLA never folds those.

Two controls show the checks fail where they should: the old init (seed closed over)
and a function that closes over a weight matrix. The same literal check runs on the
TPU-compiled HLO of the tiny pre-training, DPO and PPO steps (tests/test_tpu_aot.py,
`llamalogue.aot.hlo_problems`, with host callbacks and transfers).
"""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from llamalogue import model as M
from llamalogue import sharding, step
from llamalogue.aot import hlo_constants

LIMIT = 1 << 20
_KEY_PRIMITIVES = ("random_seed", "random_wrap")
# (type, bytes) of every constant in StableHLO or HLO text; tests/test_tpu_aot.py applies it to TPU-compiled HLO.
literal_constants = hlo_constants


def _nbytes(aval) -> int:
  shape = getattr(aval, "shape", ())
  dtype = getattr(aval, "dtype", None)
  if dtype is None:
    return 0
  size = dtype.itemsize if not jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key) else 8
  return int(np.prod(shape, dtype=np.int64)) * size


def _sub_jaxprs(params):
  for v in params.values():
    for x in (v if isinstance(v, (tuple, list)) else (v,)):
      if hasattr(x, "jaxpr") and hasattr(x, "consts"):        # ClosedJaxpr
        yield x.jaxpr, list(x.consts)
      elif hasattr(x, "eqns") and hasattr(x, "invars"):        # Jaxpr
        yield x, []


DYN, CONST, CLEAN = 2, 1, 0   # depends on an argument / a foldable constant / iota-literal arithmetic


def constant_expressions(closed_jaxpr, limit: int = LIMIT) -> list[tuple[str, str, int]]:
  """(primitive, type, bytes) of every foldable constant value over `limit` bytes (see the module docstring)."""
  found = []

  def walk(jaxpr, consts, in_status):
    status = dict(zip(jaxpr.invars, in_status))
    for v, c in zip(jaxpr.constvars, consts):
      status[v] = CONST
      if _nbytes(v.aval) > limit:
        found.append(("closed-over array", str(v.aval), _nbytes(v.aval)))
    get = lambda v: status.get(v, CLEAN) if not hasattr(v, "val") else CLEAN   # literals are CLEAN
    for eqn in jaxpr.eqns:
      ins = [get(v) for v in eqn.invars]
      agg = max(ins, default=CLEAN)
      if eqn.primitive.name in _KEY_PRIMITIVES and agg != DYN:
        agg = CONST                                            # a PRNG key made from a constant seed
      outs = [agg] * len(eqn.outvars)
      for sub, sub_consts in _sub_jaxprs(eqn.params):
        n = len(sub.invars)
        sub_in = ins if n == len(ins) else ins[1:] if n == len(ins) - 1 else [agg] * n
        sub_out = walk(sub, sub_consts, sub_in)
        if len(sub_out) == len(outs):
          outs = sub_out
      for v, s in zip(eqn.outvars, outs):
        status[v] = s
        if s == CONST and _nbytes(v.aval) > limit:
          found.append((eqn.primitive.name, str(v.aval), _nbytes(v.aval)))
    return [get(v) for v in jaxpr.outvars]

  walk(closed_jaxpr.jaxpr, list(closed_jaxpr.consts), [DYN] * len(closed_jaxpr.jaxpr.invars))
  return found


def big_constants(traced) -> list:
  """Everything over LIMIT that `traced` (a `jax.jit(...).trace(...)`) would bake in as a constant."""
  literals = [c for c in literal_constants(traced.lower().as_text()) if c[1] > LIMIT]
  return literals + constant_expressions(traced.jaxpr)


def _opt():
  return ml_collections.ConfigDict(dict(lr=3e-4, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1,
                                        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0))


@pytest.fixture(scope="module")
def big():
  """The 135M preset in bf16 (the accelerator setting), its optimizer, abstract state and shardings."""
  cfg = dataclasses.replace(M.PRESETS["llamalogue_135m"], dtype="bfloat16")
  tx, _ = step.make_optimizer(_opt(), 1000)
  mesh = sharding.make_mesh(-1, 1)
  layout = step.pretrain_layout(cfg, tx, mesh, jax.random.key(0))
  return cfg, tx, mesh, layout.target, layout.shardings


def _key_struct():
  return jax.ShapeDtypeStruct((), jax.random.key(0).dtype)


def _batch_struct(batch: int, seq: int, leading: tuple = ()):
  return {"inputs": jax.ShapeDtypeStruct(leading + (batch, seq), jnp.int32),
          "targets": jax.ShapeDtypeStruct(leading + (batch, seq), jnp.int32),
          "loss_mask": jax.ShapeDtypeStruct(leading + (batch, seq), jnp.float32)}


def test_old_init_with_a_closed_over_seed_is_caught(big):
  """The control: the init train.py used (`jax.jit(lambda: init_state(params_fn(), tx))`, int seed)."""
  cfg, tx, *_ = big
  traced = jax.jit(lambda: step.init_state(step.init_params(cfg, 42)[1], tx)).trace()
  assert not [c for c in literal_constants(traced.lower().as_text()) if c[1] > LIMIT]   # the text looks clean
  found = constant_expressions(traced.jaxpr)
  sizes = {c[2] for c in found}
  assert 8_465 * 1024 * 4 in sizes                             # the embedding table and the head
  assert 1024 * 1024 * 4 in sizes                              # every attention projection


def test_closed_over_weights_are_caught():
  """The control for data: a weight closed over instead of passed is a literal constant in the text."""
  w = jnp.asarray(np.random.RandomState(0).standard_normal((600, 600)), jnp.float32)   # 1.4 MB
  traced = jax.jit(lambda x: x @ w).trace(jax.ShapeDtypeStruct((4, 600), jnp.float32))
  assert ("tensor<600x600xf32>", 600 * 600 * 4) in literal_constants(traced.lower().as_text())
  assert [c[0] for c in constant_expressions(traced.jaxpr)] == ["closed-over array"]
  passed = jax.jit(lambda x, w: x @ w).trace(jax.ShapeDtypeStruct((4, 600), jnp.float32),
                                             jax.ShapeDtypeStruct((600, 600), jnp.float32))
  assert big_constants(passed) == []


def test_init_takes_its_key(big):
  cfg, tx, mesh, abstract, shardings = big
  traced = step.pretrain_layout(cfg, tx, mesh, jax.random.key(0)).jitted.trace(_key_struct())
  assert big_constants(traced) == []
  assert jax.tree.map(lambda a: (a.shape, a.dtype), traced.out_info) == \
      jax.tree.map(lambda a: (a.shape, a.dtype), abstract)


def test_fine_tune_init_takes_the_loaded_params(big):
  """DPO's and PPO's state builders (step.state_layout) take the base model's params as an argument."""
  from rl import ppo
  cfg, tx, mesh, abstract, _ = big
  params = abstract["params"]
  dpo = step.state_layout(lambda p: step.init_state(p, tx), mesh, params)
  assert big_constants(dpo.jitted.trace(params)) == []
  pcfg = ppo.PPOConfig()
  ptx, _ = ppo.make_optimizer(pcfg)
  make = lambda p, k: ppo.init_state(p, ppo.init_value_head(cfg.hidden_size, k), ptx, pcfg)
  layout = step.state_layout(make, mesh, params, jax.random.key(1))
  assert big_constants(layout.jitted.trace(params, _key_struct())) == []
  assert set(layout.target) == {"params", "opt_state", "step", "kl_coef"}


@pytest.mark.parametrize("kernels", ["cpu", "accelerator"])
@pytest.mark.parametrize("batch,seq", [(64, 128), (32, 512)])
def test_train_step_has_no_constants(big, batch, seq, kernels, monkeypatch):
  monkeypatch.setenv("LLAMALOGUE_KERNELS", kernels)
  cfg, tx, mesh, abstract, shardings = big
  graphdef = M.abstract_model(cfg)[0]
  train = step.jit_train_step(step.lm_loss(graphdef), tx, mesh, shardings)
  assert big_constants(train.trace(abstract, _batch_struct(batch, seq, (1,)))) == []


def test_eval_loss_has_no_constants(big):
  cfg, _, mesh, abstract, shardings = big
  graphdef = M.abstract_model(cfg)[0]
  eval_loss = step.jit_eval_loss(step.lm_loss(graphdef), mesh, shardings["params"])
  assert big_constants(eval_loss.trace(abstract["params"], _batch_struct(64, 128))) == []


def test_scorer_takes_its_data(tmp_path):
  """The scorer's jitted statistics (full rows and shared prefixes) close over nothing: params,
  tokens and the beginning-of-word mask are arguments."""
  from evaluation import scoring, testing
  tok = testing.make_tokenizer(tmp_path / "tok")
  model = testing.make_model(len(tok), hidden=256, intermediate=512)   # a 1.6 MB head: over the limit
  scorer = scoring.Scorer.from_model(model, tok, convention="study")
  assert scorer._bow_arg is not None
  toks = jax.ShapeDtypeStruct((8, 16), jnp.int32)
  assert big_constants(scorer._stats.trace(scorer.params, toks, scorer._bow_arg)) == []
  if scorer.share_prefix:
    args = (jax.ShapeDtypeStruct((8, 48), jnp.int32), jax.ShapeDtypeStruct((8,), jnp.int32),
            jax.ShapeDtypeStruct((8, 2, 8), jnp.int32), jax.ShapeDtypeStruct((8,), jnp.int32))
    assert big_constants(scorer._group_stats.trace(scorer.params, *args, scorer._bow_arg)) == []


def test_init_train_state_equals_init_params():
  """The jitted, key-taking init gives the eager init's parameters, on the given shardings."""
  cfg = dataclasses.replace(M.PRESETS["tiny"], num_layers=1, vocab_size=96, hidden_size=64, intermediate_size=128)
  tx, _ = step.make_optimizer(_opt(), 10)
  mesh = sharding.make_mesh(-1, 1)
  layout = step.pretrain_layout(cfg, tx, mesh, jax.random.key(5))
  state = layout.init()
  _, eager = step.init_params(cfg, 5)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(state["params"]), jax.tree.leaves(eager)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8, err_msg=jax.tree_util.keystr(path))
  assert not np.allclose(step.pretrain_layout(cfg, tx, mesh, jax.random.key(6)).init()["params"]["embed_tokens"],
                         state["params"]["embed_tokens"])
  assert int(state["step"]) == 0
  assert jax.tree.all(jax.tree.map(lambda x, s: x.sharding == s, state, layout.shardings))
