"""PPO steps/s on the tiny setup: ours beside trl 0.8.6's PPOTrainer (the study's trainer), by phase.

  python benchmarks/ppo_throughput.py [--steps=8] [--warmup=2] [--block=2] [--cores=N]
                                      [--reward=constant|bleu] [--response=reply|raw] [--no_trl]
  python benchmarks/ppo_throughput.py --quick      # a smoke run: 1 warm-up + 1 timed step a side

The setup: a random Llama of our `tiny` shape (4 layers, 256 wide; a byte-level BPE trained on
the study's pairs), the study's PPO settings (batch 16, mini-batch 4, 4 PPO epochs, <= 20 new
tokens, top-p 0.9, STUDY.md §6), mother turns from the study's released synthetic pairs, on CPU.

Ours: one step of rl/ppo_run.py (`Rollouts`, what `main.py` runs for `mode=ppo`, with its
malloc setting), timed by phase: rollout (sampling + cutting the reply), reward, the
reference/value forward, the update. Theirs: trl 0.8.6 `PPOTrainer.generate` + `step()`
(benchmarks/trl086_ppo.py), in a subprocess of its own environment (trl 0.8.6, transformers
4.46, torch 2.13 CPU), built once in $LLAMALOGUE_CACHE/bench/trl-0.8.6 (default
~/.cache/llamalogue/bench/trl-0.8.6) when it is missing; the build says so in one line.

The comparison, and how it is fair:
  * the same weights: the tiny model is exported (llamalogue/hf.py `export`) and trl loads that
    directory; the same tokenizer files;
  * the same prompts: step j of either side takes the same 16 queries `*MOT: <utt> *CHI:`, as
    token ids from our tokenizer (trl gets the ids, not the text);
  * the same generation limits: <= 20 new tokens, top-p 0.9, top-k off, temperature 1,
    stopping at EOS; the same PPO settings (rl/ppo.py PPOConfig = trl 0.8.6's fields);
  * the same reward: a constant 1.0 for every row (`--reward=bleu` gives ours the BLEU reward
    against the study's teacher replies instead, more work on our side only);
  * float32 on both sides, on the same cores: XLA's CPU client uses one thread per core it may
    run on (its default), torch gets `set_num_threads(<that count>)`; both printed; `--cores=N`
    pins both processes to N cores. trl's side runs with `OMP_WAIT_POLICY=PASSIVE` unless the
    environment sets it: with libgomp's default (spin, then sleep) and a core busy with another
    process, torch's 2 threads stall at every barrier, and on the shared 2-core machine this was
    written on trl's step() took 45-50 s instead of 1.7 s on 1 thread or 2.7 s on 2 threads with
    PASSIVE (our side, XLA's own thread pool, showed no such collapse). One side
    runs at a time (the other waits on a pipe); the blocks alternate (`--block` steps of ours,
    then as many of trl's) after `--warmup` untimed steps a side (compiles, first allocations);
  * medians of the per-step wall times (a step whose response length gives a new padded
    shape recompiles our jitted forward/update once: a few such steps are in the timed set,
    the median leaves them out as they are amortised in a real run).
The work trained on: by default (`--response=raw`) ours trains on the raw sampled tokens, as trl's
`step()` does (its `generate` stops at EOS only): the same <= 20 tokens a row on both sides.
`--response=reply` trains ours on the study's re-encoded child reply instead (the continuation cut
at the next speaker tag, where the sampler also stops): a random model seldom writes a speaker tag,
but the text it samples re-encodes into more tokens than it sampled (~26 a row against trl's 20:
more work on our side only; both printed; on 2026-12-04 it gave 2.88x where raw gave 3.06x).
Ours pads the rows of a step to a multiple of 16 tokens (one compile per bucket), trl to the
longest row of the step. trl's value head init and dropout draws differ from
ours (timing only). Ours also keeps host-side counters and sample replies.

Then the bare jitted sampler (`sampling.sample_tokens`) runs on the same model, prompts and
settings, with the same number of new tokens per row on average (rollout overhead).

Output: the phase lines (medians of our timed steps), the rollout-vs-sampler line
`rollout_vs_sampler=... unit=tokens/s`, trl's line, and last
`ratio=<our PPO steps/s / trl 0.8.6's> ours=<steps/s> baseline=<steps/s> unit=steps/s`.
"""

import argparse
import contextlib
import fcntl
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SYNTHETIC = "data:communicative_baby/dpo_dataset/synthetic_dpo_format.json"
TRL_SCRIPT = pathlib.Path(__file__).with_name("trl086_ppo.py")
# trl 0.8.6 with the stack it was checked on (CPU); changing a pin rebuilds the environment.
TRL_PINS = ("trl==0.8.6", "transformers==4.46.3", "tokenizers==0.20.3", "torch==2.13.0", "accelerate==1.15.0",
            "datasets==5.0.1", "huggingface_hub==0.36.2", "numpy==2.4.6", "safetensors==0.8.0", "tyro==1.0.17",
            "rich==15.0.0")
