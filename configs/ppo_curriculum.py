"""PPO with a reward curriculum (STUDY.md §8.1): rewards take turns by training step, exploration and imitation alternating.

  python main.py --config=configs/ppo_curriculum.py --config.init_from=runs/pretrain --workdir=runs/ppo_curriculum
  python main.py --config=configs/ppo_curriculum.py:tiny --config.init_from=runs/tiny --workdir=runs/ppo_curriculum_tiny  # CPU, offline
  python main.py --config=configs/ppo_curriculum.py --config.reward.curriculum=llm_score:50,bleu:50 ...  # any phases

`reward.curriculum` is phases `name:steps`, cycled over the global step: "confidence:25,semsim:25"
trains steps 0-24 on confidence, 25-49 on semsim, 50-74 on confidence again, ... The phase is a
function of the step alone, so a resumed run continues the schedule exactly. "Exploration" phases
reward any sensible reply of the child's own (llm_score, confidence), "imitation" phases reward
closeness to the teacher's reply (bleu, semsim). Each reward is built once; bleu, semsim and
confidence share the teacher and its replies. With `reward.curriculum_scale` (default) each phase's
reward is mapped to [0, 1] by its known range (rl/rewards.py RANGES), so the value head sees no jump
in scale at a phase change; False keeps raw rewards. PPO settings are the study's default ones
(batch 16, mini-batch 4, lr 1.41e-5, adaptive KL from 0.2), not the confidence run's.
Produces what configs/ppo_semsim.py does (DIR/checkpoints, DIR/tb and DIR/metrics.jsonl with trl's
names, DIR/samples.jsonl, DIR/ppo_reward.png, DIR/eval/comparison.md), plus `env/reward_phase` each
step (the index of the step's reward in the curriculum, in order of first appearance) and
summary.json's `reward.rewards`, each reward's counters.
"""

from configs import base

# Explore (confidence: any reply the teacher finds likely), then imitate (semsim: the teacher's meaning), one
# teacher and its replies for both; 25 steps (400 prompts) a phase, 275 cycles in the 13,750-step epoch (untuned).
CURRICULUM = "confidence:25,semsim:25"


def get_config(arg: str | None = None):
  tiny = base.variant(arg, "configs/ppo_curriculum.py") == "tiny"
  c = base.ppo("curriculum", tiny=tiny)
  c.reward.curriculum = "confidence:2,semsim:2" if tiny else CURRICULUM  # tiny: 4 steps, one switch
  return c
