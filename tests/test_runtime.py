"""runtime.keep_freed_memory: XLA's per-call temporary buffer is reused instead of page-faulted anew."""

import os
import subprocess
import sys
import textwrap

import pytest

import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent

_PROBE = textwrap.dedent("""
    import resource, sys
    from llamalogue import runtime
    applied = runtime.keep_freed_memory()
    import jax, jax.numpy as jnp
    # a temporary of 64 MB inside one jitted call: a (8192 x 2048) float32 read by two matmuls
    def f(x, y, w):
      a = jnp.exp(jnp.outer(x, y))
      return jnp.sum(a @ w) + jnp.sum(a.T @ jnp.ones((8192, 4)))
    f = jax.jit(f)
    x, y, w = jnp.linspace(0.0, 1e-3, 8192), jnp.linspace(0.0, 1e-3, 2048), jnp.ones((2048, 4))
    for _ in range(6):
      f(x, y, w).block_until_ready()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
      f(x, y, w).block_until_ready()
    print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
""")


def _probe(extra_env):
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "LLAMALOGUE_MALLOC")}
  env.update(extra_env, PYTHONPATH=str(ROOT))
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  applied, faults = out.stdout.split()
  return applied == "True", float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_keep_freed_memory_stops_per_call_page_faults():
  applied, faults = _probe({})
  off_applied, off_faults = _probe({"LLAMALOGUE_MALLOC": "system"})
  assert applied and not off_applied
  assert off_faults > 8_000              # the 64 MB temporary is fresh memory every call (16,384 pages)...
  assert faults < 0.5 * off_faults       # ...and with the setting it is reused (usually 0 faults; the
                                         # kernel's own reclaim on this VM sometimes costs a few thousand)
