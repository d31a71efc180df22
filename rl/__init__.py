"""Post-training of llamalogue: DPO (naturalistic / synthetic pairs) and PPO (four rewards).

dpo.py (the pure DPO loss, its step and the `dpo` mode), ppo.py (PPO numerics and the jitted update),
ppo_run.py (the `ppo` mode: rollouts, rewards, the loop), finetune.py (what both modes share: the base
model, the run scaffold, the base-vs-result evaluation), rewards.py, teacher.py, pairs.py, curves.py.
"""
