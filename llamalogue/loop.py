"""The one run scaffold that pre-training, DPO and PPO share.

A mode builds its state, its step and its batches; `run_loop` owns everything else:
restoring the newest checkpoint (exact resume, onto any device count), the step loop with
a tqdm bar, the non-finite stop, TensorBoard + metrics.jsonl, tokens/s and MFU, periodic
evaluation, word-milestone and periodic checkpoints, and the final summary.json.

  summary, final_state = loop.run_loop(workdir, settings, Task(...))

A step is any callable `(state, batch) -> (state, metrics)`: a jitted train step
(pre-training, DPO) or a host-side rollout followed by a jitted update (PPO). Its metrics
hold `finite` (a step with a non-finite loss or gradient left the state unchanged and
reports 0) and scalars; `Task.scalars` names them for the logs.
"""

import dataclasses
import json
import math
import pathlib
import time
from typing import Any, Callable

import jax
import numpy as np
from tqdm.auto import tqdm

from llamalogue import checkpoint as ckpt_lib
from llamalogue.errors import LlamalogueError
from llamalogue.metrics import MetricWriter
from llamalogue.paths import atomic_write

# bf16 dense peak FLOP/s per chip, for MFU. Other chips (CPUs) use a measured matmul ceiling.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "TPU v4": 275e12,
              "TPU v5 lite": 197e12, "TPU v5": 459e12, "TPU v6": 918e12}


