"""Tokens/s of our full train step vs Hugging Face LlamaForCausalLM + torch AdamW, same shape, same run.

- CPU: the baseline is eager PyTorch in float32 (`--dtype=float32`).
- CUDA (a CUDA build of PyTorch present): the baseline is `torch.compile`d LlamaForCausalLM
  (sdpa attention) under bf16 autocast when `--dtype=bfloat16`, with fused AdamW, on the
  same GPU and shape.

The two sides' steps alternate in one timing loop (ours, theirs, ours, ...) and each side's
median step is reported: on a shared host whose speed drifts during a run, both see the same
machine. Also reports our achieved FLOP/s (6N + 12·L·H·Q·T per token) against a measured matmul
ceiling, the compile time of each side, and on known accelerators the MFU of both and the
projected wall time of the study's 100 M-word pre-training (10 epochs of 10 M words) at
the measured rate; tokens per word come from `--prepared DIR/stats.json` (a `prepare`
output), else the value measured on all of CHILDES (TOKENS_PER_WORD).

  python benchmarks/train_throughput.py                 # tiny and 135M shapes (CPU: ~10 min)
  python benchmarks/train_throughput.py --shape=tiny --floor   # + the sum of the step's matmuls, timed alone
  python benchmarks/train_throughput.py --shape=135m --dtype=bfloat16 --batch=32 --seq=512   # GPU

Last line: ratio=<ours/baseline> ours=<tokens/s> baseline=<tokens/s> unit=tokens/s
(for several shapes: the shape with the lowest ratio). `--json=PATH` writes every number.
"""

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# PyTorch runs in this process too: JAX must not take 75% of the GPU's memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llamalogue import model as M
from llamalogue import runtime, sharding, step
from llamalogue.loop import measured_matmul_flops, table_peak_flops

# Tokens per lexical word of the pre-training split, measured on all of ../shared/data/childes
# (`configs/prepare.py`: 10,835,742 train tokens / 4,893,039 words; speaker tags, punctuation and
# EOS are tokens but not words).
TOKENS_PER_WORD = 2.21
STUDY_WORDS = 100e6   # 10 epochs x 10 M words (STUDY.md §2)

SHAPES = {
    "tiny": (dataclasses.replace(M.PRESETS["tiny"], vocab_size=8192), 16, 128),
    "135m": (M.PRESETS["llamalogue_135m"], 8, 128),
}


def _opt():
  return ml_collections.ConfigDict(dict(lr=3e-4, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1,
                                        b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0))


def tokens_per_word(prepared: str) -> tuple[float, str]:
  """(tokens per word of the pre-training split, where the number comes from)."""
  if prepared:
    from llamalogue.data.prepare import use_prepared
    path = use_prepared(prepared) / "stats.json"
    stats = json.loads(path.read_text())
    return stats["tokens"]["train"] / max(stats["words"]["pretrain"], 1), str(path)
  return TOKENS_PER_WORD, "TOKENS_PER_WORD (all of CHILDES)"


def ours(cfg, batch, seq) -> dict:
  """Our jitted train step (the init jitted with its key as an argument), compiled: {"step": one timed
  step (blocks until done), "compile_s", "init_s", "loss": the latest loss}."""
  mesh = sharding.make_mesh(-1, 1)
  tx, _ = step.make_optimizer(_opt(), 1000)
  layout = step.pretrain_layout(cfg, tx, mesh, jax.random.key(0))
  t0 = time.perf_counter()
  state = jax.block_until_ready(layout.init())
  init_s = time.perf_counter() - t0
  train = step.jit_train_step(step.lm_loss(M.abstract_model(cfg)[0]), tx, mesh, layout.shardings)
  rs = np.random.RandomState(0)
  toks = rs.randint(0, cfg.vocab_size, (1, batch, seq + 1)).astype(np.int32)
  b = {"inputs": toks[..., :-1], "targets": toks[..., 1:], "loss_mask": np.ones((1, batch, seq), np.float32)}
  b = jax.device_put(b, sharding.batch_sharding(mesh, 1))
  t0 = time.perf_counter()
  train = train.lower(state, b).compile()
  out = {"compile_s": time.perf_counter() - t0, "init_s": init_s, "state": state}

  def one():
    out["state"], m = train(out["state"], b)
    out["loss"] = float(jax.block_until_ready(m["loss"]))

  out["step"] = one
  return out


