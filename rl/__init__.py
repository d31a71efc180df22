"""Post-training of llamalogue: DPO (naturalistic / synthetic pairs) and PPO (four rewards).

Planned modules (DESIGN.md): dpo.py, ppo.py, rewards.py, teacher.py, pairs.py. They are not
implemented yet; `main.py` offers the modes `dpo` and `ppo` only once they exist.
The shared pieces they will build on are ready: llamalogue/step.py (a jitted, sharded step
for any `loss_fn(params, batch) -> (loss_sum, count)`), llamalogue/hf.py (teacher import),
and the held-out splits written by the data pipeline (DIR/data/heldout_{a,b}_dialogues.jsonl).
"""
