"""Compile time of every jitted entry point, lowered from shapes alone (nothing is run).

  python benchmarks/compile_times.py                      # everything below, 135M preset (CPU: ~10 min)
  python benchmarks/compile_times.py --what=train,layers  # a subset
  LLAMALOGUE_KERNELS=accelerator python benchmarks/compile_times.py --dtype=bfloat16   # the GPU graph, on CPU

Entries (seconds of `lower` and of `compile`, each a fresh jax.jit, after one small warm-up compile):
- init: the jitted train-state init, PRNG key as an argument (step.pretrain_layout), and for
  comparison the old init with the seed closed over (`jax.jit(lambda: init_state(...))`);
- train: the train step at 64x128 and 32x512;
- eval: the eval loss at 64x128;
- scorer: the scorer's statistics for the length buckets evaluation/scoring.py plans
  (batch_tokens 2048, as configs/evaluate.py);
- layers: the train step at 64x128 with 4, 8 and 16 layers (the stacked layers' scan is
  unrolled on XLA:CPU, rolled with LLAMALOGUE_LAYERS=scan: does compile time grow with depth?).

For TPU compile times see benchmarks/tpu_aot.py.

Last line: compile_s=<train step 64x128> unit=s
"""

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from llamalogue import model as M
from llamalogue import ops, sharding, step


def _opt():
  return ml_collections.ConfigDict(dict(lr=3e-4, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1,
                                        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0))


def timed(fn, *args) -> dict:
  """Seconds to lower and to compile `fn` (a jax.jit) for these (abstract) arguments."""
  t0 = time.perf_counter()
  lowered = fn.lower(*args)
  t1 = time.perf_counter()
  lowered.compile()
  return {"lower_s": t1 - t0, "compile_s": time.perf_counter() - t1}


def _batch(batch, seq, leading=()):
  return {k: jax.ShapeDtypeStruct(leading + (batch, seq), jnp.float32 if k == "loss_mask" else jnp.int32)
          for k in ("inputs", "targets", "loss_mask")}


def _setup(cfg):
  tx, _ = step.make_optimizer(_opt(), 1000)
  mesh = sharding.make_mesh(-1, 1)
  layout = step.pretrain_layout(cfg, tx, mesh, jax.random.key(0))
  return tx, mesh, layout, layout.target


def train_step_times(cfg, batch, seq) -> dict:
  tx, mesh, layout, state = _setup(cfg)
  train = step.jit_train_step(step.lm_loss(M.abstract_model(cfg)[0]), tx, mesh, layout.shardings)
  return timed(train, state, _batch(batch, seq, (1,)))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--what", default="init,train,eval,scorer,layers")
  p.add_argument("--preset", default="llamalogue_135m")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--json", default="")
  args = p.parse_args()
  what = set(args.what.split(","))
  cfg = dataclasses.replace(M.PRESETS[args.preset], dtype=args.dtype)
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  jax {jax.__version__}  preset "
        f"{args.preset} {args.dtype}  kernels {ops.select_kernels()}", flush=True)
  rows = []
  # One-time costs (XLA's backend, jax's tracing caches) would land on the first entry: pay them here.
  train_step_times(dataclasses.replace(M.PRESETS["tiny"], num_layers=1, dtype=args.dtype), 8, 16)

  def report(name, r):
    rows.append({"entry": name, **r})
    print(f"{name:<40} lower {r['lower_s']:6.1f} s  compile {r['compile_s']:6.1f} s", flush=True)

  if "init" in what:
    tx, _, layout, _ = _setup(cfg)
    report("init (key argument)", timed(layout.jitted, jax.ShapeDtypeStruct((), jax.random.key(0).dtype)))
    report("init (seed closed over: the old init)",
           timed(jax.jit(lambda: step.init_state(step.init_params(cfg, 42)[1], tx), out_shardings=layout.shardings)))
  if "train" in what:
    for batch, seq in ((64, 128), (32, 512)):
      report(f"train step {batch}x{seq}", train_step_times(cfg, batch, seq))
  if "eval" in what:
    _, mesh, layout, state = _setup(cfg)
    eval_loss = step.jit_eval_loss(step.lm_loss(M.abstract_model(cfg)[0]), mesh, layout.shardings["params"])
    report("eval loss 64x128", timed(eval_loss, state["params"], _batch(64, 128)))
  if "scorer" in what:
    from evaluation import scoring
    from evaluation.testing import make_tokenizer
    import tempfile
    tok = make_tokenizer(tempfile.mkdtemp())
    model = nnx.eval_shape(lambda: M.Llama(cfg, rngs=nnx.Rngs(0)))
    scorer = scoring.Scorer.from_model(model, tok, convention="study")
    for pad_len in (16, 24, 32, 48, 64):     # the buckets of the dialogue pairs (about 15-60 tokens)
      bsz = scoring.batch_size_for(pad_len, 2048, scorer.max_batch)
      report(f"scorer bucket {bsz}x{pad_len}",
             timed(scorer._stats, scorer.params, jax.ShapeDtypeStruct((bsz, pad_len), jnp.int32), scorer._bow_arg))
  if "layers" in what:
    for n in (4, 8, 16):
      report(f"train step 64x128, {n} layers", train_step_times(dataclasses.replace(cfg, num_layers=n), 64, 128))
  if args.json:
    from llamalogue.paths import atomic_write
    atomic_write(args.json, json.dumps(rows, indent=2))
  main_row = next((r for r in rows if r["entry"] in ("train step 64x128", "train step 64x128, 16 layers")), None)
  if main_row:
    print(f"compile_s={main_row['compile_s']:.2f} unit=s")


if __name__ == "__main__":
  main()
