"""DPO on naturalistic pairs (STUDY.md §5): chosen = the child's real reply, rejected = a random
length-matched child utterance (the first 18,000 rows of the study's word-matched release).

  python main.py --config=configs/dpo_natural.py --config.init_from=runs/pretrain --workdir=runs/dpo_natural
  python main.py --config=configs/dpo_natural.py:tiny --config.init_from=runs/tiny --workdir=runs/dpo_natural_tiny   # CPU, ~1 min

The study's DPO settings and outputs: configs/base.py `dpo` (the one source for both DPO runs).
`--config.pairs=heldout_a` builds the pairs from the base's own held-out split instead.
"""

from configs import base


def get_config(arg: str | None = None):
  tiny = base.variant(arg, "configs/dpo_natural.py") == "tiny"
  return base.dpo("data:communicative_baby/dpo_dataset/huggingface_dpo_format.json", tiny=tiny)
