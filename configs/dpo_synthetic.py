"""DPO on synthetic pairs (STUDY.md §5): chosen = a teacher LLM's reply playing a young child (the study's
released file; configs/synthetic_pairs.py makes one with our teacher), rejected = the same random child reply.

  python main.py --config=configs/dpo_synthetic.py --config.init_from=runs/pretrain --workdir=runs/dpo_synthetic
  python main.py --config=configs/dpo_synthetic.py:tiny --config.init_from=runs/tiny --workdir=runs/dpo_synthetic_tiny   # CPU, ~1 min

The study's DPO settings and outputs: configs/base.py `dpo` (the one source for both DPO runs).
"""

from configs import base


def get_config(arg: str | None = None):
  tiny = base.variant(arg, "configs/dpo_synthetic.py") == "tiny"
  return base.dpo("data:communicative_baby/dpo_dataset/synthetic_dpo_format.json", tiny=tiny)
