"""Every jitted entry point of the study, compiled ahead of time for real TPU slices on this CPU machine.

  python benchmarks/tpu_aot.py                                   # all entries x v4-8, v5e-8, v5p-8, v6e-8, v5e-32
  python benchmarks/tpu_aot.py --topologies=v5e:2x4 --what=train,dpo --out=runs/aot

Needs libtpu, kept apart from the main environment (llamalogue/aot.py says why):
  pip install --no-deps --target ~/.cache/llamalogue/libtpu libtpu==0.0.42.1

Entries (`--what`), at the shapes the study's configs use, bf16 compute, float32 params and
optimizer state, data-parallel over every chip (`config.mesh` data=-1, fsdp=1):
- train: the 135M pre-training step at 64x128 (configs/pretrain.py) and 32x512;
- eval: the eval loss at 64x128;
- dpo: the DPO step, 32 pairs in 32 packed rows of 128 tokens (prompt, chosen, rejected), reference cached
  (an upper bound: a run lays ~4 of the study's pairs in a 128-token row, rl/dpo.py `auto_pairs_per_row`);
- ppo: score_rollout and the update (batch 16, mini-batch 4, 4 epochs; rows of 64 = a 32-token
  prompt bucket + 20 new tokens, padded to 16);
- sample: the sampler's decode loop (16 prompts of 32 tokens, 20 new tokens, stop tokens and sequences);
- scorer: the scorer's statistics for the dialogue-pair length buckets 16..64 (batch_tokens 2048);
- teacher: Llama-3.2-3B's shape (random weights, shapes only), the scorer's forward at 32x64,
  parameters split over the chips (fsdp), on v5e-8 only.

For each: lower and compile seconds (and the compile's CPU seconds, steadier on a shared
machine), per-chip HBM (arguments, temporaries, outputs) against the chip's capacity, analytic
FLOPs per step (cost_analysis() counts a loop body once), a roofline step time
max(FLOPs / peak, bytes / HBM bandwidth) per chip, and the TPU HLO checks (no host
callbacks or transfers, no constant over 1 MiB). Then the study's projected wall time on
v5e-8 at the roofline. Writes OUT/tpu_aot.json and OUT/tpu_aot.md.

Last line: compile_s=<the 135M pre-training step 64x128 for v5e-8> unit=s
"""

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp

from llamalogue import aot
from llamalogue import model as M
from llamalogue import sharding, step

TOPOLOGIES = ("v4:2x2x1", "v5e:2x4", "v5p:2x2x1", "v6e:2x4", "v5e:4x8")
WHAT = ("train", "eval", "dpo", "ppo", "sample", "scorer", "teacher")
TOKENS_PER_WORD = 2.21          # benchmarks/train_throughput.py: all of CHILDES
STUDY = {"pretrain_words": 10 * 10e6, "dpo_runs": 2, "dpo_steps": 5_630, "ppo_runs": 4, "ppo_steps": 13_750}

# Llama-3.2-3B (the study's teacher): its config.json's shape; rope scaling left out (shapes only).
LLAMA_3_2_3B = M.LlamaConfig(vocab_size=128_256, hidden_size=3072, num_layers=28, num_heads=24, num_kv_heads=8,
                             intermediate_size=8192, head_dim=128, rope_theta=500_000.0, rms_norm_eps=1e-5,
                             tie_embeddings=True, max_seq_len=131_072)


@dataclasses.dataclass
class Entry:
  """A jitted function with abstract arguments, and what one call costs per chip outside the compiler's view.

  `flops`: analytic FLOPs of one call (all chips); `loop_bytes`: bytes read again by the call's
  loops beyond one pass over its buffers (decode steps re-read the weights, PPO's mini-batches
  re-read and rewrite params and optimizer state), all chips together.
  """
  name: str
  fn: object
  args: tuple
  flops: float
  kwargs: dict = dataclasses.field(default_factory=dict)
  loop_bytes: float = 0.0
  rows: int = 0                  # the batch the call splits over the chips (must divide)
  note: str = ""


# ---------------------------------------------------------------------------- FLOPs

