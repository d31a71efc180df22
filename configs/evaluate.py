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


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "evaluate"
  c.init_from = ""
  c.tokenizer = ""               # "": the tokenizer saved beside the model
  c.dtype = "float32"
  # "all" or comma-separated: dialogue_word, dialogue_token, dialogue_heldout, zorro, blimp,
  # blimp_filtered, supplement, ewok, entity_tracking, wug, reading, lexical_decision.
  c.tasks = "all"
  c.max_items_per_task = 0       # 0 = every item; else spread over sub-tasks (reading: >= 200 rows)
  c.convention = "study"         # study (minicons sum + BOW correction) | babylm2025 (plain span sum)
  c.lowercase = "auto"           # auto: lower-case BLiMP and Zorro under `study`, as its scripts did | yes | no
  c.heldout_pairs = ""           # JSONL of {prompt, chosen, rejected} for task dialogue_heldout (`data:` allowed)
  c.reference_model = "llamalogue"  # the study's row (STUDY.md §7) to print beside ours
  c.trajectory = False
  c.compare_to = ""
  c.reuse = True                 # skip a checkpoint whose results.json has the same settings
  c.batch_tokens = 2048          # padded tokens per forward pass (2 CPU cores: 1-4k is best)
  c.pad_multiple = 8             # pad lengths to a multiple of this (one compile per length bucket)
  c.min_shared_prefix = 48       # candidates sharing this many prefix tokens run the prefix once
  if arg == "tiny":
    c.max_items_per_task = 40
  elif arg not in (None, ""):
    raise ValueError(f"configs/evaluate.py: unknown variant {arg!r} (use :tiny or nothing)")
  return c