def measured_matmul_flops(n: int = 1024, dtype=None, reps: int = 5) -> float:
  """FLOP/s of a square matmul (fp32 by default) on the default device, best of `reps`: a ceiling for unlisted chips."""
  import jax.numpy as jnp
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
  init_state: builds the fresh state (called only when no checkpoint exists).
  target: the abstract state (ShapeDtypeStructs with shardings) a checkpoint restores onto.
  step: `(state, batch) -> (state, metrics)`.
  scalars: `(host metrics, step) -> {log name: float}`; default: every scalar metric under `train/`.
  evaluate: `(state) -> {log name: float}`, run every `eval_every` steps and at the end.
  milestones: word counts at which a kept checkpoint `words_<N>` is written.
  flops_per_token: for MFU (0: not reported).
  meta: extra JSON saved in every checkpoint's meta (model config, settings).
  on_log: `(step, state, host metrics)` called at each log step (sample texts, ...).
  """
  name: str
  batches: Any
  init_state: Callable[[], Any]
  target: Any
  step: Callable[[Any, Any], tuple[Any, dict]]
  scalars: Callable[[dict, int], dict] | None = None
  evaluate: Callable[[Any], dict] | None = None
  milestones: list[int] = dataclasses.field(default_factory=list)
  flops_per_token: float = 0.0
  meta: dict = dataclasses.field(default_factory=dict)
  on_log: Callable[[int, Any, dict], None] | None = None


def _host(metrics: dict) -> dict:
  return {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}


def _add(window, metrics: dict):
  """(running sums of the scalar metrics, count); the sums stay on the device until the log step."""
  scalars = {k: v for k, v in metrics.items() if np.ndim(v) == 0 and k != "finite"}
  if window is None:
    return scalars, 1
  return {k: window[0][k] + v for k, v in scalars.items() if k in window[0]}, window[1] + 1


def default_scalars(metrics: dict, step: int) -> dict:
  return {f"train/{k}": float(v) for k, v in metrics.items() if np.ndim(v) == 0 and k != "finite"}


def run_loop(workdir: str | pathlib.Path, settings: Settings, task: Task, *, model_cfg=None,
             tokenizer_dir=None) -> dict:
  """Runs (or resumes) `task` to `settings.total_steps`; returns (summary, final state). Writes DIR/summary.json."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  ckpts = ckpt_lib.RunCheckpoints(workdir, keep_latest=settings.keep_latest)
  if model_cfg is not None:
    ckpts.write_run_files(model_cfg, tokenizer_dir)
    if jax.process_index() == 0:
      from llamalogue import ops
      print(f"{task.name}: {ops.describe_kernels(model_cfg)}", flush=True)
  restored = ckpts.restore_latest(task.target)
  if restored is None:
    state = task.init_state()
    meta = {"step": 0, "words": 0, "tokens": 0, "milestones_done": []}
  else:
    state, meta = restored
    task.batches.restore(meta["data"])
    print(f"{task.name}: resuming from step {meta['step']} ({meta.get('words', 0):,} words seen)")

  total = settings.total_steps
  lead = jax.process_index() == 0
  writer = MetricWriter(workdir) if lead else None
  scalars_fn = task.scalars or default_scalars
  peak = peak_flops(settings.peak_flops) if task.flops_per_token else 0.0
  n_dev = jax.device_count() if jax.default_backend() != "cpu" else 1  # simulated CPU devices share one ceiling
  step, words, tokens = int(meta["step"]), int(meta.get("words", 0)), int(meta.get("tokens", 0))
  done_marks = set(meta.get("milestones_done", []))
  marks = sorted(task.milestones)
  bar = tqdm(total=total, initial=step, desc=task.name, unit="step", dynamic_ncols=True, disable=not lead)
  t_last, tok_last, step_last, pending, last_eval, window = time.perf_counter(), 0, step, None, {}, None
  t_start = time.perf_counter()

  def save(reached):
    # Step keys are fold_in(key(seed), step): the seed and step are the whole rng state.
    m = {**task.meta, "step": step, "words": words, "tokens": tokens, "data": task.batches.state(),
         "rng": {"seed": task.meta.get("seed"), "step": step}, "milestones_done": sorted(done_marks)}
    ckpts.save(state, m, reached)

  def check(metrics, at_step):
    if not bool(np.asarray(metrics["finite"])):
      shown = ", ".join(f"{k}={float(np.asarray(v))}" for k, v in metrics.items()
                        if k != "finite" and np.ndim(v) == 0 and k in ("loss", "grad_norm"))
      raise LlamalogueError(f"{task.name}: non-finite loss at step {at_step} ({shown}); stopped, the last good "
                            f"checkpoint is step {ckpts.latest_step()} in {workdir / 'checkpoints' / 'latest'}")

  def run_eval():
    nonlocal last_eval, t_last
    if task.evaluate is None:
      return
    last_eval = task.evaluate(state) or {}
    if writer and last_eval:
      writer.write(step, last_eval)
    t_last = time.perf_counter()  # evaluation time is not training time

  try:
    while step < total:
      batch, counts = task.batches.next()
      state, metrics = task.step(state, batch)
      if pending is not None:  # check the previous step while this one runs
        check(*pending)
      pending = (metrics, step + 1)
      window = _add(window, metrics)  # logged scalars are means over the log interval (as trl logs them)
      step += 1
      words += int(counts.get("words", 0))
      tokens += int(counts.get("tokens", 0))
      tok_last += int(counts.get("tokens", 0))
      bar.update(1)
      reached = [m for m in marks if m <= words and m not in done_marks]
      if step == total:  # the final state stands for a last milestone it nearly reached
        reached += [m for m in marks if m not in done_marks and m <= words * 1.05 and m not in reached]
      if step % settings.log_every == 0 or step == total:
        host = _host(metrics)
        check(host, step)
        dt = time.perf_counter() - t_last
        means = {k: v / window[1] for k, v in _host(window[0]).items()}
        window = None
        scalars = scalars_fn(means, step)
        if tok_last:
          scalars["perf/tokens_per_s"] = tok_last / dt
          if task.flops_per_token:
            scalars["perf/flops_per_s"] = tok_last / dt * task.flops_per_token
            scalars["perf/mfu"] = scalars["perf/flops_per_s"] / (peak * n_dev)
        scalars["perf/steps_per_s"] = (step - step_last) / dt
        if words:
          scalars["train/words_seen"] = words
        scalars["train/epoch"] = getattr(task.batches, "epoch", 0)
        if writer:
          writer.write(step, scalars)
        if task.on_log is not None:
          task.on_log(step, state, host)
        shown = {k.split("/")[-1]: f"{v:.3g}" for k, v in scalars.items() if k in ("train/loss",)}
        if tok_last:
          shown["tok_s"] = f"{tok_last / dt:,.0f}"
        bar.set_postfix(**shown)
        t_last, tok_last, step_last = time.perf_counter(), 0, step
      if settings.eval_every and (step % settings.eval_every == 0 or step == total):
        run_eval()
      if reached or step % settings.checkpoint_every == 0 or step == total:
        check(_host(metrics), step)
        pending = None
        done_marks.update(reached)
        save(reached)
        t_last, tok_last, step_last = time.perf_counter(), 0, step  # checkpoint time is not training time
    if task.evaluate is not None and not last_eval and step == total and settings.eval_every == 0:
      run_eval()
  finally:
    bar.close()
    if writer:
      writer.close()
    ckpts.close()

  summary = {"mode": task.name, "steps": step, "words_seen": words, "tokens_seen": tokens,
             "final_eval": last_eval, "milestones": [m for m in marks if m in done_marks],
             "checkpoints": str(workdir / "checkpoints"), "wall_s_this_session": time.perf_counter() - t_start}
  if lead:
    atomic_write(workdir / "summary.json", json.dumps(summary, indent=2))
  return summary, state


def perplexity(loss: float) -> float:
  return math.exp(min(loss, 50.0))
