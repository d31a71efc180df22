"""The whole study from one command (STUDY.md §2-7, and §8 as switches).

  python main.py --config=configs/study.py --workdir=runs/study
  python main.py --config=configs/study.py:tiny --workdir=runs/study_tiny      # CPU, offline, ~7 minutes
  python main.py --config=configs/study.py:cpu --workdir=runs/study_cpu        # full CHILDES, tiny model, ~45 minutes
  python main.py --config=configs/study.py --config.stages=pretrain,trajectory --workdir=runs/study

Stages, in order, each in DIR/<stage>: prepare -> pretrain (word-milestone checkpoints) ->
trajectory (every milestone on dialogue MP and Zorro) -> synthetic_pairs (the teacher's replies
as chosen; `synthetic=released` uses the study's file instead) -> dpo_natural, dpo_synthetic ->
teacher_replies (for the BLEU, semantic-similarity and confidence rewards) -> ppo_bleu,
ppo_semsim, ppo_llm_score, ppo_confidence -> [beyond: ppo_curriculum, sweep_<reward>_lr<..>_kl<..>,
prepare_mixed, pretrain_mixed] -> evaluate (the base and every fine-tuned model, same settings).
Each stage's settings are those of its own config file, held here under its name and
overridable per stage: `--config.dpo_natural.train.epochs=3`, `--config.ppo_bleu.ppo.learning_rate=1e-5`;
the data settings are `--config.pretrain.data.*`. Kill it anywhere and rerun: finished stages
are skipped, the interrupted one resumes from its checkpoint (study/run.py).
`--config.seeds=3` runs every fine-tuning stage (dpo_*, ppo_*; not pre-training, not the sweep)
with 3 seeds, DIR/<stage>/seed_<k> with the stage's `seed` + k (k = 0, 1, 2), each its own
fingerprinted, resumable run; the report shows mean ± sd, each seed, and tests pooled over seeds.
Produces DIR/REPORT.md (the study's table with ours beside it, the trajectory, DPO and PPO
curves beside the study's, per-stage wall time, hardware, versions; every accuracy with its item
count and 95% interval, every fine-tuning effect with its paired test), DIR/results.json and
DIR/figures/*.png.
"""

import importlib

import ml_collections

from configs import base, dpo_natural, dpo_synthetic, evaluate, pretrain, synthetic_pairs, teacher_replies
from rl import rewards


PPO_STAGES = tuple(f"ppo_{r}" for r in rewards.NAMES) + ("ppo_curriculum",)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  base.variant(arg, "configs/study.py", allowed=("tiny", "cpu"))
  cpu = arg == "cpu"
  tiny = arg == "tiny"
  arg = None if cpu else arg
  c = ml_collections.ConfigDict()
  c.mode = "study"
  c.distributed = base.distributed()   # the whole study's processes (each stage runs in all of them)
  c.stages = "all"                 # all, or comma-separated stage names (their inputs must be finished)
  c.synthetic = "teacher"          # teacher: synthetic pairs from configs/synthetic_pairs.py | released: the study's file
  c.ppo_prompts = ""               # mother turns for every PPO stage: "" = held-out split B of DIR/prepare/data
  c.seeds = 1                      # > 1: each dpo_*/ppo_* stage once per seed k in DIR/<stage>/seed_<k>, seed + k

  c.pretrain = pretrain.get_config(arg)
  c.trajectory = evaluate.get_config(arg)
  c.trajectory.tasks = "dialogue_word,dialogue_token,zorro"
  c.synthetic_pairs = synthetic_pairs.get_config(arg)
  c.synthetic_pairs.max_pairs = 18_000  # as many as dpo_synthetic trains on (pairs_limit)
  c.dpo_natural = dpo_natural.get_config(arg)
  c.dpo_synthetic = dpo_synthetic.get_config(arg)
  c.teacher_replies = teacher_replies.get_config(arg)
  for name in PPO_STAGES:
    c[name] = importlib.import_module(f"configs.{name}").get_config(arg)
  c.evaluate = evaluate.get_config(arg)

  # Beyond the paper (STUDY.md §8): each switch adds stages, reported in their own section.
  c.beyond = ml_collections.ConfigDict()
  c.beyond.curriculum = False      # stage ppo_curriculum (configs/ppo_curriculum.py): alternating reward phases
  c.beyond.adult_share = -1.0      # >= 0: stages prepare_mixed/pretrain_mixed with this share of adult-adult units
  c.beyond.sweep = ml_collections.ConfigDict()
  c.beyond.sweep.rewards = ""      # e.g. "bleu,semsim": one PPO run per reward x lr x KL init
  c.beyond.sweep.learning_rates = "5e-6,1.41e-5,5e-5"
  c.beyond.sweep.init_kl_coefs = "0.02,0.2"
  c.beyond.sweep.max_steps = 0     # 0: the reward's own run length
  c.beyond.sweep.eval_tasks = "dialogue_word,dialogue_token"

  if cpu:
    # The `tiny` preset on the full CHILDES data with cut-down step counts: about 45 minutes on 2 CPU cores.
    c.synthetic = "released"
    c.pretrain.model.preset = "tiny"
    c.pretrain.train.batch_size = 32
    c.pretrain.train.epochs = 1
    c.pretrain.train.max_steps = 1000
    c.pretrain.train.milestones = "250000,500000,1000000,1750000"
    c.pretrain.train.checkpoint_every = 200
    c.pretrain.train.eval_every = 250
    c.pretrain.optimizer.lr = 1e-3
    c.trajectory.max_items_per_task = 3000
    for name in ("dpo_natural", "dpo_synthetic"):
      c[name].train.max_steps = 150
      c[name].pairs_limit = 4800
    c.teacher_replies.n = 4
    for name in PPO_STAGES:
      c[name].max_prompts = 160
      c[name].train.max_steps = 20
      c[name].train.checkpoint_every = 10
    c.evaluate.tasks = "dialogue_word,dialogue_token,zorro,blimp_filtered"
    c.evaluate.max_items_per_task = 3000
  if tiny:
    # ~100 k words, 32 pre-training steps, a few fine-tuning steps each: every stage runs, fast.
    c.pretrain.train.max_steps = 32
    c.pretrain.train.milestones = "2500,5000,10000"   # ~390 words a step
    c.pretrain.train.eval_every = 0
    c.pretrain.train.checkpoint_every = 16
    c.synthetic_pairs.max_pairs = 16
    for name in ("dpo_natural", "dpo_synthetic"):
      c[name].pairs_limit = 32
    for name in PPO_STAGES:
      c[name].max_prompts = 16      # one batch, so the teacher writes replies for 16 turns only
    c.teacher_replies.n = c.ppo_bleu.reward.replies_settings.n
    c.teacher_replies.max_new_tokens = c.ppo_bleu.reward.replies_settings.max_new_tokens
    c.evaluate.tasks = "dialogue_word,dialogue_token,zorro,blimp_filtered"
    c.beyond.curriculum = True
    c.beyond.adult_share = 0.3
    c.beyond.sweep.rewards = "bleu"
    c.beyond.sweep.learning_rates = "1.41e-5,1e-4"
    c.beyond.sweep.init_kl_coefs = "0.2"
    c.beyond.sweep.max_steps = 2
  return c
