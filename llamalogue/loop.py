"""The one run scaffold that pre-training, DPO and PPO share.

A mode builds its state layout, its step and its batches; `run_loop` owns everything else:
restoring the newest checkpoint (exact resume, onto any device count, host-side state
included), the step loop with a progress bar, the non-finite stop, TensorBoard +
metrics.jsonl, tokens/s, MFU and the learning rate, periodic evaluation, word-milestone and
periodic checkpoints, and summary.json (written once, here).

  summary, final_state = loop.run_loop(workdir, settings, Task(...), config=config)

Three named pieces: a `Meter` (what is logged), a `SavePolicy` (when a checkpoint is written)
and the loop itself. A step is any callable `(state, batch) -> (state, metrics)`: a jitted
train step (pre-training, DPO) or a host-side rollout followed by a jitted update (PPO). Its
metrics hold `finite` (a step with a non-finite loss or gradient left the state unchanged and
reports 0) and scalars; `Task.scalars` names them for the logs.
"""

import dataclasses
import json
import math
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from llamalogue import checkpoint as ckpt_lib
from llamalogue import faults, ops, progress
from llamalogue.errors import LlamalogueError
from llamalogue.metrics import MetricWriter
from llamalogue.paths import atomic_write

# bf16 dense peak FLOP/s per chip, for MFU. Other chips (CPUs) use a measured matmul ceiling.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "TPU v4": 275e12,
              "TPU v5 lite": 197e12, "TPU v5": 459e12, "TPU v6": 918e12}


