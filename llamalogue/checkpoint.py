"""Orbax checkpoints of a training run.

Layout of a run directory:
  checkpoints/
    milestones/words_<N>/   kept forever, N = the word milestone (1M, 2M, ... 10M, 20M, ...)
    latest/step_<S>/        the newest few, for resuming
    model_config.json       the LlamaConfig of the run
    tokenizer/              tokenizer.json and friends, so a checkpoint is self-contained

A `latest` checkpoint holds the whole train state (params, optimizer state, step) and a JSON
`meta` item: words seen, the rng seed/state, the data-iterator position, the step. A milestone
holds only what evaluation reads: `{"params": ...}` and the same meta (a third of the bytes).
Orbax writes to a temporary directory and renames it when complete, so a killed
run never leaves a checkpoint that looks finished but is not.

Faults (llamalogue/faults.py): a save first checks the free space against the state's byte size;
a save that fails anyway (a full disk) removes its partial checkpoint and stops with one line. A
newest checkpoint that does not read is moved aside (`step_<S>.corrupt-<time>`, a name orbax does not
take for a step) and the newest readable one is restored; when none reads, nothing is touched.

Restoring takes target shardings, so a state saved on 8 devices restores onto 1 and back.

Checkpoints written before the decoder layers were stacked hold per-layer arrays
(`params/layers/0/self_attn/q_proj/kernel`, in the params and in the optimizer moments);
both restores here read them and stack the layers at load (`_stored_per_layer`), so
old run directories resume, fine-tune and evaluate as before.
"""

import dataclasses
import json
import logging
import os
import pathlib
import re
import shutil
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from llamalogue import faults
from llamalogue import model as model_lib
from llamalogue.paths import atomic_write
from llamalogue.errors import DataError, LlamalogueError

MILESTONES, LATEST = "milestones", "latest"