def forward_flops(cfg, tokens: int, context: int) -> float:
  """2N per token (N: matmul parameters) + 4·L·H·Q·context (scores and weighted sum)."""
  return tokens * (M.flops_per_token(cfg, context) / 3.0)


def train_flops(cfg, tokens: int, seq: int) -> float:
  return tokens * M.flops_per_token(cfg, seq)


def param_bytes(cfg, dtype_bytes: int = 4) -> float:
  return M.count_params(cfg) * dtype_bytes


# ---------------------------------------------------------------------------- entries

def _opt(config_module, arg=None):
  import importlib
  return importlib.import_module(f"configs.{config_module}").get_config(arg).optimizer


def _state(cfg, tx, mesh):
  """The pre-training state as the run builds it (step.pretrain_layout): abstract, on `mesh`, and its shardings."""
  layout = step.pretrain_layout(cfg, tx, mesh, jax.random.key(0))
  return aot.on_mesh(layout.target, layout.shardings), layout.shardings


def _lm_batch(mesh, b, s, leading=(1,)):
  sh = sharding.batch_sharding(mesh, len(leading))
  return {k: jax.ShapeDtypeStruct(leading + (b, s), jnp.float32 if k == "loss_mask" else jnp.int32, sharding=sh)
          for k in ("inputs", "targets", "loss_mask")}


def train_entry(cfg, mesh, b, s, name=None) -> Entry:
  tx, _ = step.make_optimizer(_opt("pretrain"), 10_000)
  state, shardings = _state(cfg, tx, mesh)
  fn = step.jit_train_step(step.lm_loss(M.abstract_model(cfg)[0]), tx, mesh, shardings)
  return Entry(name or f"train {b}x{s}", fn, (state, _lm_batch(mesh, b, s)), train_flops(cfg, b * s, s), rows=b)


def eval_entry(cfg, mesh, b, s) -> Entry:
  tx, _ = step.make_optimizer(_opt("pretrain"), 10_000)
  state, shardings = _state(cfg, tx, mesh)
  fn = step.jit_eval_loss(step.lm_loss(M.abstract_model(cfg)[0]), mesh, shardings["params"])
  return Entry(f"eval loss {b}x{s}", fn, (state["params"], _lm_batch(mesh, b, s, ())), forward_flops(cfg, b * s, s),
               rows=b)


def dpo_entry(cfg, mesh, pairs=32, length=128) -> Entry:
  from rl import dpo
  tx, _ = step.make_optimizer(_opt("dpo_natural"), 5_630)
  graphdef, abstract_params = M.abstract_model(cfg)
  abstract = jax.eval_shape(lambda p: step.init_state(p, tx), M.pure_dict(abstract_params))   # step.state_layout's
  shardings = sharding.tree_shardings(abstract, mesh)
  loss_fn = dpo.make_loss_fn(graphdef, beta=0.1, loss_type="sigmoid", label_smoothing=0.0)
  fn = step.jit_train_step(loss_fn, tx, mesh, shardings)
  sh = sharding.batch_sharding(mesh, 1)
  batch = {k: jax.ShapeDtypeStruct((1, pairs, length), jnp.float32 if k.endswith("mask") else jnp.int32, sharding=sh)
           for k in dpo.PACKED}       # one packed row per pair: prompt once, then chosen and rejected replies
  batch.update({k: jax.ShapeDtypeStruct((1, pairs), jnp.float32, sharding=sh)
                for k in ("ref_chosen", "ref_rejected", "valid")})
  batch["pair_slot"] = jax.ShapeDtypeStruct((1, pairs), jnp.int32, sharding=sh)
  return Entry(f"dpo step {pairs} pairs packed x{length}", fn, (aot.on_mesh(abstract, shardings), batch),
               train_flops(cfg, pairs * length, length), rows=pairs)


def _ppo_parts(cfg, mesh):
  from rl import ppo
  pcfg = ppo.PPOConfig()
  graphdef, abstract_params = M.abstract_model(cfg)
  ref = M.pure_dict(abstract_params)
  tx, _ = ppo.make_optimizer(pcfg)
  abstract = jax.eval_shape(lambda k: ppo.init_state(ref, ppo.init_value_head(cfg.hidden_size, k), tx, pcfg),
                            jax.random.key(0))
  return ppo, pcfg, graphdef, ref, tx, abstract, sharding.tree_shardings(abstract, mesh)


