"""PPO with the confidence reward (STUDY.md §6): rank of the teacher's log-probability of the child reply among its own 10 replies, 2·rank − 1 (mini-batch 2, lr 5e-6, abs KL, init KL 0.02).

  python main.py --config=configs/ppo_confidence.py --config.init_from=runs/pretrain --workdir=runs/ppo_confidence
  python main.py --config=configs/ppo_confidence.py:tiny --config.init_from=runs/tiny --workdir=runs/ppo_confidence_tiny  # CPU, offline

trl 0.8.6 semantics: batch 16, mini-batch 4, 4 PPO epochs, lr 1.41e-5, adaptive KL (0.2 -> target 6,
horizon 10,000), γ 1, λ 0.95, clip 0.2, vf 0.1; queries `*MOT: <utt> *CHI:` from held-out split B,
≤ 20 new tokens at top-p 0.9. Offline the teacher / judge is SmolLM2-135M-Instruct (packaged GGUF)
and the embedder the packaged all-MiniLM-L6-v2; online set --config.reward.teacher=hf:... (the study:
Llama-3.2-3B; judge OLMo-2-1124-7B-Instruct). Produces DIR/checkpoints (exact resume), DIR/tb and
DIR/metrics.jsonl with trl's names (env/reward_mean, objective/kl, ppo/loss/policy, ...), sample
replies in DIR/samples.jsonl, DIR/ppo_reward.png beside the study's reward log, DIR/eval/comparison.md.
"""

from configs import base


def get_config(arg: str | None = None):
  if arg not in (None, "", "tiny"):
    raise ValueError(f"configs/ppo_confidence.py: unknown variant {arg!r} (use :tiny or nothing)")
  return base.ppo("confidence", tiny=arg == "tiny")