def interleaved(sides: dict, steps: int, warmup: int) -> dict:
  """Median seconds per step of each side, their steps alternating (A B A B ...), so that a change
  in the machine's speed during the run (a shared host) reaches both sides alike."""
  for _ in range(warmup):
    for one in sides.values():
      one()
  times = {name: [] for name in sides}
  for _ in range(steps):
    for name, one in sides.items():
      t0 = time.perf_counter()
      one()
      times[name].append(time.perf_counter() - t0)
  return {name: float(np.median(ts)) for name, ts in times.items()}


def _median_seconds(fn, *args, reps=7):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def matmul_floor(cfg, batch, seq):
  """Seconds of one train step's matmuls, each timed alone with XLA (forward, input and kernel gradients).

  Covers every projection, the output head and the attention products; leaves out all
  elementwise work, reductions and the optimizer. A step cannot beat this sum unless
  XLA runs its matmuls faster in the step than alone.
  """
  t, d, dt = batch * seq, cfg.hidden_size, jnp.dtype(cfg.dtype)
  h, g, k = cfg.num_heads * cfg.dim_per_head, cfg.num_kv_heads * cfg.dim_per_head, cfg.dim_per_head
  linears = ([(d, h), (d, g), (d, g), (h, d), (d, cfg.intermediate_size), (d, cfg.intermediate_size),
              (cfg.intermediate_size, d)] * cfg.num_layers + [(d, cfg.vocab_size)])
  fwd = jax.jit(lambda x, w: x @ w)
  dx = jax.jit(lambda dy, w: dy @ w.T)
  dw = jax.jit(lambda x, dy: jax.lax.dot_general(x, dy, (((0,), (0,)), ((), ()))))
  cache, total = {}, 0.0
  for d_in, d_out in linears:
    if (d_in, d_out) not in cache:
      x, w, dy = jnp.ones((t, d_in), dt), jnp.ones((d_in, d_out), dt), jnp.ones((t, d_out), dt)
      cache[d_in, d_out] = _median_seconds(fwd, x, w) + _median_seconds(dx, dy, w) + _median_seconds(dw, x, dy)
    total += cache[d_in, d_out]
  # attention, heads grouped as in ops.rope_attention: [B*G, R*L, K] x [B*G, L, K]
  n, m = batch * cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads * seq
  q, kv, p = jnp.ones((n, m, k), dt), jnp.ones((n, seq, k), dt), jnp.ones((n, m, seq), dt)
  scores = jax.jit(lambda q, kv: jnp.einsum("nmd,nld->nml", q, kv))
  mix = jax.jit(lambda p, kv: jnp.einsum("nml,nld->nmd", p, kv))
  back = jax.jit(lambda p, q: jnp.einsum("nml,nmd->nld", p, q))
  per_layer = 2 * _median_seconds(scores, q, kv) + 2 * _median_seconds(mix, p, kv) + 2 * _median_seconds(back, p, q)
  return total + cfg.num_layers * per_layer