def ppo_score_entry(cfg, mesh, length=64) -> Entry:
  ppo, pcfg, graphdef, ref, tx, abstract, shardings = _ppo_parts(cfg, mesh)
  ref_sh = sharding.tree_shardings(ref, mesh)
  fn = ppo.jit_score_rollout(graphdef, pcfg, mesh, shardings["params"], ref_sh)
  bs = sharding.batch_sharding(mesh)
  rows = (jax.ShapeDtypeStruct((pcfg.batch_size, length), jnp.int32, sharding=bs),
          jax.ShapeDtypeStruct((pcfg.batch_size, length), jnp.float32, sharding=bs))
  args = (aot.on_mesh(abstract["params"], shardings["params"]), aot.on_mesh(ref, ref_sh)) + rows
  return Entry(f"ppo score_rollout {pcfg.batch_size}x{length}", fn, args,
               2 * forward_flops(cfg, pcfg.batch_size * length, length), rows=pcfg.batch_size)


def ppo_update_entry(cfg, mesh, length=64) -> Entry:
  ppo, pcfg, graphdef, ref, tx, abstract, shardings = _ppo_parts(cfg, mesh)
  fn = ppo.jit_ppo_update(graphdef, pcfg, tx, mesh, shardings)
  bs = sharding.batch_sharding(mesh)
  b = pcfg.batch_size
  rollout = {k: jax.ShapeDtypeStruct((b, length), jnp.int32 if k == "tokens" else jnp.float32, sharding=bs)
             for k in ("tokens", "masks", "logprobs", "ref_logprobs", "values", "kls")}
  rollout["scores"] = jax.ShapeDtypeStruct((b,), jnp.float32, sharding=bs)
  rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=sharding.replicated(mesh))
  trips = pcfg.ppo_epochs * b // pcfg.mini_batch_size
  # each mini-batch reads params, gradients, Adam's two moments and writes params and moments: 7 x 4N bytes
  loop = (trips - 1) * 7 * param_bytes(cfg) * len(mesh.devices.flat)
  return Entry(f"ppo update {b} rows, mini-batch {pcfg.mini_batch_size} x {pcfg.ppo_epochs} epochs", fn,
               (aot.on_mesh(abstract, shardings), rollout, rng),
               pcfg.ppo_epochs * train_flops(cfg, b * length, length), loop_bytes=loop, rows=b)


def sample_entry(cfg, mesh, prompts=16, prompt_len=32, new=20) -> Entry:
  from llamalogue import sampling
  graphdef, abstract_params = M.abstract_model(cfg)
  rep, bs = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  params = aot.on_mesh(M.pure_dict(abstract_params), sharding.tree_shardings(M.pure_dict(abstract_params), mesh))
  settings = {k: jax.ShapeDtypeStruct((), dt, sharding=rep) for k, dt in
              (("temperature", jnp.float32), ("top_p", jnp.float32), ("top_k", jnp.int32), ("greedy", jnp.bool_),
               ("eos_id", jnp.int32), ("pad_id", jnp.int32))}
  args = (params, graphdef, jax.ShapeDtypeStruct((prompts, prompt_len), jnp.int32, sharding=bs),
          jax.ShapeDtypeStruct((prompts,), jnp.int32, sharding=bs),
          jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=rep),
          jax.ShapeDtypeStruct((cfg.vocab_size,), jnp.bool_, sharding=rep),
          jax.ShapeDtypeStruct((4, 3), jnp.int32, sharding=rep),
          jax.ShapeDtypeStruct((prompts,), jnp.int32, sharding=bs), settings)      # row ids: each row's key
  ctx = prompt_len + new
  flops = forward_flops(cfg, prompts * prompt_len, prompt_len) + new * forward_flops(cfg, prompts, ctx)
  chips = len(mesh.devices.flat)
  cache = 2 * cfg.num_layers * prompts * cfg.num_kv_heads * ctx * cfg.dim_per_head * 2    # bf16 k and v
  loop = new * (param_bytes(cfg, 2) * chips + cache)        # every decode step reads the weights and the cache
  return Entry(f"sampler {prompts}x{prompt_len} +{new}", sampling._sample_tokens, args, flops,
               kwargs={"max_new_tokens": new}, loop_bytes=loop, rows=prompts)


