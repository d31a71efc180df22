"""DPO, natural pairs (STUDY.md §5): chosen = the child's real reply, rejected = a random length-matched child utterance (the first 18,000 rows of the word-matched release).

  python main.py --config=configs/dpo_natural.py --config.init_from=runs/pretrain --workdir=runs/dpo_natural
  python main.py --config=configs/dpo_natural.py:tiny --config.init_from=runs/tiny --workdir=runs/dpo_natural_tiny   # CPU, ~1 min

β 0.1, sigmoid loss, lr 5e-6 decaying linearly to 0 without warmup, effective batch 32, 10 epochs over
the first 18,000 pairs (5,630 steps); the reference is a frozen copy of the initial model, its
log-probabilities computed once and cached (DIR/reference_logps.npz). Produces DIR/checkpoints
(exact resume: rerun the command), DIR/tb, DIR/metrics.jsonl (trl's names: rewards/chosen,
rewards/margins, rewards/accuracies, logps/chosen, ...), DIR/dpo_curves.png beside the study's
logged curves, and DIR/eval/comparison.md: dialogue minimal pairs, Zorro and BLiMP-filtered for
the base and the result. `--config.pairs=heldout_a` builds pairs from the base's own held-out split.
"""

from configs import base


def get_config(arg: str | None = None):
  if arg not in (None, "", "tiny"):
    raise ValueError(f"configs/dpo_natural.py: unknown variant {arg!r} (use :tiny or nothing)")
  return base.dpo("data:communicative_baby/dpo_dataset/huggingface_dpo_format.json", tiny=arg == "tiny")