def measured_matmul_flops(n: int = 1024, dtype=None, reps: int = 5) -> float:
  """FLOP/s of a square matmul (fp32 by default) on the default device, best of `reps`: a ceiling for unlisted chips."""
  a = jnp.ones((n, n), dtype or jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(f(a, a))
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(f(a, a))
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best


def table_peak_flops() -> float | None:
  """The bf16 peak of the current chip from PEAK_FLOPS, None when it is not listed (CPUs)."""
  kind = jax.devices()[0].device_kind.lower()
  return next((flops for name, flops in PEAK_FLOPS.items() if name.lower() in kind), None)


def peak_flops(override: float = 0.0) -> float:
  """Peak FLOP/s per chip: the override, the bf16 table for known accelerators, else a measured matmul."""
  return override or table_peak_flops() or measured_matmul_flops()


def perplexity(loss: float) -> float:
  return math.exp(min(loss, 50.0))


@dataclasses.dataclass
class Settings:
  """How often to log, evaluate and save; from `config.train` (any object with these attributes)."""
  total_steps: int
  log_every: int = 10
  eval_every: int = 0
  checkpoint_every: int = 100
  keep_latest: int = 2
  peak_flops: float = 0.0

  @classmethod
  def from_config(cls, train_cfg, total_steps: int) -> "Settings":
    return cls(total_steps=total_steps, log_every=max(1, train_cfg.log_every), eval_every=train_cfg.eval_every,
               checkpoint_every=max(1, train_cfg.checkpoint_every), keep_latest=train_cfg.keep_latest,
               peak_flops=train_cfg.get("peak_flops", 0.0))


@dataclasses.dataclass
class Task:
  """What a mode hands the scaffold.

  batches: `.next() -> (batch, counts)` with counts `{"tokens": n, "words": n}` (either may be 0),
    `.state() -> dict` (JSON) and `.restore(dict)` for exact resume, `.epoch`.
  layout: a `step.StateLayout`: the fresh state's `init()` (called only when no checkpoint
    exists) and the `target` a checkpoint restores onto.
  step: `(state, batch) -> (state, metrics)`.
  schedule: the learning rate as a function of the step count (logged as `train/learning_rate`).
  scalars: `(host metrics, step) -> {log name: float}`; default: every scalar metric under `train/`.
  evaluate: `(state) -> {log name: float}`, run every `eval_every` steps and at the end.
  milestones: word counts at which a kept checkpoint `words_<N>` is written.
  flops_per_token: for MFU (0: not reported).
  meta: extra JSON saved in every checkpoint's meta (model config, settings).
  host: host-side state beyond the arrays (PPO's reward counters and caches): `.state() -> JSON`
    saved in every checkpoint, `.restore(JSON)` on resume.
  on_log: `(step, state, host metrics)` called at each log step (sample texts, ...).
  finish: `(summary, final state) -> dict` after the last step (evaluation, plots): its fields are
    added to summary.json.
  """
  name: str
  batches: Any
  layout: Any
  step: Callable[[Any, Any], tuple[Any, dict]]
  schedule: Callable[[int], Any] | None = None
  scalars: Callable[[dict, int], dict] | None = None
  evaluate: Callable[[Any], dict] | None = None
  milestones: list[int] = dataclasses.field(default_factory=list)
  flops_per_token: float = 0.0
  meta: dict = dataclasses.field(default_factory=dict)
  host: Any = None
  on_log: Callable[[int, Any, dict], None] | None = None
  finish: Callable[[dict, Any], dict] | None = None


def default_scalars(metrics: dict, step: int) -> dict:
  return {f"train/{k}": float(v) for k, v in metrics.items() if np.ndim(v) == 0 and k != "finite"}


def _host(metrics: dict) -> dict:
  return {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}


# ---------------------------------------------------------------------------- the meter

class Meter:
  """What is logged: scalars averaged over the log interval (as trl logs them; the running sums stay
  on the device until the log step), tokens/s, steps/s, MFU, the learning rate, words and epoch.
  Time spent evaluating or checkpointing is not training time (`restart`)."""

  def __init__(self, task: Task, settings: Settings, step: int):
    self.task, self.scalars_fn = task, task.scalars or default_scalars
    self.peak = peak_flops(settings.peak_flops) if task.flops_per_token else 0.0
    self.devices = jax.device_count() if jax.default_backend() != "cpu" else 1  # simulated CPUs share one ceiling
    self.sums, self.count = None, 0
    self.restart(step)

  def restart(self, step: int) -> None:
    self.t0, self.tokens, self.step0 = time.perf_counter(), 0, step

  def add(self, metrics: dict, tokens: int) -> None:
    scalars = {k: v for k, v in metrics.items() if np.ndim(v) == 0 and k != "finite"}
    self.sums = scalars if self.sums is None else {k: self.sums[k] + v for k, v in scalars.items() if k in self.sums}
    self.count += 1
    self.tokens += tokens

  def log(self, step: int, words: int) -> dict:
    """The scalars of the interval that ends at `step` (and a new interval begins)."""
    dt = time.perf_counter() - self.t0
    means = {k: v / self.count for k, v in _host(self.sums or {}).items()}
    out = self.scalars_fn(means, step)
    if self.task.schedule is not None:
      out["train/learning_rate"] = float(self.task.schedule(step - 1))
    if self.tokens:
      out["perf/tokens_per_s"] = self.tokens / dt
      if self.task.flops_per_token:
        out["perf/flops_per_s"] = self.tokens / dt * self.task.flops_per_token
        out["perf/mfu"] = out["perf/flops_per_s"] / (self.peak * self.devices)
    out["perf/steps_per_s"] = (step - self.step0) / dt
    if words:
      out["train/words_seen"] = words
    out["train/epoch"] = getattr(self.task.batches, "epoch", 0)
    self.sums, self.count = None, 0
    self.restart(step)
    return out


# ---------------------------------------------------------------------------- the save policy

class SavePolicy:
  """When a checkpoint is written: at each word milestone reached (kept), every `checkpoint_every`
  steps and at the last step (the newest few, for resuming). The last step also stands for a
  milestone it nearly reached (within 5% of the words)."""

  def __init__(self, milestones, done, every: int, total: int):
    self.marks, self.done, self.every, self.total = sorted(milestones), set(done), every, total

  def reached(self, step: int, words: int) -> list[int]:
    out = [m for m in self.marks if m <= words and m not in self.done]
    if step == self.total:
      out += [m for m in self.marks if m not in self.done and m <= words * 1.05 and m not in out]
    return out

  def due(self, step: int, reached: list[int]) -> bool:
    return bool(reached) or step % self.every == 0 or step == self.total


# ---------------------------------------------------------------------------- the loop

def _check(name: str, metrics: dict, at_step: int, ckpts, workdir: pathlib.Path) -> None:
  """Stops the run on a step that reported a non-finite loss or gradient (its update was skipped)."""
  if not bool(np.asarray(metrics["finite"])):
    scalars = {k: float(np.asarray(v)) for k, v in metrics.items() if k != "finite" and np.ndim(v) == 0}
    bad = {k: v for k, v in scalars.items() if not np.isfinite(v)}
    shown = bad or {k: v for k, v in scalars.items() if k.endswith("loss") or "loss/" in k or k == "grad_norm"}
    shown = ", ".join(f"{k}={v:.6g}" for k, v in list(shown.items())[:6]) or "a non-finite gradient"
    last = ckpts.latest_step()
    last = f"step {last}" if last is not None else "none (the run stops before its first checkpoint)"
    raise LlamalogueError(f"{name}: non-finite loss or gradient at step {at_step} ({shown}); stopped, the last "
                          f"good checkpoint is {last} in {workdir / 'checkpoints' / 'latest'}")


def _start(task: Task, ckpts) -> tuple[Any, dict]:
  """The state and books to continue from: the newest checkpoint's, or a fresh state's."""
  restored = ckpts.restore_latest(task.layout.target)
  if restored is None:
    return task.layout.init(), {"step": 0, "words": 0, "tokens": 0, "milestones_done": [], "wall_s": 0.0}
  state, meta = restored
  task.batches.restore(meta["data"])
  if task.host is not None and "host" in meta:
    task.host.restore(meta["host"])
  print(f"{task.name}: resuming from step {meta['step']} ({meta.get('words', 0):,} words seen)")
  return state, meta


def run_loop(workdir: str | pathlib.Path, settings: Settings, task: Task, *, config=None, model_cfg=None,
             tokenizer_dir=None) -> tuple[dict, Any]:
  """Runs (or resumes) `task` to `settings.total_steps`; returns (summary, final state).

  Writes DIR/run_config.json (`config`), the run files beside the checkpoints (`model_cfg`, the
  tokenizer), and at the end DIR/summary.json (process 0 only).
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  lead = jax.process_index() == 0
  if config is not None and lead:
    atomic_write(workdir / "run_config.json", config.to_json_best_effort(indent=2))
  ckpts = ckpt_lib.RunCheckpoints(workdir, keep_latest=settings.keep_latest)
  if model_cfg is not None and lead:
    ckpts.write_run_files(model_cfg, tokenizer_dir)
    print(f"{task.name}: {ops.describe_kernels(model_cfg)}", flush=True)   # the kernels chosen, on purpose
  state, meta = _start(task, ckpts)
  step, words, tokens = int(meta["step"]), int(meta.get("words", 0)), int(meta.get("tokens", 0))
  total, t_start, wall_before = settings.total_steps, time.perf_counter(), float(meta.get("wall_s", 0.0))
  policy = SavePolicy(task.milestones, meta.get("milestones_done", []), settings.checkpoint_every, total)
  meter = Meter(task, settings, step)
  writer = MetricWriter(workdir) if lead else None
  bar = progress.bar(total, task.name, "step", initial=step, disable=not lead)
  pending, last_eval = None, {}

  def save(reached):
    # Step keys are fold_in(key(seed), step): the seed and step are the whole rng state.
    m = {**task.meta, "step": step, "words": words, "tokens": tokens, "data": task.batches.state(),
         "rng": {"seed": task.meta.get("seed"), "step": step}, "milestones_done": sorted(policy.done),
         "wall_s": wall_before + time.perf_counter() - t_start}
    if task.host is not None:
      m["host"] = task.host.state()
    ckpts.save(state, m, reached)

  def run_eval():
    nonlocal last_eval
    if task.evaluate is not None:
      last_eval = task.evaluate(state) or {}
      if writer and last_eval:
        writer.write(step, last_eval)
      meter.restart(step)

  guard = faults.install(task.name, defer=True)  # faults: SIGTERM/SIGINT finish the step, then save and stop
  try:
    while step < total:
      batch, counts = task.batches.next()
      state, metrics = task.step(state, batch)
      if pending is not None:  # check the previous step while this one runs
        _check(task.name, *pending, ckpts, workdir)
      pending = (metrics, step + 1)
      step += 1
      words += int(counts.get("words", 0))
      tokens += int(counts.get("tokens", 0))
      meter.add(metrics, int(counts.get("tokens", 0)))
      bar.update(1)
      reached = policy.reached(step, words)
      if step % settings.log_every == 0 or step == total:
        host = _host(metrics)
        _check(task.name, host, step, ckpts, workdir)
        scalars = meter.log(step, words)
        if writer:
          writer.write(step, scalars)
        if task.on_log is not None:
          task.on_log(step, state, host)
        shown = {"loss": f"{scalars['train/loss']:.3g}"} if "train/loss" in scalars else {}
        if "perf/tokens_per_s" in scalars:
          shown["tok_s"] = f"{scalars['perf/tokens_per_s']:,.0f}"
        bar.set_postfix(**shown)
      if settings.eval_every and (step % settings.eval_every == 0 or step == total):
        run_eval()
      if policy.due(step, reached):
        _check(task.name, _host(metrics), step, ckpts, workdir)
        pending = None
        policy.done.update(reached)
        save(reached)
        meter.restart(step)  # checkpoint time is not training time
      if faults.should_stop(step):  # every process agrees on this step; checkpoint it, then stop
        _check(task.name, _host(metrics), step, ckpts, workdir)
        save([])  # (a no-op when this step was just saved)
        raise faults.Preempted.at_step(task.name, faults.stop_signal(), step, ckpts.root / "latest" / f"step_{step}")
    if not last_eval and step == total:  # also a run resumed at its end

      run_eval()
  finally:
    faults.restore(guard)  # faults
    bar.close()
    if writer:
      writer.close()
    ckpts.close()

  summary = {"mode": task.name, "steps": step, "words_seen": words, "tokens_seen": tokens,
             "final_eval": last_eval, "milestones": [m for m in policy.marks if m in policy.done],
             "checkpoints": str(workdir / "checkpoints"),
             "wall_s": wall_before + time.perf_counter() - t_start,
             "wall_s_this_session": time.perf_counter() - t_start}
  if task.finish is not None:
    summary.update(task.finish(summary, state) or {})
  if lead:
    atomic_write(workdir / "summary.json", json.dumps(summary, indent=2, default=str))
  return summary, state
