"""Test setup: 8 simulated CPU devices (set before jax is imported) and the repo on sys.path."""

import os
import pathlib
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# One persistent XLA compilation cache for the whole session, shared by the xdist workers and every
# `main.py` the tests start (they inherit the environment): the end-to-end tests launch ~100 tiny runs of
# the same few programs, and each would compile them again (measured: a tiny 4-step pre-training 18-20 s
# without, 13 s with; final params bit-identical). Set by the first process (xdist's controller), so its
# workers see the same directory; a fresh directory per session, so no run reads another's entries.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="llamalogue-tests-xla-cache-")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  # A size limit turns on jax's file lock around every read and write: processes that compile the same
  # program at once (a 2-process job, two workers) never read a half-written entry.
  os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))
  _OWN_CACHE = os.environ["JAX_COMPILATION_CACHE_DIR"]

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))


# The longest modules first: with `-n 2 --dist loadfile` (pytest.ini) each module runs whole in one worker,
# so starting the long ones first keeps the two workers busy to the end.
LONG_FIRST = ("test_study.py", "test_multihost.py", "test_faults.py", "test_ppo_run.py", "test_dpo.py",
              "test_train.py", "test_evaluate.py", "test_teacher.py", "test_ops.py")


def pytest_collection_modifyitems(session, config, items):
  rank = {name: i for i, name in enumerate(LONG_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(LONG_FIRST)))


def pytest_unconfigure(config):
  if globals().get("_OWN_CACHE") and not hasattr(config, "workerinput"):   # the process that made it
    import shutil
    shutil.rmtree(_OWN_CACHE, ignore_errors=True)
