"""Pre-training: CHILDES tokens -> a Llama, with word-milestone checkpoints and exact resume.

  python main.py --config=configs/pretrain.py --workdir=DIR

The data pipeline runs first if its outputs are missing. The loop saves a checkpoint at
every word milestone (kept) and every `train.checkpoint_every` steps (the newest few,
for resuming); rerunning the same command after a crash or a kill resumes from the
newest one, bit-identical on CPU to an uninterrupted run.
"""

import dataclasses
import pathlib

import jax
import numpy as np

from llamalogue import hf
from llamalogue import loop
from llamalogue import model as model_lib
from llamalogue import sharding as sharding_lib
from llamalogue import step as step_lib
from llamalogue.data.iterator import TokenIterator
from llamalogue.data.prepare import ensure_prepared
from llamalogue.errors import ConfigError


def milestones(words_per_epoch: int, epochs: int) -> list[int]:
  """BabyLM word milestones scaled to the budget: 1/10 ... 10/10 of one epoch, then 2 ... `epochs` epochs."""
  first = [words_per_epoch * k // 10 for k in range(1, 11)]
  return sorted(set(first + [words_per_epoch * k for k in range(2, epochs + 1)]))


class _Batches:
  """Global batches `[A, B/A, L]` on the mesh, from a per-process TokenIterator."""

  def __init__(self, iterator, accum: int, mesh):
    self.it, self.accum = iterator, accum
    self.sharding = sharding_lib.batch_sharding(mesh, leading_dims=1)

  @property
  def epoch(self) -> int:
    return self.it.epoch

  def state(self) -> dict:
    return self.it.state()

  def restore(self, state: dict) -> None:
    self.it.restore(state)

  def next(self) -> tuple[dict, dict]:
    batch = self.it.next()
    words = int(batch.pop("words"))
    local = {k: np.asarray(v).reshape(self.accum, -1, *np.shape(v)[1:]) for k, v in batch.items()}
    glob = {k: jax.make_array_from_process_local_data(self.sharding, v) for k, v in local.items()}
    tokens = int(np.size(local["inputs"])) * jax.process_count()
    return glob, {"words": words, "tokens": tokens}


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
  _validate(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  # continue pre-training a HF model or a checkpoint of ours: checked before any data work
  loaded = hf.load(config.init_from)[0] if config.get("init_from") else None
  data_dir = pathlib.Path(ensure_prepared(config, str(workdir)))
  tokenizer = hf.load_tokenizer(data_dir)
  model_cfg, init_params = _model(config, tokenizer, data_dir, loaded)
  t = config.train
  mesh = sharding_lib.make_mesh(config.mesh.data, config.mesh.fsdp)
  train_it = TokenIterator(data_dir / "train_tokens.npy", data_dir / "train_words.npy", t.batch_size // jax.process_count(),
                           config.data.seq_len, config.seed, shard_index=jax.process_index(),
                           shard_count=jax.process_count())
  total_steps = t.max_steps or t.epochs * train_it.steps_per_epoch
  tx, schedule = step_lib.make_optimizer(config.optimizer, total_steps)
  if init_params is not None:  # continue pre-training a HF model or a checkpoint of ours
    layout = step_lib.state_layout(lambda p: step_lib.init_state(p, tx), mesh, init_params)
  else:
    layout = step_lib.pretrain_layout(model_cfg, tx, mesh, jax.random.key(config.seed))
  graphdef = model_lib.abstract_model(model_cfg)[0]
  eval_loss = step_lib.jit_eval_loss(step_lib.lm_loss(graphdef), mesh, layout.shardings["params"])

  def evaluate(state):
    loss = _evaluate(eval_loss, state["params"], data_dir, config, mesh)
    return {"eval/loss": loss, "eval/perplexity": loop.perplexity(loss)} if loss is not None else {}

  def finish(summary, state):
    loss = summary["final_eval"].get("eval/loss")
    print(f"done: {summary['steps']} steps, {summary['words_seen']:,} words seen, eval loss {loss}, "
          f"checkpoints in {workdir / 'checkpoints'}")
    return {"final_eval_loss": loss, "params": model_lib.count_params(model_cfg)}

  task = loop.Task(
      name="pretrain", batches=_Batches(train_it, t.accum_steps, mesh), layout=layout,
      step=step_lib.jit_train_step(step_lib.lm_loss(graphdef), tx, mesh, layout.shardings), schedule=schedule,
      scalars=lambda m, step: {"train/loss": float(m["loss"]), "train/grad_norm": float(m["grad_norm"])},
      evaluate=evaluate, milestones=_milestones(config, data_dir),
      flops_per_token=model_lib.flops_per_token(model_cfg, config.data.seq_len),
      meta={"seed": config.seed, "model": dataclasses.asdict(model_cfg)}, finish=finish)
  summary, _ = loop.run_loop(workdir, loop.Settings.from_config(t, total_steps), task, config=config,
                             model_cfg=model_cfg, tokenizer_dir=data_dir)
  return summary


def _model(config, tokenizer, data_dir: pathlib.Path, loaded=None):
  """(LlamaConfig, initial params or None): the preset sized to the tokenizer, or `loaded` (`init_from`'s model)."""
  init_params = None
  if loaded is not None:
    model_cfg = loaded.cfg
    init_params = step_lib.split_model(loaded)[1]
  else:
    model_cfg = model_lib.config_from(config.model, vocab_size=len(tokenizer))
  model_cfg = dataclasses.replace(model_cfg, dtype=model_lib.compute_dtype(config.model.dtype),
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
  return model_cfg, init_params


def _milestones(config, data_dir: pathlib.Path) -> list[int]:
  """The word milestones of the run: `train.milestones`, else the budget's (named by the nominal budget
  when the split fills it: 1M ... 100M for the study)."""
  if config.train.get("milestones"):
    try:
      return sorted({int(float(x)) for x in config.train.milestones.split(",") if x.strip()})
    except ValueError as e:
      raise ConfigError(f"config.train.milestones: {config.train.milestones!r} is not a comma-separated list of "
                        "word counts") from e
  words_per_epoch = int(np.load(data_dir / "train_words.npy", mmap_mode="r").sum(dtype=np.int64))
  nominal = config.data.max_words if words_per_epoch >= 0.99 * config.data.max_words else words_per_epoch
  return milestones(nominal, config.train.epochs)


def _evaluate(eval_loss, params, data_dir: pathlib.Path, config, mesh) -> float | None:
  """Mean next-token loss over `train.eval_batches` batches of validation windows (a fixed shuffle, seed 0)."""
  path = data_dir / "valid_tokens.npy"
  if not path.exists() or config.train.eval_batches <= 0:
    return None
  it = TokenIterator(path, data_dir / "valid_words.npy", config.train.eval_batch_size, config.data.seq_len,
                     seed=0)
  total, count = 0.0, 0.0
  sh = sharding_lib.batch_sharding(mesh)
  for _ in range(min(config.train.eval_batches, it.steps_per_epoch)):
    b = it.next()
    b.pop("words")
    s, n = eval_loss(params, {k: jax.device_put(np.asarray(v), sh) for k, v in b.items()})
    total, count = total + float(s), count + float(n)
  return total / count if count else None
