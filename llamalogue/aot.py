"""Ahead-of-time compilation for TPU slices on a machine without a TPU.

libtpu compiles TPU programs on any x86 Linux host: `topology(name)` gives the compile-only
devices of a slice (`jax.experimental.topologies.get_topology_desc`), a mesh over them
places `jax.ShapeDtypeStruct` arguments, and `jax.jit(...).lower(...).compile()` runs the
whole TPU compiler. `compile_entry` measures one jitted function that way: lower and compile
seconds, per-chip HBM from `memory_analysis()`, and what the TPU HLO must not contain.

libtpu lives in its own directory, not in the main environment: installed there, it
makes every ordinary CPU start print libtpu's initialisation errors (it looks for TPU
metadata and worker hostnames), and it weighs 0.7 GB. Install it once with
`install_command()` (`pip install --no-deps --target ~/.cache/llamalogue/libtpu
libtpu==0.0.42.1`, the version `jax[tpu]==0.10.2` pins; `$LLAMALOGUE_LIBTPU` moves it);
`enable()` points jax at it (`TPU_LIBRARY_PATH`) for this process only, CPU backend kept.
libtpu takes a lock file (/tmp/libtpu_lockfile) per process unless `ALLOW_MULTIPLE_LIBTPU_LOAD`
is set; nothing runs on a TPU here, so `enable()` sets it and several processes may compile.
"""

import dataclasses
import os
import pathlib
import re
import sys
import time
from typing import Any, Callable

import jax
import numpy as np

LIBTPU_VERSION = "0.0.42.1"     # what jax[tpu]==0.10.2 requires (libtpu==0.0.42.*)
GiB = 1 << 30
_CONST_LIMIT = 1 << 20


def libtpu_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("LLAMALOGUE_LIBTPU", "~/.cache/llamalogue/libtpu")).expanduser()


def install_command() -> str:
  return f"{sys.executable} -m pip install --no-deps --target {libtpu_dir()} libtpu=={LIBTPU_VERSION}"


def libtpu_path() -> pathlib.Path | None:
  """libtpu.so: $TPU_LIBRARY_PATH, else the one kept apart, else one installed in this environment."""
  if os.environ.get("TPU_LIBRARY_PATH") and pathlib.Path(os.environ["TPU_LIBRARY_PATH"]).is_file():
    return pathlib.Path(os.environ["TPU_LIBRARY_PATH"])
  kept = libtpu_dir() / "libtpu" / "libtpu.so"
  if kept.is_file():
    return kept
  try:
    import libtpu  # a jax[tpu] install
    return pathlib.Path(libtpu.get_library_path())
  except ImportError:
    return None


def enable() -> str | None:
  """Prepares this process to compile for TPU (CPU stays the runtime backend); the reason if it cannot.

  Safe after jax has started on CPU: the TPU plugin loads when the first topology is asked for.
  """
  path = libtpu_path()
  if path is None:
    return f"libtpu is not installed ({install_command()})"
  os.environ["TPU_LIBRARY_PATH"] = str(path)
  os.environ["TPU_SKIP_MDS_QUERY"] = "1"              # no metadata server: this is not a TPU VM
  os.environ["ALLOW_MULTIPLE_LIBTPU_LOAD"] = "1"       # compile-only: no device to guard
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("TPU_STDERR_LOG_LEVEL", "3")
  os.environ.setdefault("TPU_MIN_LOG_LEVEL", "3")
  return None


# ---------------------------------------------------------------------------- chips and slices

@dataclasses.dataclass(frozen=True)
class Chip:
  """Per-chip figures from Google Cloud's TPU pages (`source`)."""
  name: str
  peak_bf16_flops: float
  hbm_bytes: float
  hbm_bytes_per_s: float
  source: str


CHIPS = {
    "v4": Chip("v4", 275e12, 32 * GiB, 1200e9, "cloud.google.com/tpu/docs/v4: 275 TFLOPs bf16, 32 GiB, 1200 GBps"),
    "v5e": Chip("v5e", 197e12, 16e9, 819e9, "cloud.google.com/tpu/docs/v5e: 197 TFLOPs bf16, 16 GB, 819 GBps"),
    "v5p": Chip("v5p", 459e12, 95e9, 2765e9, "cloud.google.com/tpu/docs/v5p: 459 TFLOPs bf16, 95 GB, 2765 GBps"),
    "v6e": Chip("v6e", 918e12, 32e9, 1638e9, "cloud.google.com/tpu/docs/v6e: 918 TFLOPs bf16, 32 GB, 1638 GBps"),
}


@dataclasses.dataclass(frozen=True)
class Slice:
  """A TPU slice as a VM offers it: topology name, chips per host (`chips_per_host_bounds`),
  megacore (v4/v5p: one device per chip, both TensorCores)."""
  topology: str
  label: str
  chips_per_host: tuple[int, int, int]
  megacore: bool = False

  @property
  def chip(self) -> Chip:
    return CHIPS[self.topology.split(":")[0]]


