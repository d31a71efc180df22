"""The device mesh and the few partition rules; nothing else in the project knows about devices.

A `('data', 'fsdp')` mesh: batches are split over both axes, parameters and optimizer
state over `fsdp` (ZeRO-3 style: XLA gathers them for each matmul). A rule names which
dimension of a parameter goes on `fsdp`, counted from the end, so that one rule serves a
`[D, F]` kernel and the decoder layers' stacked `[layers, D, F]` (the layer axis is never
split: the scan over layers slices it); a dimension that does not divide evenly stays
replicated. The step functions are `jax.jit` with `in_shardings`/`out_shardings`.
"""

import re
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from llamalogue.errors import ConfigError

BATCH_AXES = ("data", "fsdp")

# (regex on the '/'-joined parameter path, dimension to shard over 'fsdp' counted from the end:
# -1 the last); first match wins.
RULES: tuple[tuple[str, int | None], ...] = (
    (r"embed_tokens", -2),                                 # [V, D]: shard the vocabulary
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj)/kernel", -1),  # [(L,) D, out]: shard the output
    (r"(o_proj|down_proj)/kernel", -2),                    # [(L,) in, D]: shard the input
    (r"lm_head/kernel", -1),                               # [D, V]
    (r".*", None),                                         # norms, scalars: replicated
)


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
  """A ('data', 'fsdp') mesh over `devices` (default: all); -1 takes what is left.

  Axis types are given explicitly as Auto: shardings are fixed at the jit boundary
  (in/out shardings) and XLA propagates them inside the step.
  """
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  if data == -1 and fsdp == -1:
    raise ConfigError("config.mesh: data and fsdp cannot both be -1")
  if data == -1:
    data = n // fsdp if fsdp and n % fsdp == 0 else 0
  if fsdp == -1:
    fsdp = n // data if data and n % data == 0 else 0
  if data * fsdp != n or data < 1:
    raise ConfigError(f"config.mesh: data={data} x fsdp={fsdp} does not match the {n} available devices")
  return jax.make_mesh((data, fsdp), ("data", "fsdp"), axis_types=(AxisType.Auto, AxisType.Auto),
                       devices=devices)


def _path_str(path) -> str:
  parts = []
  for k in path:
    parts.append(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))))
  return "/".join(parts)


def spec_for(path: str, shape: tuple[int, ...], fsdp_size: int) -> P:
  """The PartitionSpec of one array by the rule table."""
  for pattern, dim in RULES:
    if re.search(pattern, path):
      if dim is None or len(shape) < -dim or shape[dim] % fsdp_size or fsdp_size == 1:
        return P()
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
  """NamedShardings for params, optimizer state or a whole train state, by path."""
  fsdp_size = mesh.shape["fsdp"]
  return jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(mesh, spec_for(_path_str(path), np.shape(x), fsdp_size)), tree)


def batch_sharding(mesh: Mesh, leading_dims: int = 0) -> NamedSharding:
  """Batch arrays `[*leading, B, ...]`: B split over ('data', 'fsdp')."""
  return NamedSharding(mesh, P(*([None] * leading_dims), BATCH_AXES))


def batch_shards(mesh: Mesh) -> int:
  """How many ways `batch_sharding` splits the batch axis."""
  return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard(tree: Any, shardings: Any) -> Any:
  """Places a host tree onto the mesh."""
  return jax.device_put(tree, shardings)
