"""Orbax checkpoints of a training run.

Layout of a run directory:
  checkpoints/
    milestones/words_<N>/   kept forever, N = the word milestone (1M, 2M, ... 10M, 20M, ...)
    latest/step_<S>/        the newest few, for resuming
    model_config.json       the LlamaConfig of the run
    tokenizer/              tokenizer.json and friends, so a checkpoint is self-contained

Each checkpoint holds the whole train state (params, optimizer state, step) and a JSON
`meta` item: words seen, the rng seed/state, the data-iterator position, the step.
Orbax writes to a temporary directory and renames it when complete, so a killed
run never leaves a checkpoint that looks finished but is not.

Restoring takes target shardings, so a state saved on 8 devices restores onto 1 and back.

Checkpoints written before the decoder layers were stacked hold per-layer arrays
(`params/layers/0/self_attn/q_proj/kernel`, in the params and in the optimizer moments);
both restores here read them and stack the layers at load (`_stored_per_layer`), so
old run directories resume, fine-tune and evaluate as before.
"""

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from llamalogue import model as model_lib
from llamalogue.paths import atomic_write
from llamalogue.errors import DataError

MILESTONES, LATEST = "milestones", "latest"


def _manager(directory: pathlib.Path, prefix: str, max_to_keep: int | None) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, step_prefix=prefix, create=True,
                                         enable_async_checkpointing=False, cleanup_tmp_directories=True)
  return ocp.CheckpointManager(directory.absolute(), options=options)


class RunCheckpoints:
  """The milestone and latest checkpoint managers of one run directory."""

  def __init__(self, run_dir: str | os.PathLike, keep_latest: int = 2):
    self.root = pathlib.Path(run_dir) / "checkpoints"
    self.root.mkdir(parents=True, exist_ok=True)
    self.milestones = _manager(self.root / MILESTONES, "words", None)
    self.latest = _manager(self.root / LATEST, "step", keep_latest)

  def write_run_files(self, model_cfg: model_lib.LlamaConfig, tokenizer_dir: str | os.PathLike | None) -> None:
    atomic_write(self.root / "model_config.json", json.dumps(dataclasses.asdict(model_cfg), indent=2))
    if tokenizer_dir is not None and not (self.root / "tokenizer").exists():
      tmp = self.root / ".tokenizer.tmp"
      shutil.rmtree(tmp, ignore_errors=True)
      tmp.mkdir()
      for f in pathlib.Path(tokenizer_dir).iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
          shutil.copy2(f, tmp / f.name)
      os.replace(tmp, self.root / "tokenizer")

  def save(self, state: Any, meta: dict, milestones: list[int] = ()) -> None:
    """Saves to `latest` (step = meta['step']) and as words_<m> for each milestone m reached."""
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    for m in milestones:  # several at once only in tiny runs: the same state under each name
      if m not in self.milestones.all_steps():
        self.milestones.save(m, args=args)
    if meta["step"] not in self.latest.all_steps():
      self.latest.save(meta["step"], args=args, force=True)

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def restore_latest(self, abstract_state: Any) -> tuple[Any, dict] | None:
    """(state, meta) of the newest complete checkpoint, placed by `abstract_state`'s shardings."""
    step = self.latest.latest_step()
    if step is None:
      return None
    per_layer = _stored_per_layer(self.root / LATEST / f"step_{step}" / "state")
    target = unstack_layers(abstract_state, _abstract_layer) if per_layer else abstract_state
    out = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    state = stack_layers(out["state"], abstract_state) if per_layer else out["state"]
    return state, out["meta"]

  def close(self) -> None:
    self.milestones.close()
    self.latest.close()


# ------------------------------------------------------------------ per-layer checkpoints (before stacking)

def _is_layers_parent(x) -> bool:
  return isinstance(x, dict) and isinstance(x.get("layers"), dict) and 0 not in x["layers"]


def _stored_per_layer(state_dir: pathlib.Path) -> bool:
  """Whether a checkpoint's state holds the decoder layers one by one (`layers/0/...`, the old layout)."""
  try:
    tree = ocp.Checkpointer(ocp.PyTreeCheckpointHandler()).metadata(state_dir.absolute()).item_metadata
  except Exception:  # unreadable metadata: let the restore itself say what is wrong
    return False
  found = []

  def walk(node):
    if isinstance(node, dict):
      if isinstance(node.get("layers"), dict) and "0" in node["layers"]:
        found.append(True)
      for v in node.values():
        walk(v)
    elif isinstance(node, (list, tuple)):
      for v in node:
        walk(v)

  walk(dict(getattr(tree, "tree", tree) or {}))
  return bool(found)


def _abstract_layer(x, i: int):
  """Layer i of a stacked ShapeDtypeStruct: the leading axis dropped, from its shape and its sharding."""
  sharding = getattr(x, "sharding", None)
  if isinstance(sharding, jax.sharding.NamedSharding):
    sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*tuple(sharding.spec)[1:]))
  return jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=sharding)