SLICES = {
    "v4:2x2x1": Slice("v4:2x2x1", "v4-8", (2, 2, 1), megacore=True),
    "v5e:2x4": Slice("v5e:2x4", "v5e-8", (2, 4, 1)),
    "v5p:2x2x1": Slice("v5p:2x2x1", "v5p-8", (2, 2, 1), megacore=True),
    "v6e:2x4": Slice("v6e:2x4", "v6e-8", (2, 4, 1)),
    "v5e:4x8": Slice("v5e:4x8", "v5e-32", (2, 4, 1)),          # 4 hosts of 8 chips
    "v5e:2x2": Slice("v5e:2x2", "v5e-4", (2, 2, 1)),           # the tests' slice
}


def topology(name: str):
  """The compile-only devices of a slice in `SLICES` (call `enable()` first)."""
  from jax.experimental import topologies
  from llamalogue.errors import ConfigError
  if name not in SLICES:
    raise ConfigError(f"--topologies: unknown topology {name!r}; choose from {', '.join(SLICES)}")
  s = SLICES[name]
  kwargs = {"chips_per_host_bounds": s.chips_per_host}
  if s.megacore:
    kwargs["chip_config_name"] = "megacore"
  return topologies.get_topology_desc(platform="tpu", topology_name=name, **kwargs)


# ---------------------------------------------------------------------------- compile and inspect

def hlo_constants(text: str) -> list[tuple[str, int]]:
  """(type, bytes) of every constant in StableHLO (`stablehlo.constant ... : tensor<4x8xf32>`) or HLO
  (`f32[4,8]{1,0} constant(...)`, TPU layouts included) text."""
  sizes = {"f64": 8, "f32": 4, "f16": 2, "bf16": 2, "i64": 8, "i32": 4, "i16": 2, "i8": 1, "i1": 1,
           "ui64": 8, "ui32": 4, "ui16": 2, "ui8": 1, "s64": 8, "s32": 4, "s16": 2, "s8": 1,
           "u64": 8, "u32": 4, "u16": 2, "u8": 1, "pred": 1}
  found = []
  for dims, dt in re.findall(r"stablehlo\.constant .*?: tensor<((?:\d+x)*)(\w+)>", text):
    shape = [int(d) for d in dims.split("x") if d]
    found.append((f"tensor<{dims}{dt}>", int(np.prod(shape, dtype=np.int64)) * sizes.get(dt, 4)))
  for dt, dims in re.findall(r"= (\w+)\[([\d,]*)\](?:\{[^}]*\})? constant\(", text):
    shape = [int(d) for d in dims.split(",") if d]
    found.append((f"{dt}[{dims}]", int(np.prod(shape, dtype=np.int64)) * sizes.get(dt, 4)))
  return found


_HOST_PATTERNS = (
    (r"custom_call_target=\"[^\"]*callback[^\"]*\"", "host callback"),
    (r"is_host_transfer=true", "host transfer (send/recv)"),
    (r"\b(infeed|outfeed)\(", "infeed/outfeed"),
)


def hlo_problems(text: str) -> list[str]:
  """What a TPU step must not hold: host callbacks or transfers, constants over 1 MiB (one line each)."""
  problems = []
  for pattern, what in _HOST_PATTERNS:
    n = len(re.findall(pattern, text))
    if n:
      problems.append(f"{n} x {what}")
  problems += [f"constant {t} ({b / (1 << 20):.1f} MiB)" for t, b in hlo_constants(text) if b > _CONST_LIMIT]
  return problems


@dataclasses.dataclass
class Compiled:
  """One jitted entry point compiled for one slice; sizes per chip."""
  lower_s: float
  compile_s: float
  compile_cpu_s: float
  argument_bytes: int
  temp_bytes: int
  output_bytes: int
  alias_bytes: int
  code_bytes: int
  hlo_flops: float          # cost_analysis(): a loop body (the layer scan, the decode loop) counted once
  hlo_bytes: float
  problems: list[str]

  @property
  def peak_bytes(self) -> int:
    """HBM the program holds at once: arguments, temporaries, outputs not aliased to a donated argument, code."""
    return self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes + self.code_bytes


def compile_entry(fn: Callable, args: tuple, kwargs: dict | None = None) -> Compiled:
  """Lowers and compiles `fn` (a jax.jit) for the devices its arguments' shardings name."""
  from llamalogue import ops
  with ops.kernels_for("accelerator"):
    t0, c0 = time.perf_counter(), time.process_time()
    lowered = fn.lower(*args, **(kwargs or {}))
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2, c2 = time.perf_counter(), time.process_time()
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  return Compiled(lower_s=t1 - t0, compile_s=t2 - t1, compile_cpu_s=c2 - c0,
                  argument_bytes=int(mem.argument_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
                  output_bytes=int(mem.output_size_in_bytes), alias_bytes=int(mem.alias_size_in_bytes),
                  code_bytes=int(mem.generated_code_size_in_bytes),
                  hlo_flops=float(cost.get("flops", 0.0)), hlo_bytes=float(cost.get("bytes accessed", 0.0)),
                  problems=hlo_problems(compiled.as_text()))


def on_mesh(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `abstract` placed by `shardings` (a tree, or one sharding for all)."""
  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=shardings), abstract)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
