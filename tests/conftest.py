"""Test setup: 8 simulated CPU devices (set before jax is imported) and the repo on sys.path."""

import os
import pathlib
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

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