def unstack_layers(tree: Any, layer_fn) -> Any:
  """`tree` with every stacked `layers` subtree replaced by the old per-layer `{0: ..., 1: ...}` form;
  `layer_fn(leaf, i)` gives layer i of a leaf."""
  def split(parent):
    n = jax.tree.leaves(parent["layers"])[0].shape[0]
    layers = {i: jax.tree.map(lambda x, i=i: layer_fn(x, i), parent["layers"]) for i in range(n)}
    return {**parent, "layers": layers}
  return jax.tree.map(lambda x: split(x) if _is_layers_parent(x) else x, tree, is_leaf=_is_layers_parent)


def stack_layers(tree: Any, like: Any) -> Any:
  """The inverse of `unstack_layers`: per-layer subtrees stacked, placed as `like` (an abstract stacked tree)."""
  is_old = lambda x: isinstance(x, dict) and isinstance(x.get("layers"), dict) and 0 in x["layers"]

  def join(parent):
    layers = parent["layers"]
    return {**parent, "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *[layers[i] for i in range(len(layers))])}

  stacked = jax.tree.map(lambda x: join(x) if is_old(x) else x, tree, is_leaf=is_old)
  return jax.tree.map(lambda x, a: jax.device_put(x, a.sharding) if getattr(a, "sharding", None) else x, stacked, like)


def milestone_dirs(run_dir: str | os.PathLike) -> list[tuple[int, pathlib.Path]]:
  """[(words, checkpoint dir)] of a run's milestone checkpoints, by words seen."""
  root = pathlib.Path(run_dir) / "checkpoints" / MILESTONES
  out = []
  for d in root.glob("words_*") if root.exists() else []:
    suffix = d.name[len("words_"):]
    if suffix.isdigit() and (d / "state").exists():
      out.append((int(suffix), d))
  return sorted(out)


def _find_checkpoint(path: pathlib.Path) -> pathlib.Path:
  """A concrete checkpoint dir from a step dir, a run dir or a checkpoints dir (newest)."""
  if (path / "state").exists():
    return path
  for root in (path / "checkpoints" / LATEST, path / LATEST, path):
    steps = sorted((d for d in root.glob("step_*") if (d / "state").exists()),
                   key=lambda d: int(d.name.split("_")[1])) if root.exists() else []
    if steps:
      return steps[-1]
  raise DataError(f"{path}: not a checkpoint, a run directory or a Hugging Face model directory")


def _run_root(ckpt: pathlib.Path) -> pathlib.Path:
  for parent in ckpt.parents:
    if (parent / "model_config.json").exists():
      return parent
  raise DataError(f"{ckpt}: no model_config.json beside the checkpoint (expected in its checkpoints/ dir)")


def load_model(path: str | os.PathLike, dtype: str = "float32"):
  """(model, tokenizer or None) from one of our checkpoints or run directories."""
  from flax import nnx
  from llamalogue import hf

  ckpt = _find_checkpoint(pathlib.Path(path))
  root = _run_root(ckpt)
  cfg_dict = json.loads((root / "model_config.json").read_text())
  fields = {f.name for f in dataclasses.fields(model_lib.LlamaConfig)}
  cfg_dict = {k: v for k, v in cfg_dict.items() if k in fields}    # an older file's `scan_layers`: gone
  cfg = dataclasses.replace(model_lib.LlamaConfig(**cfg_dict), dtype=dtype).validate()
  graphdef, abstract = model_lib.abstract_model(cfg)
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), model_lib.pure_dict(abstract))
  # A PPO state keeps the language model under params/policy (beside its value head).
  wrap = (lambda t: {"policy": t}) if "ppo" in read_meta(ckpt) else (lambda t: t)
  per_layer = _stored_per_layer(ckpt / "state")
  item = unstack_layers(target, _abstract_layer) if per_layer else target
  ckptr = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
  restored = ckptr.restore((ckpt / "state").absolute(), args=ocp.args.PyTreeRestore(
      item={"params": wrap(item)},
      restore_args={"params": wrap(jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=one), item))},
      partial_restore=True))
  params = restored["params"]["policy"] if "ppo" in read_meta(ckpt) else restored["params"]
  params = stack_layers(params, target) if per_layer else params
  model = nnx.merge(graphdef, params)
  tokenizer = hf.load_tokenizer(root / "tokenizer", cfg.vocab_size) if (root / "tokenizer").exists() else None
  return model, tokenizer


def read_meta(ckpt: str | os.PathLike) -> dict:
  return json.loads((pathlib.Path(ckpt) / "meta" / "metadata").read_text()) if (
      pathlib.Path(ckpt) / "meta" / "metadata").exists() else {}
