"""PPO with the confidence reward (STUDY.md §6): the rank of the teacher's log-probability of the child's reply among its own 10 replies
to the turn, 2·rank − 1. The study ran it with other PPO settings: mini-batch 2, lr 5e-6, `abs` KL
penalty, initial KL coefficient 0.02 (configs/base.py `ppo` applies them for this reward).

  python main.py --config=configs/ppo_confidence.py --config.init_from=runs/pretrain --workdir=runs/ppo_confidence
  python main.py --config=configs/ppo_confidence.py:tiny --config.init_from=runs/tiny --workdir=runs/ppo_confidence_tiny  # CPU, offline

The study's PPO settings (trl 0.8.6), the offline teacher / judge / embedder and the outputs:
configs/base.py `ppo` (the one source for every PPO run).
"""

from configs import base


def get_config(arg: str | None = None):
  tiny = base.variant(arg, "configs/ppo_confidence.py") == "tiny"
  return base.ppo("confidence", tiny=tiny)