def scorer_entries(cfg, mesh, buckets=(16, 24, 32, 48, 64), batch_tokens=2048, tag="scorer") -> list[Entry]:
  from evaluation import scoring
  graphdef, abstract_params = M.abstract_model(cfg)
  pure = M.pure_dict(abstract_params)
  params = aot.on_mesh(pure, sharding.tree_shardings(pure, mesh))
  stats, _ = scoring._compile(graphdef, jit=True)
  out = []
  for pad_len in buckets:
    b = scoring.batch_size_for(pad_len, batch_tokens, 64)
    toks = jax.ShapeDtypeStruct((b, pad_len), jnp.int32, sharding=sharding.batch_sharding(mesh))
    bow = jax.ShapeDtypeStruct((cfg.vocab_size,), jnp.bool_, sharding=sharding.replicated(mesh))
    out.append(Entry(f"{tag} bucket {b}x{pad_len}", stats, (params, toks, bow),
                     forward_flops(cfg, b * pad_len, pad_len), rows=b))
  return out


def build(what: set, slice_name: str, devices) -> list[Entry]:
  """The entries of `what` for one slice (135M bf16; the teacher on v5e-8 only)."""
  cfg = dataclasses.replace(M.PRESETS["llamalogue_135m"], dtype="bfloat16")
  mesh = sharding.make_mesh(-1, 1, devices=devices)
  entries = []
  if "train" in what:
    entries += [train_entry(cfg, mesh, 64, 128), train_entry(cfg, mesh, 32, 512)]
  if "eval" in what:
    entries.append(eval_entry(cfg, mesh, 64, 128))
  if "dpo" in what:
    entries.append(dpo_entry(cfg, mesh))
  if "ppo" in what:
    entries += [ppo_score_entry(cfg, mesh), ppo_update_entry(cfg, mesh)]
  if "sample" in what:
    entries.append(sample_entry(cfg, mesh))
  if "scorer" in what:
    entries += scorer_entries(dataclasses.replace(cfg, dtype="float32"), mesh)   # configs/evaluate.py: float32
  if "teacher" in what and slice_name == "v5e:2x4":
    teacher = dataclasses.replace(LLAMA_3_2_3B, dtype="bfloat16")
    fsdp = sharding.make_mesh(1, -1, devices=devices)
    entries += scorer_entries(teacher, fsdp, buckets=(64,), tag="teacher Llama-3.2-3B")
  return entries


# ---------------------------------------------------------------------------- one row

def measure(entry: Entry, s: aot.Slice, chips: int) -> dict:
  row = {"entry": entry.name, "topology": s.topology, "slice": s.label, "chips": chips}
  if entry.rows % chips:
    row["skipped"] = f"batch {entry.rows} does not split over {chips} chips"
    return row
  try:
    c = aot.compile_entry(entry.fn, entry.args, entry.kwargs)
  except Exception as e:  # a shape that does not compile for this slice: say so, keep going
    row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
    return row
  chip = s.chip
  flops_chip = entry.flops / chips
  bytes_chip = c.argument_bytes + c.output_bytes + 2 * c.temp_bytes + entry.loop_bytes / chips
  t_flops, t_bytes = flops_chip / chip.peak_bf16_flops, bytes_chip / chip.hbm_bytes_per_s
  row.update(lower_s=c.lower_s, compile_s=c.compile_s, compile_cpu_s=c.compile_cpu_s,
             argument_gib=c.argument_bytes / aot.GiB, temp_gib=c.temp_bytes / aot.GiB,
             output_gib=c.output_bytes / aot.GiB, alias_gib=c.alias_bytes / aot.GiB, code_mib=c.code_bytes / 2**20,
             peak_gib=c.peak_bytes / aot.GiB, hbm_gib=chip.hbm_bytes / aot.GiB, fits=c.peak_bytes <= chip.hbm_bytes,
             flops_per_chip=flops_chip, hlo_flops=c.hlo_flops, hlo_bytes=c.hlo_bytes, bytes_per_chip=bytes_chip,
             roofline_ms=1e3 * max(t_flops, t_bytes), bound="compute" if t_flops >= t_bytes else "memory",
             problems=c.problems, note=entry.note)
  return row


