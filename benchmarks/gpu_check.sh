#!/usr/bin/env bash
# The accelerator check of issue 13, one command (about 6 minutes on one H100):
#
#   benchmarks/gpu_check.sh DATA_DIR [OUT]
#
# DATA_DIR: a `prepare` output made on any machine (`python main.py --config=configs/prepare.py
#   --workdir=W` gives W/data; W works too). $LLAMALOGUE_DATA must hold
#   communicative_baby/dpo_dataset/ (the dialogue minimal pairs); CHILDES itself is not needed.
# OUT (default runs/gpu_check): bench_*.json/.log, pretrain/, eval/, and the summary
#   gpu_check.json + gpu_check.md.
#
# Stages, each under its own time limit (seconds; env overrides), each recorded even when it fails:
#   1. benchmarks/train_throughput.py: ours vs torch.compile'd HF LlamaForCausalLM (bf16 autocast,
#      sdpa, fused AdamW) on the 135M preset in bf16 at 32x512 and 64x128    (GPU_CHECK_BENCH_S=85 each)
#   2. 300 pre-training steps of the 135M preset on DATA_DIR (configs/pretrain.py, 64x128,
#      --config.data.prepared=DATA_DIR)                                       (GPU_CHECK_PRETRAIN_S=110)
#   3. dialogue minimal pairs (dialogue_word, dialogue_token) of its last checkpoint (GPU_CHECK_EVAL_S=75)
# A stage cut off by its limit is recorded as `timeout` (what it wrote so far is kept): a train
# step that compiles for minutes shows up as exactly that.
#
# GPU_CHECK_COMPILE=1 adds a 4th stage (outside the 6 minutes, GPU_CHECK_COMPILE_S=300):
#   benchmarks/compile_times.py --what=train,layers: train-step compile time at 64x128 and 32x512
#   and with 4, 8, 16 layers (does a lax.scan over layers pay?).
# GPU_CHECK_TINY=1: the same stages reduced for a CPU (tiny preset, a few steps, 40 items per
# task), to prove the script end to end without an accelerator.
set -uo pipefail

DATA=${1:?usage: benchmarks/gpu_check.sh DATA_DIR [OUT]}
OUT=${2:-runs/gpu_check}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DATA=$(cd "$DATA" && pwd) || { echo "error: DATA_DIR $1 does not exist" >&2; exit 2; }
cd "$ROOT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false TRANSFORMERS_VERBOSITY=error
TINY=${GPU_CHECK_TINY:-0}

if [[ "$TINY" == 1 ]]; then
  BENCH_SHAPES=("8 64" "4 128")
  BENCH_ARGS=(--shape=tiny --dtype=float32 --steps=2)
  PRETRAIN_ARGS=(--config=configs/pretrain.py:tiny --config.train.max_steps=6 --config.train.batch_size=8
                 --config.train.log_every=2 --config.train.eval_every=6 --config.train.eval_batches=1
                 --config.train.checkpoint_every=6 --config.model.num_layers=2)
  EVAL_ARGS=(--config=configs/evaluate.py:tiny)
  LIMITS=(${GPU_CHECK_BENCH_S:-600} ${GPU_CHECK_PRETRAIN_S:-600} ${GPU_CHECK_EVAL_S:-600})
else
  BENCH_SHAPES=("32 512" "64 128")
  BENCH_ARGS=(--shape=135m --dtype=bfloat16)
  PRETRAIN_ARGS=(--config=configs/pretrain.py --config.train.max_steps=300 --config.train.log_every=50
                 --config.train.eval_every=300 --config.train.checkpoint_every=300)
  EVAL_ARGS=(--config=configs/evaluate.py)
  LIMITS=(${GPU_CHECK_BENCH_S:-85} ${GPU_CHECK_PRETRAIN_S:-110} ${GPU_CHECK_EVAL_S:-75})
fi

STAGES="$OUT/stages.tsv"
: > "$STAGES"
stage() {  # stage NAME LIMIT_S CMD...: runs CMD under a time limit, logs to OUT/NAME.log, records rc and seconds
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" >> "$STAGES"
  tail -n 3 "$OUT/$name.log"
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
}

for shape in "${BENCH_SHAPES[@]}"; do
  read -r b s <<< "$shape"
  stage "bench_${b}x${s}" "${LIMITS[0]}" "$PY" benchmarks/train_throughput.py "${BENCH_ARGS[@]}" --batch="$b" --seq="$s" \
    --prepared="$DATA" --json="$OUT/bench_${b}x${s}.json"
done
rm -rf "$OUT/pretrain" "$OUT/eval"
stage pretrain "${LIMITS[1]}" "$PY" main.py "${PRETRAIN_ARGS[@]}" --workdir="$OUT/pretrain" \
  --config.data.prepared="$DATA" --config.data.childes=/nonexistent/childes --config.train.milestones=1e15
stage eval "${LIMITS[2]}" "$PY" main.py "${EVAL_ARGS[@]}" --config.init_from="$OUT/pretrain" \
  --config.tasks=dialogue_word,dialogue_token --workdir="$OUT/eval"

