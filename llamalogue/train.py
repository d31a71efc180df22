"""Pre-training: CHILDES tokens -> a Llama, with word-milestone checkpoints and exact resume.

  python main.py --config=configs/pretrain.py --workdir=DIR

The data pipeline runs first if its outputs are missing. The loop saves a checkpoint at
every word milestone (kept) and every `train.checkpoint_every` steps (the newest few,
for resuming); rerunning the same command after a crash or a kill resumes from the
newest one, bit-identical on CPU to an uninterrupted run.
"""

import dataclasses
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from llamalogue import checkpoint as ckpt_lib
from llamalogue import model as model_lib
from llamalogue import sharding as sharding_lib
from llamalogue import step as step_lib
from llamalogue.errors import ConfigError, LlamalogueError
from llamalogue.metrics import MetricWriter
from llamalogue.paths import atomic_write

# bf16 dense peak FLOP/s per chip, for MFU. Other chips (CPUs) use a measured matmul ceiling.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "TPU v4": 275e12,
              "TPU v5 lite": 197e12, "TPU v5": 459e12, "TPU v6": 918e12}


def milestones(words_per_epoch: int, epochs: int) -> list[int]:
  """BabyLM word milestones scaled to the budget: 1/10 ... 10/10 of one epoch, then 2 ... `epochs` epochs."""
  first = [words_per_epoch * k // 10 for k in range(1, 11)]
  return sorted(set(first + [words_per_epoch * k for k in range(2, epochs + 1)]))


def compute_dtype(requested: str) -> str:
  if requested == "auto":
    return "bfloat16" if jax.default_backend() in ("gpu", "tpu") else "float32"
  return requested


def measured_matmul_flops(n: int = 1024, dtype=jnp.float32, reps: int = 5) -> float:
  """FLOP/s of a square matmul on the default device (best of `reps`): a ceiling for chips with no table entry."""
  a = jnp.ones((n, n), dtype)
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


class _Batches:
  """Global batches `[A, B/A, L]` on the mesh, from a per-process TokenIterator."""

  def __init__(self, iterator, accum: int, mesh):
    self.it, self.accum = iterator, accum
    self.sharding = sharding_lib.batch_sharding(mesh, leading_dims=1)

  def next(self) -> tuple[dict, int]:
    batch = self.it.next()
    words = int(batch.pop("words"))
    local = {k: np.asarray(v).reshape(self.accum, -1, *np.shape(v)[1:]) for k, v in batch.items()}
    glob = {k: jax.make_array_from_process_local_data(self.sharding, v) for k, v in local.items()}
    return glob, words * jax.process_count()


def _validate(config) -> None:
  t = config.train
  if t.batch_size % t.accum_steps:
    raise ConfigError(f"config.train.batch_size={t.batch_size} is not divisible by accum_steps={t.accum_steps}")
  if t.epochs < 1:
    raise ConfigError(f"config.train.epochs={t.epochs} must be >= 1")
  if config.model.dtype not in ("auto", "float32", "bfloat16"):
    raise ConfigError(f"config.model.dtype: {config.model.dtype!r} is not auto, float32 or bfloat16")
  model_lib.config_from(config.model)  # an unknown preset or a bad shape fails before any data work


def run(config, workdir: str) -> dict:
  """Pre-trains (or resumes) and returns a summary dict."""
  from llamalogue.data.iterator import TokenIterator
  from llamalogue.data.prepare import ensure_prepared

  _validate(config)
  if config.train.get("distributed", False):
    jax.distributed.initialize()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  data_dir = pathlib.Path(ensure_prepared(config, str(workdir)))
  from llamalogue.hf import load_tokenizer
  tokenizer = load_tokenizer(data_dir)
  init_params = None
  if config.get("init_from"):  # continue pre-training a HF model or a checkpoint of ours
    from llamalogue.hf import load
    loaded, _ = load(config.init_from)
    model_cfg = loaded.cfg
    init_params = step_lib.split_model(loaded)[1]
  else:
    model_cfg = model_lib.config_from(config.model, vocab_size=len(tokenizer))
  model_cfg = dataclasses.replace(model_cfg, dtype=compute_dtype(config.model.dtype),
                                  max_seq_len=max(model_cfg.max_seq_len, config.data.seq_len))
  if len(tokenizer) > model_cfg.vocab_size:
    raise ConfigError(f"model vocabulary ({model_cfg.vocab_size}) is smaller than the tokenizer's "
                      f"({len(tokenizer)} tokens in {data_dir / 'tokenizer.json'})")

  for name in ("train_tokens.npy", "valid_tokens.npy"):
    if (data_dir / name).exists():
      top = int(np.load(data_dir / name, mmap_mode="r").max(initial=0))
      if top >= model_cfg.vocab_size:
        raise ConfigError(f"{data_dir / name}: token id {top} is outside the model's vocabulary "
                          f"({model_cfg.vocab_size}); tokens and model do not belong together")

  t = config.train
  mesh = sharding_lib.make_mesh(config.mesh.data, config.mesh.fsdp)
  local_batch = t.batch_size // jax.process_count()
  train_it = TokenIterator(data_dir / "train_tokens.npy", data_dir / "train_words.npy", local_batch,
                           config.data.seq_len, config.seed, shard_index=jax.process_index(),
                           shard_count=jax.process_count())
  total_steps = t.max_steps or t.epochs * train_it.steps_per_epoch
  words_per_epoch = int(np.load(data_dir / "train_words.npy", mmap_mode="r").sum(dtype=np.int64))
  # Name milestones by the nominal budget when the split fills it (1M ... 100M for the study).
  nominal = config.data.max_words if words_per_epoch >= 0.99 * config.data.max_words else words_per_epoch
  marks = milestones(nominal, t.epochs)
  if t.get("milestones"):
    try:
      marks = sorted({int(float(x)) for x in t.milestones.split(",") if x.strip()})
    except ValueError as e:
      raise ConfigError(f"config.train.milestones: {t.milestones!r} is not a comma-separated list of word counts") from e

  tx, schedule = step_lib.make_optimizer(config.optimizer, total_steps)
  params_fn = lambda: step_lib.init_params(model_cfg, config.seed)[1]
  abstract = step_lib.abstract_state(params_fn, tx)
  shardings = sharding_lib.tree_shardings(abstract, mesh)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)

  ckpts = ckpt_lib.RunCheckpoints(workdir, keep_latest=t.keep_latest)
  ckpts.write_run_files(model_cfg, data_dir)
  restored = ckpts.restore_latest(target)
  graphdef = model_lib.abstract_model(model_cfg)[0]
  if restored is None:
    if init_params is not None:
      state = sharding_lib.shard(step_lib.init_state(init_params, tx), shardings)
    else:
      state = jax.jit(lambda: step_lib.init_state(params_fn(), tx), out_shardings=shardings)()
    meta = {"step": 0, "words": 0, "milestones_done": [], "seed": config.seed}
  else:
    state, meta = restored
    train_it.restore(meta["data"])
    print(f"resuming from step {meta['step']} ({meta['words']:,} words seen)")
  atomic_write(workdir / "run_config.json", config.to_json_best_effort(indent=2))

  train_step = step_lib.jit_train_step(step_lib.lm_loss(graphdef), tx, mesh, shardings)
  eval_loss = step_lib.jit_eval_loss(step_lib.lm_loss(graphdef), mesh, shardings["params"])
  batches = _Batches(train_it, t.accum_steps, mesh)
  writer = MetricWriter(workdir) if jax.process_index() == 0 else None
  flops_tok = model_lib.flops_per_token(model_cfg, config.data.seq_len)
  peak = peak_flops(t.peak_flops)
  n_dev = jax.device_count() if jax.default_backend() != "cpu" else 1  # simulated CPU devices share one ceiling

  step, words = int(meta["step"]), int(meta["words"])
  done_marks = set(meta.get("milestones_done", []))
  bar = tqdm(total=total_steps, initial=step, desc="pretrain", unit="step", dynamic_ncols=True,
             disable=jax.process_index() != 0)
  t_last, tok_last, pending = time.perf_counter(), 0.0, None
  last_eval = None

  def save(reached_marks):
    m = {"step": step, "words": words, "data": train_it.state(), "seed": config.seed,
         "rng": {"seed": config.seed, "step": step}, "milestones_done": sorted(done_marks),
         "model": dataclasses.asdict(model_cfg)}
    ckpts.save(state, m, reached_marks)

  def check(metrics, at_step):
    if not bool(metrics["finite"]):
      last = ckpts.latest_step()
      raise LlamalogueError(f"non-finite loss at step {at_step} (loss={float(metrics['loss'])}, "
                            f"grad_norm={float(metrics['grad_norm'])}); stopped, the last good checkpoint "
                            f"is step {last} in {workdir / 'checkpoints' / 'latest'}")

  try:
    while step < total_steps:
      batch, batch_words = batches.next()
      state, metrics = train_step(state, batch)
      if pending is not None:  # check the previous step while this one runs
        check(*pending)
      pending = (metrics, step + 1)
      step += 1
      words += batch_words
      tok_last += t.batch_size * config.data.seq_len
      bar.update(1)
      reached = [m for m in marks if m <= words and m not in done_marks]
      if step == total_steps:  # the final state stands for the last milestone
        reached += [m for m in marks if m not in done_marks and m <= words * 1.05 and m not in reached]
      if step % t.log_every == 0 or step == total_steps:
        check(metrics, step)
        dt = time.perf_counter() - t_last
        tps = tok_last / dt
        scalars = {"train/loss": float(metrics["loss"]), "train/grad_norm": float(metrics["grad_norm"]),
                   "train/lr": float(schedule(step - 1)), "train/words_seen": words, "train/epoch": train_it.epoch,
                   "perf/tokens_per_s": tps, "perf/flops_per_s": tps * flops_tok}
        scalars["perf/mfu"] = tps * flops_tok / (peak * n_dev)
        if writer:
          writer.write(step, scalars)
        bar.set_postfix(loss=f"{scalars['train/loss']:.3f}", words=f"{words/1e6:.2f}M", tok_s=f"{tps:,.0f}")
        t_last, tok_last = time.perf_counter(), 0.0
      if t.eval_every and (step % t.eval_every == 0 or step == total_steps):
        last_eval = _evaluate(eval_loss, state["params"], data_dir, config, mesh)
        if writer and last_eval:
          writer.write(step, {"eval/loss": last_eval, "eval/perplexity": math.exp(min(last_eval, 50))})
      if reached or step % t.checkpoint_every == 0 or step == total_steps:
        check(metrics, step)
        pending = None
        done_marks.update(reached)
        save(reached)
        t_last, tok_last = time.perf_counter(), 0.0  # do not count checkpoint time as training
  finally:
    bar.close()
    if writer:
      writer.close()
    ckpts.close()

  summary = {"steps": step, "words_seen": words, "final_eval_loss": last_eval,
             "milestones": [m for m in marks if m in done_marks], "params": model_lib.count_params(model_cfg),
             "checkpoints": str(workdir / "checkpoints")}
  if jax.process_index() == 0:
    atomic_write(workdir / "summary.json", json.dumps(summary, indent=2))
    print(f"done: {step} steps, {words:,} words seen, eval loss {last_eval}, checkpoints in {workdir / 'checkpoints'}")
  return summary


def _evaluate(eval_loss, params, data_dir: pathlib.Path, config, mesh) -> float | None:
  """Mean next-token loss over the first `train.eval_batches` batches of the validation tokens."""
  from llamalogue.data.iterator import TokenIterator
  path = data_dir / "valid_tokens.npy"
  if not path.exists() or config.train.eval_batches <= 0:
    return None
  it = TokenIterator(path, data_dir / "valid_words.npy", config.train.eval_batch_size, config.data.seq_len,
                     seed=0)
  n_batches = min(config.train.eval_batches, it.steps_per_epoch)
  if n_batches == 0:
    return None
  total, count = 0.0, 0.0
  sh = sharding_lib.batch_sharding(mesh)
  for _ in range(n_batches):
    b = it.next()
    b.pop("words")
    b = {k: jax.device_put(np.asarray(v), sh) for k, v in b.items()}
    s, n = eval_loss(params, b)
    total, count = total + float(s), count + float(n)
  return total / max(count, 1.0)