def _fmt_row(r: dict) -> str:
  head = f"| {r['entry']} | {r['slice']} ({r['chips']}) |"
  if "skipped" in r or "error" in r:
    return head + f" – | – | {r.get('skipped') or r.get('error')} | – | – | – |"
  hbm = (f"{r['argument_gib']:.2f} / {r['temp_gib']:.2f} / {r['output_gib']:.2f} = {r['peak_gib']:.2f} of "
         f"{r['hbm_gib']:.0f}{'' if r['fits'] else ' **does not fit**'}")
  checks = "ok" if not r["problems"] else "; ".join(r["problems"])
  return head + (f" {r['lower_s']:.1f} | {r['compile_s']:.1f} ({r['compile_cpu_s']:.0f} cpu) | {hbm} | "
                 f"{r['flops_per_chip'] / 1e12:.3f} | {r['roofline_ms']:.2f} ({r['bound']}) | {checks} |")


def projection(rows: list[dict]) -> list[tuple[str, float, float, float]]:
  """(stage, steps, seconds per step, hours) of the study on v5e-8 at the roofline."""
  v5e = {r["entry"]: r for r in rows if r["topology"] == "v5e:2x4" and "roofline_ms" in r}
  get = lambda prefix: next((r["roofline_ms"] / 1e3 for k, r in v5e.items() if k.startswith(prefix)), None)
  out = []
  train = get("train 64x128")
  if train is not None:
    steps = STUDY["pretrain_words"] * TOKENS_PER_WORD / (64 * 128)
    out.append(("pre-training: 10 epochs x 10 M words, 64x128 steps", steps, train, steps * train / 3600))
  dpo = get("dpo step")
  if dpo is not None:
    steps = STUDY["dpo_runs"] * STUDY["dpo_steps"]
    out.append((f"DPO: {STUDY['dpo_runs']} runs x {STUDY['dpo_steps']:,} steps", steps, dpo, steps * dpo / 3600))
  parts = [get("sampler"), get("ppo score_rollout"), get("ppo update")]
  if all(p is not None for p in parts):
    per = sum(parts)
    steps = STUDY["ppo_runs"] * STUDY["ppo_steps"]
    out.append((f"PPO: {STUDY['ppo_runs']} runs x {STUDY['ppo_steps']:,} steps (sample + score + update; rewards "
                "on the host not counted)", steps, per, steps * per / 3600))
  return out


def matrix(rows: list[dict]) -> list[str]:
  """Entries x slices, each cell `compile s (cpu s) · peak GiB · roofline ms`: the table in the README."""
  slices = list(dict.fromkeys((r["topology"], r["slice"]) for r in rows))
  entries = list(dict.fromkeys(r["entry"] for r in rows))
  cell = {(r["entry"], r["topology"]): r for r in rows}
  out = ["| entry | " + " | ".join(f"{label} ({t})" for t, label in slices) + " |",
         "|---|" + "---|" * len(slices)]
  for e in entries:
    parts = []
    for t, _ in slices:
      r = cell.get((e, t))
      if r is None:
        parts.append("")
      elif "compile_s" not in r:
        parts.append("n/a: " + (r.get("skipped") or "error"))
      else:
        flag = "" if r["fits"] else " **OOM**"
        flag += "" if not r["problems"] else " **HLO: " + "; ".join(r["problems"]) + "**"
        parts.append(f"{r['compile_s']:.0f} ({r['compile_cpu_s']:.0f}) · {r['peak_gib']:.2f} · {r['roofline_ms']:.1f}{flag}")
    out.append(f"| {e} | " + " | ".join(parts) + " |")
  return out


