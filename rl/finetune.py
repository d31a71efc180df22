"""What the fine-tuning modes (DPO, PPO) share: the base model, the mesh, the run scaffold, the evaluation.

  base = finetune.load_base(config)               # config.init_from -> model config, params, tokenizer
  mesh = finetune.make_mesh(config)
  summary = finetune.run(config, workdir, base, task, total_steps, heldout=...)

`run` hands the mode's `loop.Task` to the one run scaffold (llamalogue/loop.py: checkpoints,
exact resume, the NaN stop, metrics, progress, summary.json) with the base's model config and
tokenizer beside the checkpoints, and when it is done evaluates the base and the result on the
same items (`config.eval`, evaluation/run.py) into DIR/eval/comparison.md.
"""

import dataclasses
import pathlib
from typing import Any, Callable

from flax import nnx

from evaluation.run import evaluate_against_base
from llamalogue import hf, loop
from llamalogue import model as model_lib
from llamalogue import sharding as sharding_lib
from llamalogue import step as step_lib
from llamalogue.errors import ConfigError


@dataclasses.dataclass
class Base:
  """The model a fine-tuning run starts from (and its frozen reference)."""
  spec: str
  cfg: model_lib.LlamaConfig
  graphdef: nnx.GraphDef
  params: dict
  tokenizer: Any


def load_base(config) -> Base:
  """`config.init_from` in the compute dtype of `config.model.dtype`, with its tokenizer."""
  if not config.get("init_from"):
    raise ConfigError("config.init_from: give the base model (our pre-training run or checkpoint, a HF directory "
                      "or hf:<repo id>)")
  model, tokenizer = hf.load(config.init_from, model_lib.compute_dtype(config.model.dtype))
  if tokenizer is None:
    raise ConfigError(f"config.init_from: {config.init_from} has no tokenizer beside it")
  graphdef, params = step_lib.split_model(model)
  return Base(config.init_from, model.cfg, graphdef, params, tokenizer)


def make_mesh(config):
  return sharding_lib.make_mesh(config.mesh.data, config.mesh.fsdp)


def run(config, workdir, base: Base, task: loop.Task, total_steps: int, *, heldout: str = "",
        finish: Callable[[dict, Any], dict] | None = None) -> dict:
  """Runs `task` from `base` to `total_steps` in `workdir`, then (with `config.eval.tasks`) evaluates the
  base and the result; `finish(summary, state)` adds the mode's own fields (reward counters, plots)."""
  workdir = pathlib.Path(workdir)

  def finish_all(summary, state):
    extra = dict(finish(summary, state) or {}) if finish is not None else {}
    if config.eval.tasks:
      extra["evaluation"] = evaluate_against_base(base.spec, workdir, config.eval, heldout)
    return extra

  task.finish = finish_all
  task.meta = {"seed": config.seed, "model": dataclasses.asdict(base.cfg), "init_from": base.spec, **task.meta}
  summary, _ = loop.run_loop(workdir, loop.Settings.from_config(config.train, total_steps), task, config=config,
                             model_cfg=base.cfg, tokenizer_dir=hf.tokenizer_dir_for(base.spec, base.tokenizer, workdir))
  return summary
