"""PPO with the bleu reward (STUDY.md §6): smoothed unigram BLEU (NLTK) of the child's reply against one teacher reply to the same turn.

  python main.py --config=configs/ppo_bleu.py --config.init_from=runs/pretrain --workdir=runs/ppo_bleu
  python main.py --config=configs/ppo_bleu.py:tiny --config.init_from=runs/tiny --workdir=runs/ppo_bleu_tiny  # CPU, offline

The study's PPO settings (trl 0.8.6), the offline teacher / judge / embedder and the outputs:
configs/base.py `ppo` (the one source for every PPO run).
"""

from configs import base


def get_config(arg: str | None = None):
  tiny = base.variant(arg, "configs/ppo_bleu.py") == "tiny"
  return base.ppo("bleu", tiny=tiny)