if [[ "${GPU_CHECK_COMPILE:-0}" == 1 ]]; then
  if [[ "$TINY" == 1 ]]; then COMPILE_ARGS=(--preset=tiny --dtype=float32); else COMPILE_ARGS=(--dtype=bfloat16); fi
  stage compile_times "${GPU_CHECK_COMPILE_S:-300}" "$PY" benchmarks/compile_times.py "${COMPILE_ARGS[@]}" \
    --what=train,layers --json="$OUT/compile_times.json"
fi

"$PY" - "$OUT" "$DATA" "$TINY" <<'EOF'
"""Collects the stages into OUT/gpu_check.json and OUT/gpu_check.md."""
import glob, json, os, pathlib, sys
out, data, tiny = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
load = lambda p: json.loads(pathlib.Path(p).read_text()) if pathlib.Path(p).exists() else None
stages = [dict(zip(("name", "rc", "seconds", "limit_s"), l.split("\t")))
          for l in (out / "stages.tsv").read_text().splitlines() if l.strip()]
for s in stages:
  s["rc"], s["seconds"], s["limit_s"] = int(s["rc"]), int(s["seconds"]), int(s["limit_s"])
  s["status"] = "ok" if s["rc"] == 0 else "timeout" if s["rc"] in (124, 137) else "failed"
  if s["rc"]:
    log = (out / f"{s['name']}.log").read_text(errors="replace").strip().splitlines()
    s["last_line"] = log[-1] if log else ""
bench = [r for p in sorted(glob.glob(str(out / "bench_*.json"))) for r in (load(p) or [])]
metrics = [json.loads(l) for l in (out / "pretrain" / "metrics.jsonl").read_text().splitlines()
           if l.strip()] if (out / "pretrain" / "metrics.jsonl").exists() else []
perf = [m for m in metrics if "perf/tokens_per_s" in m]
pretrain = {"summary": load(out / "pretrain" / "summary.json"),
            "first_loss": perf[0].get("train/loss") if perf else None,
            "last": perf[-1] if perf else None,
            "tokens_per_s_after_first_log": (sum(m["perf/tokens_per_s"] for m in perf[1:]) / len(perf[1:])
                                             if len(perf) > 1 else None)}
evals = {}
for p in glob.glob(str(out / "eval" / "eval" / "*" / "results.json")):
  r = load(p)
  evals = {n: {"score": t.get("score"), "items": sum(v["items"] for v in t.get("subtasks", {}).values())}
           for n, t in r["tasks"].items()}
  evals["seconds"] = r.get("seconds")
try:
  import jax
  device = f"{jax.devices()[0].device_kind} x{jax.device_count()} (jax {jax.__version__})"
except Exception as e:  # the summary must be written whatever broke
  device = f"unknown ({e})"
compile_times = load(out / "compile_times.json") if any(s["name"] == "compile_times" for s in stages) else None
summary = {"device": device, "tiny": tiny, "data": data, "stages": stages, "throughput": bench,
           "pretrain": pretrain, "eval": evals, "compile_times": compile_times}
(out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")

f = lambda x, spec=",.0f": "-" if x is None else format(x, spec)
pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"
md = [f"# GPU check{' (tiny, CPU form)' if tiny else ''}", "", f"- device: {device}", f"- data: {data}", "",
      "| stage | status | seconds | limit |", "|---|---|---:|---:|"]
md += [f"| {s['name']} | {s['status']}{' (exit ' + str(s['rc']) + ')' if s['rc'] else ''} | {s['seconds']} | "
       f"{s['limit_s']} |" for s in stages]
md += ["", "| shape | ours tok/s | ours compile s | ours MFU | baseline tok/s | baseline first step s | "
       "baseline MFU | ratio | projected 100M words h |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
for r in bench:
  md.append(f"| {r['shape']} {r['batch']}x{r['seq']} {r['dtype']} | {f(r['ours_tok_s'])} | {f(r['ours_compile_s'], '.1f')} | "
            f"{pct(r.get('ours_mfu'))} | {f(r.get('baseline_tok_s'))} | {f(r.get('baseline_compile_s'), '.1f')} | "
            f"{pct(r.get('baseline_mfu'))} | {f(r.get('ratio'), '.2f')} | {f(r.get('projected_study_hours'), '.2f')} |")
if bench:
  md.append(f"\nbaseline: {bench[0].get('baseline', '-')}; tokens/word {bench[0]['tokens_per_word']:.2f} "
            f"({bench[0]['tokens_per_word_source']})")
last, s = pretrain["last"] or {}, pretrain["summary"] or {}
md += ["", f"- pre-training: {s.get('steps', '-')} steps, {f(s.get('words_seen'))} words; loss "
       f"{f(pretrain['first_loss'], '.3f')} (first log) -> {f(last.get('train/loss'), '.3f')}; eval loss "
       f"{f(s.get('final_eval_loss'), '.3f')}; {f(pretrain['tokens_per_s_after_first_log'])} tok/s after the first "
       f"log, MFU {pct(last.get('perf/mfu'))} at the last"]
md += [f"- {n}: accuracy {pct(v['score'])} over {v['items']} pairs" for n, v in evals.items() if n != "seconds"]
if compile_times:
  md += ["", "| jitted entry | lower s | compile s |", "|---|---:|---:|"]
  md += [f"| {r['entry']} | {r['lower_s']:.1f} | {r['compile_s']:.1f} |" for r in compile_times]
(out / "gpu_check.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
print(f"summary: {out / 'gpu_check.json'} {out / 'gpu_check.md'}")
EOF