class _ItemMetadataNote(logging.Filter):
  """Orbax warns that `<step>/state/_CHECKPOINT_METADATA` is missing whenever one item of a step is read
  on its own (`load_model`, the layout probe): that file lives one level up, in the step directory, so
  the warning says nothing wrong; it is dropped, every other orbax message is kept."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.getMessage().startswith("Metadata file does not exist")
                and "_CHECKPOINT_METADATA" in record.getMessage())


logging.getLogger("absl").addFilter(_ItemMetadataNote())


COMMIT_MARKER = "commit_success.txt"   # orbax writes it once every process's part of a step is on disk


def _manager(directory: pathlib.Path, prefix: str, max_to_keep: int | None) -> ocp.CheckpointManager:
  # Leftovers of a killed save are removed here, synchronously: orbax's own cleanup runs in a thread
  # that a run stopping early (a full disk) would leave to fail noisily at interpreter exit.
  if jax.process_index() == 0 and directory.is_dir():
    for tmp in directory.glob(f"{prefix}_*.orbax-checkpoint-tmp*"):
      shutil.rmtree(tmp, ignore_errors=True)
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, step_prefix=prefix, create=True,
                                         enable_async_checkpointing=False, cleanup_tmp_directories=False)
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
    """Saves to `latest` (step = meta['step'], the whole state) and as words_<m> (params only) for each
    milestone m reached. Raises DiskFull (nothing written, or the partial checkpoint removed) when the
    disk cannot hold them; every earlier checkpoint stays as it was."""
    todo = [(self.milestones, "words", m, milestone_state(state)) for m in milestones  # several only in tiny runs
            if m not in self.milestones.all_steps()]
    if meta["step"] not in self.latest.all_steps():
      todo.append((self.latest, "step", meta["step"], state))
    if not todo:
      return
    names = ", ".join(f"{prefix}_{n}" for _, prefix, n, _ in todo)
    faults.check_free(self.root, int(1.02 * sum(nbytes(s) for *_, s in todo)) + (256 << 10) * len(todo),
                      f"checkpoint {names}", self._resume_hint())
    for manager, prefix, n, item in todo:
      args = ocp.args.Composite(state=ocp.args.StandardSave(item), meta=ocp.args.JsonSave(meta))
      force = manager is self.latest
      _, failure = faults.attempt(lambda: manager.save(n, args=args, force=force))
      if failure is not None:
        where = pathlib.Path(str(manager.directory)) / f"{prefix}_{n}"
        if self._remove_partial(manager, f"{prefix}_{n}"):
          # Committed by every process, then the save's closing sync failed (a peer lost after the
          # commit): the checkpoint is whole and stays; the run stops on the failure.
          raise LlamalogueError(f"{where}: checkpoint written, but the save failed after its commit "
                                f"({failure.reason}); it is kept{self._resume_hint()}")
        if failure.disk_full:
          raise faults.DiskFull(
              f"{where}: disk full while writing the checkpoint (it needs about {faults.mb(nbytes(item))}, "
              f"{faults.mb(faults.free_bytes(self.root))} free now); the partial checkpoint was removed, earlier "
              f"ones are intact; free some space and rerun the same command{self._resume_hint()}")
        raise LlamalogueError(f"{where}: checkpoint not written ({failure.reason}); the partial checkpoint was "
                              f"removed{self._resume_hint()}")

  def _resume_hint(self) -> str:
    step = self.latest.latest_step()
    return f" (it resumes from step_{step})" if step is not None else " (it starts afresh: no checkpoint yet)"

  def _remove_partial(self, manager: ocp.CheckpointManager, name: str) -> bool:
    """Removes what a failed save of `name` left: its orbax temporary directory, or a finalised directory
    without its commit marker. A committed one (`commit_success.txt`: every process's part written) is
    kept; returns True then."""
    root = pathlib.Path(str(manager.directory))
    committed = (root / name / COMMIT_MARKER).exists()
    if jax.process_index() == 0:
      for d in root.glob(f"{name}*"):
        if (d.name == name and not committed) or d.name.startswith(f"{name}.orbax-checkpoint-tmp"):
          shutil.rmtree(d, ignore_errors=True)
    faults.attempt(manager.reload)
    return committed

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def restore_latest(self, abstract_state: Any) -> tuple[Any, dict] | None:
    """(state, meta) of the newest checkpoint that reads, placed by `abstract_state`'s shardings.

    Newer ones that do not read are moved aside (one line each, never deleted). When none reads,
    raises DataError and touches nothing."""
    unreadable = []
    for step in sorted(self.latest.all_steps(), reverse=True):
      # a checkpoint written before the layers were stacked (`layers/0/...`) is read per layer, then stacked
      per_layer = _stored_per_layer(self.root / LATEST / f"step_{step}" / "state")
      target = unstack_layers(abstract_state, _abstract_layer) if per_layer else abstract_state
      args = ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
      out, failure = faults.attempt(lambda: self.latest.restore(step, args=args))
      if failure is None:
        for bad, why in unreadable:
          self._move_aside(bad, why, step)
        return (stack_layers(out["state"], abstract_state) if per_layer else out["state"]), out["meta"]
      unreadable.append((step, failure))
    if unreadable:
      step, why = unreadable[0]
      others = f" (nor do the {len(unreadable) - 1} older ones)" if len(unreadable) > 1 else ""
      raise DataError(f"{self.root / LATEST / f'step_{step}'}: checkpoint does not read ({why.reason}){others}; no "
                      "readable checkpoint to resume from, nothing was moved or overwritten; move "
                      f"{self.root / LATEST} away to start afresh")
    return None

  def _move_aside(self, step: int, why: faults.Failure, resumed: int) -> None:
    src = self.root / LATEST / f"step_{step}"
    dst = src.with_name(f"{src.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
    while dst.exists():
      dst = dst.with_name(dst.name + "x")
    if jax.process_index() == 0:
      os.replace(src, dst)
    print(f"{src}: checkpoint does not read ({why.reason}); moved aside to {dst.name}, resuming from "
          f"step_{resumed}", file=sys.stderr, flush=True)
    faults.attempt(self.latest.reload)

  def close(self) -> None:
    faults.attempt(self.milestones.close)  # after a failed save orbax may complain again: said already
    faults.attempt(self.latest.close)


def milestone_state(state: Any) -> Any:
  """What a milestone keeps of a train state: its params (evaluation reads nothing else)."""
  return {"params": state["params"]} if isinstance(state, dict) and "params" in state else state


def nbytes(tree: Any) -> int:
  """Bytes of the arrays of `tree` (global shapes: what a checkpoint of it writes, before compression)."""
  return int(sum(np.prod(np.shape(x), dtype=np.int64) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)
                 if hasattr(x, "dtype")))


# ---------------------------------------------------------------------------- finding checkpoints

_CONTAINERS = ("checkpoints", "milestones", "latest")


def run_root(path: pathlib.Path) -> pathlib.Path:
  """The run directory above `checkpoints/[milestones|latest]/...` containers."""
  path = pathlib.Path(path).expanduser().resolve()
  while path.name in _CONTAINERS and path.parent != path:
    path = path.parent
  return path


_SEED_DIR = re.compile(r"^seed_\d+$")


def checkpoint_name(init_from: str) -> str:
  """The folder name an evaluation gives a model (DIR/eval/<name>/): `hf:org/x` -> `org_x`;
  `<run>/checkpoints/.../<c>` -> `<run>-<c>`; a seed run `<stage>/seed_<k>` -> `<stage>-seed_<k>` (the seed
  runs of two stages must not collide)."""
  if init_from.startswith("hf:"):
    return init_from[3:].replace("/", "_")
  p = pathlib.Path(init_from).expanduser().resolve()
  if p.parent.name in _CONTAINERS:
    return f"{run_root(p.parent).name}-{p.name}"
  if _SEED_DIR.match(p.name):
    return f"{p.parent.name}-{p.name}"
  return p.name


_WORDS = re.compile(r"^words_(\d+)([kKmMbB]?)$")
_SCALE = {"": 1, "k": 1_000, "m": 1_000_000, "b": 1_000_000_000}


def words_from_name(name: str) -> int | None:
  """`words_2000000` or `words_2M` -> 2_000_000; None if the name is not a milestone."""
  m = _WORDS.match(name)
  return int(m.group(1)) * _SCALE[m.group(2).lower()] if m else None


def find_milestones(run_dir: str) -> list[tuple[int, pathlib.Path]]:
  """(words seen, checkpoint dir) of every milestone `words_<N>` of a run, fewest words first.

  Looks in `<run>/checkpoints/milestones/` (llamalogue/checkpoint.py's layout), then
  `<run>/checkpoints/` and `<run>/`; a milestone is an orbax checkpoint (`state/`) or
  a Hugging Face directory (`config.json`).
  """
  root = run_root(pathlib.Path(run_dir))
  for folder in (root / "checkpoints" / "milestones", root / "checkpoints", root):
    if not folder.is_dir():
      continue
    found = sorted((words_from_name(d.name), d) for d in folder.iterdir()
                   if d.is_dir() and words_from_name(d.name) is not None
                   and ((d / "state").exists() or (d / "config.json").exists()))
    if found:
      return found
  raise DataError(f"config.init_from: no milestone checkpoints words_<N> under {root}/checkpoints/milestones "
                  "(trajectory mode needs a pre-training workdir)")


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




def _find_checkpoint(path: pathlib.Path) -> pathlib.Path:
  """A concrete checkpoint dir from a step dir, a run dir or a checkpoints dir (newest)."""
  if (path / "state").exists():
    return path
  for root in (path / "checkpoints" / LATEST, path / LATEST, path):
    steps = sorted((d for d in root.glob("step_*") if d.name[5:].isdigit() and (d / "state").exists()),
                   key=lambda d: int(d.name[5:])) if root.exists() else []
    if steps:
      return steps[-1]
  raise DataError(f"{path}: not a model: not a checkpoint or run directory of ours (no state/, no checkpoints/latest/"
                  "step_<N>) nor a Hugging Face model directory (no config.json)")


def _config_root(ckpt: pathlib.Path) -> pathlib.Path:
  """The `checkpoints/` directory above a checkpoint: it holds model_config.json and the tokenizer."""
  for parent in ckpt.parents:
    if (parent / "model_config.json").exists():
      return parent
  raise DataError(f"{ckpt}: no model_config.json beside the checkpoint (expected in its checkpoints/ dir)")


def load_model(path: str | os.PathLike, dtype: str = "float32"):
  """(model, the directory of its tokenizer or None) from one of our checkpoints or run directories
  (llamalogue/hf.py `load` is the front that takes any model spec and loads the tokenizer too)."""
  ckpt = _find_checkpoint(pathlib.Path(path))
  root = _config_root(ckpt)
  cfg_dict = json.loads((root / "model_config.json").read_text())
  fields = {f.name for f in dataclasses.fields(model_lib.LlamaConfig)}
  cfg_dict = {k: v for k, v in cfg_dict.items() if k in fields}    # an older file's `scan_layers`: gone
  cfg = dataclasses.replace(model_lib.LlamaConfig(**cfg_dict), dtype=dtype).validate()
  graphdef, abstract = model_lib.abstract_model(cfg)
  one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), model_lib.pure_dict(abstract))
  # A PPO state keeps the language model under params/policy (beside its value head).
  wrap = (lambda t: {"policy": t}) if "ppo" in read_meta(ckpt) else (lambda t: t)
  per_layer = _stored_per_layer(ckpt / "state")
  item = unstack_layers(target, _abstract_layer) if per_layer else target
  ckptr = ocp.Checkpointer(ocp.PyTreeCheckpointHandler())
  restored, failure = faults.attempt(lambda: ckptr.restore((ckpt / "state").absolute(), args=ocp.args.PyTreeRestore(
      item={"params": wrap(item)},
      restore_args={"params": wrap(jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=one), item))},
      partial_restore=True)))
  if failure is not None:
    raise DataError(f"{ckpt}: checkpoint does not read ({failure.reason})")
  params = restored["params"]["policy"] if "ppo" in read_meta(ckpt) else restored["params"]
  params = stack_layers(params, target) if per_layer else params
  return nnx.merge(graphdef, params), (root / "tokenizer" if (root / "tokenizer").exists() else None)


def read_meta(ckpt: str | os.PathLike) -> dict:
  return json.loads((pathlib.Path(ckpt) / "meta" / "metadata").read_text()) if (
      pathlib.Path(ckpt) / "meta" / "metadata").exists() else {}
