"""What two JAX processes cost over one: the tiny pre-training step as 2 processes x 1 CPU device against
1 process x 2 CPU devices, at the same global batch, in one run.

Both are the same program on a 2-device ('data', 'fsdp') mesh: the project's train step
(llamalogue/step.py, the tiny preset, global batch 16 x 64 tokens, the :tiny pre-training shape),
each process feeding its half of the batch (`jax.make_array_from_process_local_data`). The 2-process
job adds what a multi-host job adds: gradients all-reduced between processes (gloo over loopback
here), the coordinator, and per-process input. Runs alternate (1-process, 2-process, ...) so both see
the same machine load; each reports the median step time after warm-up steps.

  python benchmarks/multihost_overhead.py [--steps=20] [--reps=5]

Last line: ratio=<2-process step time / 1-process step time> ours=<2-process s> baseline=<1-process s> unit=s
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def worker(args) -> None:
  """One process of a job: times the train step, process 0 prints the median as JSON."""
  sys.path.insert(0, str(ROOT))
  import jax
  import ml_collections
  import numpy as np
  from llamalogue import distributed, runtime, sharding, step
  from llamalogue import model as M
  runtime.keep_freed_memory()
  if args.processes > 1:
    cfg = distributed.default_config()
    cfg.coordinator, cfg.num_processes, cfg.process_id = f"127.0.0.1:{args.port}", args.processes, args.process_id
    distributed.initialize(cfg)
  mcfg = M.PRESETS["tiny"]
  opt = ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1, b1=0.9,
                                       b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0))
  tx, _ = step.make_optimizer(opt, 1000)
  mesh = sharding.make_mesh(-1, 1)
  layout = step.pretrain_layout(mcfg, tx, mesh, jax.random.key(0))
  state = layout.init()
  train = step.jit_train_step(step.lm_loss(M.abstract_model(mcfg)[0]), tx, mesh, layout.shardings)
  batch_sharding = sharding.batch_sharding(mesh, leading_dims=1)
  rows = args.batch // jax.process_count()
  rs = np.random.RandomState(jax.process_index())
  toks = rs.randint(0, mcfg.vocab_size, (1, rows, args.seq + 1)).astype(np.int32)
  local = {"inputs": toks[..., :-1], "targets": toks[..., 1:], "loss_mask": np.ones((1, rows, args.seq), np.float32)}
  batch = {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in local.items()}
  times = []
  for i in range(args.warmup + args.steps):
    t0 = time.perf_counter()
    state, metrics = train(state, batch)
    jax.block_until_ready(metrics["loss"])
    if i >= args.warmup:
      times.append(time.perf_counter() - t0)
  if args.processes > 1:
    distributed.finished()          # this process is done: its peers' watchdogs must not take its exit for a loss
  if jax.process_index() == 0:
    print(json.dumps({"median_s": float(np.median(times)), "devices": jax.device_count(),
                      "processes": jax.process_count()}), flush=True)


def job(processes: int, devices_per_process: int, args) -> dict:
  """Runs one job of `processes` processes and returns process 0's timing."""
  sys.path.insert(0, str(ROOT))
  from llamalogue.launch import free_port
  port = free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
  procs = [subprocess.Popen([sys.executable, __file__, "--worker", f"--processes={processes}", f"--process_id={i}",
                             f"--port={port}", f"--steps={args.steps}", f"--warmup={args.warmup}",
                             f"--batch={args.batch}", f"--seq={args.seq}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(processes)]
  outs = [p.communicate(timeout=1800) for p in procs]
  for p, (out, err) in zip(procs, outs):
    if p.returncode:
      raise SystemExit(f"error: a benchmark process failed ({p.returncode}): {err.strip().splitlines()[-1:]}")
  return json.loads([l for l in outs[0][0].splitlines() if l.startswith("{")][-1])


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  ap.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
  ap.add_argument("--process_id", type=int, default=0, help=argparse.SUPPRESS)
  ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--warmup", type=int, default=3)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--seq", type=int, default=64)
  args = ap.parse_args()
  if args.worker:
    return worker(args)
  one, two = [], []
  for _ in range(args.reps):
    one.append(job(1, 2, args)["median_s"])
    two.append(job(2, 1, args)["median_s"])
    print(f"1 process x 2 devices: {one[-1] * 1e3:.1f} ms/step; 2 processes x 1 device: {two[-1] * 1e3:.1f} ms/step",
          flush=True)
  a, b = statistics.median(two), statistics.median(one)
  print(f"tiny pre-training step, global batch {args.batch} x {args.seq}: median of {args.steps} steps a job, "
        f"median over {args.reps} jobs each")
  print(f"ratio={a / b:.3f} ours={a:.4f} baseline={b:.4f} unit=s")


if __name__ == "__main__":
  main()