def torch_baseline(cfg, batch, seq) -> dict:
  """HF LlamaForCausalLM + AdamW: eager fp32 on CPU; on CUDA torch.compile, sdpa, fused AdamW,
  bf16 autocast when cfg.dtype is bfloat16. {"step": one timed step, "compile_s": the first step's
  seconds on CUDA, "name", "loss"}."""
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM
  cuda = torch.cuda.is_available()
  device = "cuda" if cuda else "cpu"
  torch.manual_seed(0)
  hf = LlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                   num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                   num_key_value_heads=cfg.num_kv_heads, tie_word_embeddings=cfg.tie_embeddings,
                   rms_norm_eps=cfg.rms_norm_eps, max_position_embeddings=max(seq, 512))
  if cuda:
    hf._attn_implementation = "sdpa"
  model = LlamaForCausalLM(hf).to(device).train()
  opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=cuda)
  x = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
  forward = torch.compile(model) if cuda else model
  autocast = cuda and cfg.dtype == "bfloat16"
  sync = torch.cuda.synchronize if cuda else (lambda: None)

  def one():
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
      out = forward(input_ids=x, labels=x)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return out.loss

  t0 = time.perf_counter()
  one()
  sync()
  first_s = time.perf_counter() - t0
  name = (f"torch.compile HF LlamaForCausalLM sdpa{' bf16 autocast' if autocast else ''} + fused AdamW (CUDA)"
          if cuda else "eager HF LlamaForCausalLM fp32 + AdamW (CPU)")
  out = {"compile_s": first_s if cuda else None, "name": name}

  def timed():
    out["loss"] = float(one().detach())      # .item() waits for the device
    sync()

  out["step"] = timed
  return out


def _torch_has_cuda() -> bool:
  try:
    import torch
  except ImportError:
    return False
  return torch.cuda.is_available()