BATCH = 16


def trl_env_dir() -> pathlib.Path:
  cache = os.environ.get("LLAMALOGUE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "llamalogue")
  return pathlib.Path(cache) / "bench" / "trl-0.8.6"


def trl_python(env_dir: pathlib.Path) -> pathlib.Path:
  """The python of trl 0.8.6's environment in `env_dir`, built there first if missing (once; reused).

  Complete when `env_dir/llamalogue-pins.json` lists `TRL_PINS` (written last, after the imports
  trl's side needs were tried); anything else there is removed and built again. A lock file
  beside it keeps two benchmarks from building at once.
  """
  import shutil
  env_dir = pathlib.Path(env_dir)
  marker, python = env_dir / "llamalogue-pins.json", env_dir / "bin" / "python"
  env_dir.parent.mkdir(parents=True, exist_ok=True)
  with open(env_dir.with_name(env_dir.name + ".lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if marker.exists() and json.loads(marker.read_text()) == list(TRL_PINS) and python.exists():
      return python
    print(f"ppo_throughput: building trl 0.8.6's environment (once, a few minutes) in {env_dir}", flush=True)
    t0 = time.perf_counter()
    shutil.rmtree(env_dir, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    log = env_dir / "pip.log"
    with open(log, "w") as f:
      rc = subprocess.run([str(python), "-m", "pip", "install", "--no-input", *TRL_PINS], stdout=f,
                          stderr=subprocess.STDOUT).returncode
    if rc:
      raise SystemExit(f"ppo_throughput: pip could not install {' '.join(TRL_PINS)} into {env_dir} (see {log}); "
                       "or run with --no_trl")
    check = "from trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer"
    r = subprocess.run([str(python), "-c", check], capture_output=True, text=True)
    if r.returncode:
      raise SystemExit(f"ppo_throughput: trl 0.8.6 does not import in {env_dir}:\n{r.stderr[-2000:]}")
    marker.write_text(json.dumps(list(TRL_PINS)))
    print(f"ppo_throughput: built {env_dir} in {time.perf_counter() - t0:.0f} s", flush=True)
    return python


class TrlWorker:
  """benchmarks/trl086_ppo.py `--serve` in trl's environment: `run(k)` times its next k steps."""

  def __init__(self, python, model_dir, queries_file, threads: int, log_path: pathlib.Path, keep_freed: bool):
    cmd = [str(python), str(TRL_SCRIPT), f"--model={model_dir}", f"--queries={queries_file}",
           f"--threads={threads}", "--serve"] + (["--keep_freed_memory"] if keep_freed else [])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see the module docstring: busy cores stall spinning threads
    self.log_path = log_path
    self.log = open(log_path, "w")
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                 env=env)
    self.info = None

  def _reply(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      self.proc.wait()
      self.log.flush()
      tail = self.log_path.read_text()[-3000:]
      raise SystemExit(f"ppo_throughput: trl's side exited ({self.proc.returncode}):\n{tail}")
    reply = json.loads(line)
    if "error" in reply:
      raise SystemExit(f"ppo_throughput: trl's side: {reply['error']}")
    return reply

  def ready(self) -> dict:
    if self.info is None:
      self.info = self._reply()
    return self.info

  def run(self, k: int) -> dict:
    self.ready()
    self.proc.stdin.write(f"run {k}\n")
    self.proc.stdin.flush()
    return self._reply()

  def close(self) -> None:
    if self.proc.poll() is None:
      with contextlib.suppress(BrokenPipeError):
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
      try:
        self.proc.wait(timeout=30)
      except subprocess.TimeoutExpired:
        self.proc.kill()
    self.log.close()


class ConstantReward:
  """The comparison's reward: the same score for every reply (a `rewards.Curriculum` stand-in)."""
  names = ("constant",)

  def __init__(self, value: float = 1.0):
    self.value = value

  def __call__(self, step, mothers, replies):
    import numpy as np
    return np.full(len(replies), self.value, np.float32), 0


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=8, help="timed PPO steps a side")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps a side first (compiles, allocations)")
  parser.add_argument("--block", type=int, default=2, help="steps of one side before the other's")
  parser.add_argument("--quick", action="store_true", help="a smoke run: --warmup=1 --steps=1 --block=1")
  parser.add_argument("--reward", choices=("constant", "bleu"), default="constant",
                      help="our reward: constant (as trl's side) or BLEU against the study's teacher replies")
  parser.add_argument("--response", choices=("reply", "raw"), default="raw",
                      help="what ours trains on: the raw sampled tokens (as trl, the default) or the study's re-encoded reply")
  parser.add_argument("--no_trl", action="store_true", help="ours and the sampler only (no trl environment)")
  parser.add_argument("--trl_env", default="", help="trl 0.8.6's environment (default: the cache, built if missing)")
  parser.add_argument("--cores", type=int, default=0,
                      help="pin both sides to the first N cores this may use (0: all): XLA sizes its pool by "
                           "them, torch gets as many threads")
  parser.add_argument("--vocab", type=int, default=1024)
  args = parser.parse_args(argv)
  if args.quick:
    args.warmup, args.steps, args.block = 1, 1, 1
  if args.steps < 1 or args.warmup < 1 or args.block < 1:
    parser.error("--steps, --warmup and --block: at least 1 (the first step compiles)")
  if not 0 <= args.cores <= len(os.sched_getaffinity(0)):
    parser.error(f"--cores: 0 (all) to {len(os.sched_getaffinity(0))}, the cores this process may use")
  return args


def schedule(warmup: int, steps: int, block: int) -> list[tuple[str, int, bool]]:
  """(side, count, timed) in order: warm-ups of ours then trl's, then alternating blocks, ours first."""
  plan = [("ours", warmup, False), ("trl", warmup, False)]
  done = 0
  while done < steps:
    k = min(block, steps - done)
    plan += [("ours", k, True), ("trl", k, True)]
    done += k
  return plan


def main(argv=None) -> float:
  args = parse_args(argv)
  if args.cores:  # before jax starts its CPU client (it counts the cores it may use); trl's side inherits it
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])
  from llamalogue import runtime
  keep_freed = runtime.keep_freed_memory()  # as main.py for mode=ppo, before jax runs anything
  import dataclasses
  import jax
  import numpy as np
  from flax import nnx
  from configs import ppo_bleu
  from evaluation import testing
  from llamalogue import hf, model as model_lib, paths, sampling, sharding, step
  from rl import ppo, ppo_run, rewards, teacher as teacher_lib

  python = None if args.no_trl else trl_python(pathlib.Path(args.trl_env) if args.trl_env else trl_env_dir())
  total = args.warmup + args.steps
  rows = json.loads(paths.resolve(SYNTHETIC, "synthetic pairs").read_text())
  mothers = list(dict.fromkeys(teacher_lib.mother_turn(r["prompt"]) for r in rows))[:BATCH * total]
  replies = {teacher_lib.mother_turn(r["prompt"]): r["chosen"] for r in rows}
  threads = len(os.sched_getaffinity(0))
  worker = None
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    texts = [f"*MOT: {m} *CHI: {replies[m]}" for m in mothers] + [r["rejected"] for r in rows[:2000]]
    testing.make_tokenizer(tmp / "tok", texts, args.vocab)
    tok = hf.load_tokenizer(tmp / "tok")
    cfg = dataclasses.replace(model_lib.PRESETS["tiny"], vocab_size=len(tok))
    model = model_lib.Llama(cfg, rngs=nnx.Rngs(0))
    query_ids = [tok(ppo_run.query(m))["input_ids"] for m in mothers]
    if python is not None:
      hf.export(model, tmp / "hf", tokenizer_dir=tmp / "tok")  # trl loads these very weights
      (tmp / "queries.json").write_text(json.dumps(query_ids))
      worker = TrlWorker(python, tmp / "hf", tmp / "queries.json", threads, tmp / "trl.log", keep_freed)
    graphdef, params = step.split_model(model)
    if args.reward == "bleu":
      cache_file = tmp / "replies.jsonl"
      cache_file.write_text("".join(json.dumps({"prompt": m, "replies": [replies[m]]}) + "\n" for m in mothers))
      reward = rewards.Curriculum((("bleu", 1),), {"bleu": rewards.BleuReward(teacher_lib.ReplyCache(cache_file))},
                                  scale=False)
    else:
      reward = ConstantReward(1.0)
    config = ppo_bleu.get_config()
    config.init_from = "(benchmark: random tiny model)"
    config.response = args.response
    pcfg = ppo_run.ppo_config(config.ppo)
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    tx, _ = ppo.make_optimizer(pcfg)
    policy = jax.tree.map(lambda x: x.copy(), params)  # the update donates the state: the reference keeps its own
    state = ppo.init_state(policy, ppo.init_value_head(cfg.hidden_size, jax.random.key(1)), tx, pcfg)
    shardings = sharding.tree_shardings(state, mesh)
    state = jax.device_put(state, shardings)  # laid out as the run's jitted init lays it out (no recompile later)
    roll = ppo_run.Rollouts(config, graphdef, params, tok, reward, pcfg, tx, mesh, shardings, tmp / "samples.jsonl")

    phases = {k: [] for k in ("rollout", "reward", "forward", "update")}
    ours_s, gen_tokens, resp_tokens, warm_s = [], [], [], 0.0
    trl_runs = []
    done = {"ours": 0, "trl": 0}
    try:
      for side, k, timed in schedule(args.warmup, args.steps, args.block):
        if side == "trl":
          if worker is not None:
            out = worker.run(k)
            if timed:
              trl_runs.append(out)
          continue
        for _ in range(k):
          j = done["ours"]
          t0 = time.perf_counter()
          state, m = roll(state, mothers[BATCH * j:BATCH * (j + 1)])
          dt = time.perf_counter() - t0
          done["ours"] += 1
          if not timed:
            warm_s += dt
            continue
          ours_s.append(dt)
          for p in phases:
            phases[p].append(float(m[f"time/{p}_s"]))
          gen_tokens.append(float(m["perf/rollout_tokens_per_s"]) * float(m["time/rollout_s"]))
          resp_tokens.append(float(m["tokens/responses_len_mean"]))
    except BaseException:
      if worker is not None:
        worker.close()
      raise
    step_med = {k: float(np.median(v)) for k, v in phases.items()}
    rollout_tps = sum(gen_tokens) / sum(phases["rollout"])
    new_per_row = int(round(sum(gen_tokens) / len(gen_tokens) / BATCH))

    # The bare sampler: same model, prompts and settings, no text handling.
    q = query_ids[:BATCH]
    p = -(-max(map(len, q)) // 16) * 16
    prompt = np.zeros((BATCH, p), np.int32)
    for b, ids in enumerate(q):
      prompt[b, p - len(ids):] = ids
    lens = np.array([len(x) for x in q], np.int32)
    run = lambda k: sampling.sample_tokens(state["params"]["policy"], graphdef, prompt, lens, jax.random.key(k),
                                           max_new_tokens=max(new_per_row, 1), top_p=0.9, eos_id=-1)
    jax.block_until_ready(run(0))
    t0 = time.perf_counter()
    reps = 1 if args.quick else 5
    for k in range(reps):
      out = jax.block_until_ready(run(k + 1))
    sampler_tps = reps * float(np.sum(np.asarray(out["lengths"]))) / (time.perf_counter() - t0)
    if worker is not None:
      worker.close()

  ours_med = float(np.median(ours_s))
  cores = ",".join(map(str, sorted(os.sched_getaffinity(0))))
  phase_sum = sum(step_med.values())
  print(f"PPO step, ours (tiny 4x256, batch 16, mini-batch 4, 4 epochs, {args.reward} reward, "
        f"response={args.response}): median of "
        f"{len(ours_s)} steps after {args.warmup} untimed ({warm_s:.1f} s, compiles): {ours_med:.2f} s = "
        f"{1 / ours_med:.3f} steps/s; XLA on {threads} threads (one per core: {cores}), float32")
  for k, v in step_med.items():
    print(f"  {k:8s} {v:7.3f} s  {100 * v / phase_sum:5.1f}%")
  print(f"slowest phase: {max(step_med, key=step_med.get)}; {np.mean(resp_tokens):.1f} response tokens a row "
        f"trained on; step times {', '.join(f'{s:.2f}' for s in ours_s)} s")
  print(f"rollout: {rollout_tps:,.0f} generated tokens/s ({new_per_row} per row); bare sampler on the same batch: "
        f"{sampler_tps:,.0f} tokens/s")
  print(f"rollout_vs_sampler={rollout_tps / sampler_tps:.3f} rollout={rollout_tps:.1f} sampler={sampler_tps:.1f} "
        "unit=tokens/s")
  if worker is None:
    return rollout_tps / sampler_tps
  info = worker.info
  trl_s = [s for r in trl_runs for s in r["step_s"]]
  trl_gen = float(np.median([s for r in trl_runs for s in r["generate_s"]]))
  trl_train = float(np.median([s for r in trl_runs for s in r["train_s"]]))
  trl_tokens = float(np.mean([t for r in trl_runs for t in r["response_tokens"]]))
  trl_med = float(np.median(trl_s))
  v = info["versions"]
  print(f"trl {v['trl']} PPOTrainer (transformers {v['transformers']}, torch {v['torch']}, {info['threads']} "
        f"threads, OMP_WAIT_POLICY={info['omp_wait_policy']}, {info['dtype']}, {info['device']}): median of {len(trl_s)} steps {trl_med:.2f} s = "
        f"{1 / trl_med:.3f} steps/s (generate {trl_gen:.2f} s + step() {trl_train:.2f} s); "
        f"{trl_tokens:.1f} response tokens a row; step times {', '.join(f'{s:.2f}' for s in trl_s)} s")
  ratio = trl_med / ours_med
  print(f"ratio={ratio:.3f} ours={1 / ours_med:.4f} baseline={1 / trl_med:.4f} unit=steps/s")
  return ratio


if __name__ == "__main__":
  main()
