"""Synthetic DPO pairs: chosen = a teacher LM's reply playing a young child, prompt and rejected unchanged.

  python main.py --config=configs/synthetic_pairs.py --config.pairs=NATURAL_PAIRS --workdir=DIR
  python main.py --config=configs/synthetic_pairs.py:tiny --workdir=DIR     # 4 pairs, SmolLM2, CPU, offline

NATURAL_PAIRS: any pair file DPO reads (rl/pairs.py `load_pairs`; default: the study's naturalistic
set). The study's settings (configs/base.py `reply_settings("synthetic")`, STUDY.md §5, the
authors' generate_dpo_pref_from_file.py): one reply per turn, temperature 0.7, top-p 0.9, <= 30 new
tokens, stop at a newline / "Mother:" / "Child:", the first utterance, lower-cased, tagged `*CHI: `.
Writes DIR/synthetic_pairs.json (or .jsonl, as the input) and the reply cache DIR/teacher_replies/
(resumable, as configs/teacher_replies.py).
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  tiny = base.variant(arg, "configs/synthetic_pairs.py") == "tiny"
  c = base.teacher("synthetic_pairs", "synthetic")
  c.pairs = "data:communicative_baby/dpo_dataset/huggingface_dpo_format.json"
  c.max_pairs = 4 if tiny else 0   # 0 = every pair
  return c
