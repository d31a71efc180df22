"""Pre-train llamalogue on CHILDES dialogue triplets (STUDY.md §2-3).

  python main.py --config=configs/pretrain.py --workdir=runs/pretrain
  python main.py --config=configs/pretrain.py:tiny --workdir=runs/tiny     # CPU, a few minutes

Runs the data pipeline first if DIR/data is missing, then trains the 135M model on
~10 M words for 10 epochs (AdamW, warmup + cosine, clipping, bf16 compute on GPU/TPU).
Produces DIR/checkpoints/milestones/words_<N> at 1M ... 10M, 20M ... 100M words,
DIR/checkpoints/latest (resume: rerun the same command), DIR/tb (TensorBoard),
DIR/metrics.jsonl and DIR/summary.json.
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  tiny = base.variant(arg, "configs/pretrain.py") == "tiny"
  c = ml_collections.ConfigDict()
  c.mode = "pretrain"
  c.seed = 42
  c.init_from = ""
  c.data = base.data(tiny)
  c.model = base.model("tiny" if tiny else "llamalogue_135m")
  c.model.dtype = "auto"          # bf16 compute on GPU/TPU, fp32 on CPU
  c.mesh = base.mesh()
  c.distributed = base.distributed()

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 10
  c.train.max_steps = 0           # 0: epochs x steps per epoch
  c.train.batch_size = 16 if tiny else 64   # sequences per optimizer step (global)
  c.train.accum_steps = 1         # micro-batches per step (batch_size must divide)
  c.train.log_every = 10 if tiny else 50
  c.train.eval_every = 100 if tiny else 500
  c.train.eval_batches = 4 if tiny else 20
  c.train.eval_batch_size = 16 if tiny else 64
  c.train.checkpoint_every = 50 if tiny else 500
  c.train.keep_latest = 2
  c.train.milestones = ""         # "": 1/10 ... 10/10 of the budget, then 2x ... epochs x; or "1e6,2e6,..."
  c.train.peak_flops = 0.0        # 0: look the chip up for MFU

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 1e-3 if tiny else 3e-4
  c.optimizer.warmup_steps = 20 if tiny else 200
  c.optimizer.schedule = "cosine"
  c.optimizer.min_lr_ratio = 0.1
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.95
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.1
  c.optimizer.grad_clip = 1.0
  if tiny:
    c.train.epochs = 2
  return c
