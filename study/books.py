"""The books of a study run, shared by study/run.py (which keeps them) and study/report.py (which reads
them): DIR/<stage>/STAGE.json per stage, and the names of seed runs.

A fine-tuning stage run with `config.seeds=N > 1` becomes N stages `<stage>/seed_<k>` (k = 0..N-1),
each in DIR/<stage>/seed_<k> with its own STAGE.json; with N = 1 it is the one stage `<stage>`.
"""

import json
import pathlib

from llamalogue import distributed
from llamalogue.paths import atomic_write

STAGE_FILE = "STAGE.json"
SEEDED = ("dpo_", "ppo_")   # stages that run once per seed (the sweep and pre-training run once)


def read_record(stage_dir: pathlib.Path) -> dict | None:
  try:
    return json.loads((stage_dir / STAGE_FILE).read_text())
  except (OSError, ValueError):
    return None


def is_done(stage_dir: pathlib.Path) -> bool:
  rec = read_record(stage_dir)
  return bool(rec and rec.get("status") == "done")


def write_record(stage_dir: pathlib.Path, rec: dict) -> None:
  if not distributed.is_lead():   # every process keeps the same books; process 0 writes them
    return
  stage_dir.mkdir(parents=True, exist_ok=True)
  atomic_write(stage_dir / STAGE_FILE, json.dumps(rec, indent=1, default=str) + "\n")


def seed_stage(stage: str, k: int) -> str:
  """The stage name (and path under DIR) of seed run k of `stage`: `dpo_natural/seed_1`."""
  return f"{stage}/seed_{k}"


def group_of(stage: str) -> str:
  """The stage a seed run belongs to (`dpo_natural/seed_1` -> `dpo_natural`); other names unchanged."""
  return stage.split("/", 1)[0]


def seed_index(stage: str) -> int | None:
  """k of `<stage>/seed_<k>`; None for a stage without seeds."""
  _, _, tail = stage.partition("/")
  return int(tail[len("seed_"):]) if tail.startswith("seed_") else None


def groups(stages: list[str]) -> dict[str, list[str]]:
  """stage -> its runs (itself, or its seed runs in order), in plan order."""
  out: dict[str, list[str]] = {}
  for s in stages:
    out.setdefault(group_of(s), []).append(s)
  return out
