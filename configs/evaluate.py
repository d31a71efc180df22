"""Evaluation: dialogue minimal pairs, BLiMP, supplement, Zorro, EWoK, entity tracking, wug, reading.

  python main.py --config=configs/evaluate.py --config.init_from=X --workdir=DIR
  python main.py --config=configs/evaluate.py:tiny --config.init_from=X --workdir=DIR     # a few items per task
  python main.py --config=configs/evaluate.py --config.init_from=RUN --config.trajectory=True --workdir=DIR

X is one of our checkpoints, a Hugging Face model directory or `hf:<repo>`. Writes
DIR/eval/<checkpoint-name>/results.json (scores, conventions, item counts),
predictions.jsonl (per-item scores) and results.md (a table beside the study's
published numbers). With trajectory=True, RUN is a pre-training workdir; every
RUN/checkpoints/words_<N> is evaluated and DIR/eval/<run>/trajectory.{md,json,png}
show accuracy against words seen beside the study's curves. `compare_to` (comma-
separated models, e.g. DPO/PPO outputs) adds rows compared against the base.
"""

import ml_collections

from configs import base
from evaluation.run import default_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = default_config()
  c.distributed = base.distributed()
  if base.variant(arg, "configs/evaluate.py") == "tiny":
    c.max_items_per_task = 40
  return c
