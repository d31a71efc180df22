"""PPO with the semsim reward (STUDY.md §6): cosine similarity of all-MiniLM-L6-v2 embeddings of the child's reply and one teacher reply.

  python main.py --config=configs/ppo_semsim.py --config.init_from=runs/pretrain --workdir=runs/ppo_semsim
  python main.py --config=configs/ppo_semsim.py:tiny --config.init_from=runs/tiny --workdir=runs/ppo_semsim_tiny  # CPU, offline

The study's PPO settings (trl 0.8.6), the offline teacher / judge / embedder and the outputs:
configs/base.py `ppo` (the one source for every PPO run).
"""

from configs import base


def get_config(arg: str | None = None):
  tiny = base.variant(arg, "configs/ppo_semsim.py") == "tiny"
  return base.ppo("semsim", tiny=tiny)