def markdown(rows: list[dict], load: str) -> str:
  lines = ["# TPU ahead-of-time compilation of the study's jitted entry points", "",
           f"jax {jax.__version__}, libtpu {aot.LIBTPU_VERSION}, compiled on {platform.node()} "
           f"({os.cpu_count()} CPUs; load before/after: {load}). Params and optimizer state float32, compute "
           "bf16 (the scorer float32, as configs/evaluate.py), data-parallel over every chip; the teacher's "
           "parameters split over the chips (fsdp).", "",
           "| entry | slice (chips) | lower s | compile s | HBM per chip GiB: args / temp / out = peak of capacity "
           "| TFLOP per chip (analytic) | roofline ms | TPU HLO checks |", "|---|---|---|---|---|---|---|---|"]
  lines += [_fmt_row(r) for r in rows]
  lines += ["", "## Summary: compile s (compile CPU s) · peak HBM per chip GiB · roofline ms", ""] + matrix(rows)
  lines += ["", "Roofline: max(analytic FLOPs / peak bf16 FLOP/s, bytes / HBM bandwidth) per chip, a lower bound. "
            "Bytes: every argument read once, every output written once, every temporary written and read once "
            "(memory_analysis), plus what a loop reads again (decode steps: the bf16 weights and the KV cache; PPO "
            "mini-batches: params, gradients and Adam moments). Peak = arguments + temporaries + outputs not "
            "aliased to a donated argument + code. Chips:"]
  lines += [f"- {c.name}: {c.source}" for c in aot.CHIPS.values()]
  proj = projection(rows)
  if proj:
    lines += ["", "## The study on v5e-8 at the roofline", "", "| stage | steps | s per step | hours |",
              "|---|---|---|---|"]
    lines += [f"| {n} | {s:,.0f} | {t:.4f} | {h:.2f} |" for n, s, t, h in proj]
    lines.append(f"| total | | | {sum(p[3] for p in proj):.2f} |")
    lines += ["", f"Pre-training tokens: 100 M words x {TOKENS_PER_WORD} tokens per word (all of CHILDES)."]
  return "\n".join(lines) + "\n"


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--topologies", default=",".join(TOPOLOGIES))
  p.add_argument("--what", default=",".join(WHAT))
  p.add_argument("--out", default="runs/tpu_aot")
  args = p.parse_args()
  what = set(args.what.split(","))
  unknown = what - set(WHAT)
  if unknown:
    sys.exit(f"error: --what: unknown entry {sorted(unknown)[0]!r}; choose from {','.join(WHAT)}")
  reason = aot.enable()
  if reason:
    sys.exit(f"error: {reason}")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  load0 = " ".join(f"{x:.1f}" for x in os.getloadavg())
  rows = []
  from llamalogue import ops
  print(f"jax {jax.__version__}, libtpu at {aot.libtpu_path()}; kernels on TPU: "
        f"{ops.describe_kernels(M.PRESETS['llamalogue_135m'], backend='tpu')}", flush=True)
  for name in args.topologies.split(","):
    s = aot.SLICES.get(name)
    if s is None:
      sys.exit(f"error: --topologies: unknown topology {name!r}; choose from {','.join(aot.SLICES)}")
    devices = aot.topology(name).devices
    for entry in build(what, name, devices):
      row = measure(entry, s, len(devices))
      rows.append(row)
      print(_fmt_row(row), flush=True)
      (out / "tpu_aot.json").write_text(json.dumps(rows, indent=2))
  load = f"{load0} / " + " ".join(f"{x:.1f}" for x in os.getloadavg())
  (out / "tpu_aot.md").write_text(markdown(rows, load))
  (out / "tpu_aot.json").write_text(json.dumps({"load": load, "rows": rows, "projection": projection(rows)},
                                                 indent=2))
  print(f"wrote {out / 'tpu_aot.md'} and {out / 'tpu_aot.json'}")
  main_row = next((r for r in rows if r["topology"] == "v5e:2x4" and r["entry"] == "train 64x128"
                   and "compile_s" in r), None)
  if main_row:
    print(f"compile_s={main_row['compile_s']:.2f} unit=s")


if __name__ == "__main__":
  main()