def _write(path: str, records: list) -> None:
  if path:
    from llamalogue.paths import atomic_write
    atomic_write(path, json.dumps(records, indent=2))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--shape", default="both", choices=["tiny", "135m", "both"])
  p.add_argument("--steps", type=int, default=0, help="timed steps of each side (0: 20 tiny, 6 for 135m on CPU, 20 on accelerators)")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--batch", type=int, default=0)
  p.add_argument("--seq", type=int, default=0)
  p.add_argument("--no-baseline", action="store_true", help="skip PyTorch (report ours and MFU only)")
  p.add_argument("--floor", action="store_true", help="also time the step's matmuls one by one (their sum bounds the step)")
  p.add_argument("--prepared", default="", help="a `prepare` data directory: tokens per word for the projection")
  p.add_argument("--json", default="", help="also write every number to this JSON file")
  args = p.parse_args()
  # The process-level malloc setting main.py applies (llamalogue/runtime.py); PyTorch runs in
  # this same process, so it gets it too. LLAMALOGUE_MALLOC=system measures without it.
  tuned = runtime.keep_freed_memory()
  shapes = ["tiny", "135m"] if args.shape == "both" else [args.shape]
  accel = jax.default_backend() != "cpu"
  ceiling = measured_matmul_flops(8192 if accel else 2048, jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32)
  tpw, tpw_source = tokens_per_word(args.prepared)
  from llamalogue import ops
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}  jax {jax.__version__}  kernels "
        f"{ops.select_kernels()}  measured {args.dtype} matmul ceiling {ceiling / 1e9:,.0f} GFLOP/s; "
        f"malloc keeps freed memory: {tuned}", flush=True)
  results, records = [], []
  for name in shapes:
    cfg, batch, seq = SHAPES[name]
    cfg = dataclasses.replace(cfg, dtype=args.dtype)
    batch, seq = args.batch or batch, args.seq or seq
    steps = args.steps or (20 if accel else 20 if name == "tiny" else 6)
    run_baseline = not args.no_baseline and not (accel and not _torch_has_cuda())
    mine = ours(cfg, batch, seq)
    sides, base, failed = {"ours": mine["step"]}, None, ""
    if run_baseline:
      import torch
      torch.set_num_threads(os.cpu_count())
      try:
        base = torch_baseline(cfg, batch, seq)
        sides["baseline"] = base["step"]
      except Exception as e:  # e.g. torch.compile without a working compiler: keep our numbers, say why
        failed = f"failed: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    seconds = interleaved(sides, steps, warmup=2)
    ours_tps = batch * seq / seconds["ours"]
    fpt = M.flops_per_token(cfg, seq)
    rec = {"shape": name, "params": M.count_params(cfg), "batch": batch, "seq": seq, "dtype": args.dtype,
           "device": jax.devices()[0].device_kind, "ours_tok_s": ours_tps, "ours_compile_s": mine["compile_s"],
           "ours_init_s": mine["init_s"], "ours_loss": mine["loss"], "flops_per_token": fpt,
           "ours_flops_s": ours_tps * fpt, "ceiling_flops_s": ceiling, "timing": "steps alternating with the baseline's",
           "kernels": ops.select_kernels(), "tokens_per_word": tpw, "tokens_per_word_source": tpw_source}
    line = (f"[{name}] params {M.count_params(cfg) / 1e6:.1f}M batch {batch}x{seq} {args.dtype}: ours "
            f"{ours_tps:,.0f} tok/s = {ours_tps * fpt / 1e9:,.1f} GFLOP/s "
            f"({100 * ours_tps * fpt / ceiling:.0f}% of the measured ceiling); compile {mine['compile_s']:.1f} s, "
            f"init {mine['init_s']:.1f} s")
    peak = table_peak_flops()
    if peak:
      rec["peak_flops_s"] = peak
      rec["ours_mfu"] = ours_tps * fpt / peak
      rec["projected_study_hours"] = STUDY_WORDS * tpw / ours_tps / 3600
      line += (f", MFU {100 * rec['ours_mfu']:.1f}% of {peak / 1e12:.0f} TFLOP/s; projected "
               f"{STUDY_WORDS / 1e6:.0f}M-word pre-training ({tpw:.2f} tok/word): {rec['projected_study_hours']:.2f} h")
    records.append(rec)
    _write(args.json, records)
    print(line, flush=True)
    line = f"[{name}] baseline:"
    if not args.no_baseline and not run_baseline:
      rec["baseline"] = "skipped: this PyTorch has no CUDA (an fp32 CPU baseline of an accelerator run means nothing)"
      line += " " + rec["baseline"]
    if failed:
      rec["baseline"] = failed
      line += " " + failed
    if base is not None and not failed:
      base_tps = batch * seq / seconds["baseline"]
      rec.update(baseline=base["name"], baseline_tok_s=base_tps, baseline_compile_s=base["compile_s"],
                 baseline_loss=base["loss"], ratio=ours_tps / base_tps)
      line += f" {base['name']} {base_tps:,.0f} tok/s"
      if base["compile_s"] is not None:
        line += f" (first step {base['compile_s']:.1f} s)"
      if peak:
        rec["baseline_mfu"] = base_tps * fpt / peak
        line += f", MFU {100 * rec['baseline_mfu']:.1f}%"
      line += f"; ratio {ours_tps / base_tps:.2f} (medians of {steps} steps each, the two sides alternating)"
      results.append((ours_tps / base_tps, ours_tps, base_tps))
    else:
      results.append((float("nan"), ours_tps, float("nan")))
    if args.floor:
      floor = matmul_floor(cfg, batch, seq)
      step_s = batch * seq / ours_tps
      rec["matmul_floor_s"] = floor
      line += (f"\n  [{name}] matmul floor (each matmul of the step timed alone, summed): {floor * 1e3:,.0f} ms = "
               f"{batch * seq / floor:,.0f} tok/s at most; our step {step_s * 1e3:,.0f} ms = {step_s / floor:.2f}x the floor")
      if "baseline" in seconds:
        line += f"; PyTorch step {batch * seq / base_tps * 1e3:,.0f} ms"
    if line != f"[{name}] baseline:":
      print(line, flush=True)
    _write(args.json, records)
  ratio, o, b = min(results, key=lambda r: r[0] if r[0] == r[0] else float("inf"))
  print(f"ratio={ratio:.3f} ours={o:.1f} baseline={b:.1f} unit=tokens/s")


if __name__ == "__main__":
  main()
