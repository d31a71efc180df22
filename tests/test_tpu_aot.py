"""The tiny model's pre-training, DPO and PPO steps compile ahead of time for a TPU v5e-4 (v5e:2x2)
on this CPU machine, fit its HBM, and hold nothing a TPU step must not: no host callback or
transfer, no constant over 1 MiB (tests/test_compile.py's check, on the TPU-compiled HLO).

Needs libtpu kept apart (llamalogue/aot.py; .ci/run installs it); skipped without it.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llamalogue import aot
from llamalogue import model as M
from llamalogue import sharding

pytestmark = pytest.mark.skipif(aot.libtpu_path() is None,
                                reason=f"no TPU compiler: libtpu is not installed ({aot.install_command()})")

TINY = dataclasses.replace(M.PRESETS["tiny"], dtype="bfloat16")


@pytest.fixture(scope="module")
def mesh():
  """A v5e:2x2 mesh; the environment libtpu reads is set for this module only (subprocesses of
  later tests must not see TPU_LIBRARY_PATH)."""
  saved = dict(os.environ)
  assert aot.enable() is None
  try:
    devices = aot.topology("v5e:2x2").devices
    assert len(devices) == 4 and devices[0].platform == "tpu"
    yield sharding.make_mesh(-1, 1, devices=devices)
  finally:
    os.environ.clear()
    os.environ.update(saved)


def _check(entry):
  c = aot.compile_entry(entry.fn, entry.args, entry.kwargs)
  assert c.problems == [], f"{entry.name}: {c.problems}"
  assert 0 < c.argument_bytes and c.peak_bytes < aot.CHIPS["v5e"].hbm_bytes, entry.name
  return c


def test_tiny_pretrain_step_compiles_for_v5e(mesh):
  from benchmarks import tpu_aot
  c = _check(tpu_aot.train_entry(TINY, mesh, 8, 64))
  # the state is donated: its outputs reuse the arguments' buffers
  assert c.alias_bytes >= 0.9 * M.count_params(TINY) * 4 * 3


def test_tiny_dpo_step_compiles_for_v5e(mesh):
  from benchmarks import tpu_aot
  _check(tpu_aot.dpo_entry(TINY, mesh, pairs=4, length=32))


def test_tiny_ppo_steps_compile_for_v5e(mesh):
  from benchmarks import tpu_aot
  _check(tpu_aot.ppo_score_entry(TINY, mesh, length=32))
  _check(tpu_aot.ppo_update_entry(TINY, mesh, length=32))


def test_hlo_checks_catch_callbacks_and_constants(mesh):
  """The controls: a host callback and a closed-over 4 MiB weight are found in the TPU HLO (the TPU
  compiler stores the weight as a 2 MiB bf16 constant: matmuls default to bf16 inputs there)."""
  x = jax.ShapeDtypeStruct((8, 1024), jnp.float32, sharding=sharding.batch_sharding(mesh))
  w = jnp.asarray(np.random.RandomState(0).standard_normal((1024, 1024)), jnp.float32)

  def with_callback(x):
    jax.debug.callback(lambda v: None, x.sum())
    return x * 2

  found = aot.compile_entry(jax.jit(with_callback), (x,)).problems
  assert any("host callback" in p or "host transfer" in p for p in found), found
  found = aot.compile_entry(jax.jit(lambda x: x @ w), (x,)).problems
  assert any(p.startswith("constant") and "[1024,1024]" in p for p in found), found
  assert aot.compile_entry(jax.jit(lambda x, w: x @ w),
                           (x, jax.ShapeDtypeStruct((1024, 1024), jnp.float32,
                                                    sharding=sharding.replicated(mesh)))).problems == []
