"""PPO with the llm_score reward (STUDY.md §6): an instruct LLM's 0-5 rating of the reply's fit and fluency (the first number of its greedy
answer; 0 if none). `--config.reward.judge_scoring=expected` reads a graded rating from its digit probabilities.

  python main.py --config=configs/ppo_llm_score.py --config.init_from=runs/pretrain --workdir=runs/ppo_llm_score
  python main.py --config=configs/ppo_llm_score.py:tiny --config.init_from=runs/tiny --workdir=runs/ppo_llm_score_tiny  # CPU, offline

The study's PPO settings (trl 0.8.6), the offline teacher / judge / embedder and the outputs:
configs/base.py `ppo` (the one source for every PPO run).
"""

from configs import base


def get_config(arg: str | None = None):
  tiny = base.variant(arg, "configs/ppo_llm_score.py") == "tiny"
  return base.ppo("llm_score", tiny=tiny)
