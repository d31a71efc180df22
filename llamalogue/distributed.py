"""Many processes, one program: `jax.distributed` set up once, and the few host-side collectives the modes use.

Every config has a `distributed` section (configs/base.py `distributed()`); the one dispatch
(llamalogue/modes.py) calls `initialize` before any device is touched:

  coordinator = ""            one process (the default)
  coordinator = "auto"        jax.distributed.initialize() finds the cluster itself (TPU VM pod slices,
                              SLURM, Open MPI; $JAX_COORDINATOR_ADDRESS)
  coordinator = "host:port"   explicit: with num_processes and process_id (python -m llamalogue.launch)

After it, `jax.process_index()` / `jax.process_count()` say who is who. Process 0 alone writes shared
files (`is_lead`); barriers (`barrier`) have timeouts; host data is exchanged through the
coordinator's key-value store (`allgather_json`), arrays through `allgather` (XLA collectives).
On one process every function here is the identity or a no-op.
"""

import itertools
import json
import os
import socket
import sys
import threading
import time

import jax
import ml_collections
import numpy as np

from llamalogue.errors import ConfigError, LlamalogueError

_TIMEOUT_S = 600   # default wait for a barrier or a peer's data (a stage can be slow on one host)


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.coordinator = ""             # "" = one process | auto | host:port (see llamalogue/distributed.py)
  c.num_processes = 0            # with host:port: how many processes
  c.process_id = -1              # with host:port: this process (0 .. num_processes - 1)
  c.timeout_s = 60               # the coordinator must answer within this (initialization)
  c.heartbeat_s = 30             # a process silent this long is dead: every other process stops with an error
  c.barrier_timeout_s = _TIMEOUT_S
  return c


_STATE = {"barrier_timeout_s": _TIMEOUT_S}
_COUNTER = itertools.count()


def initialize(cfg) -> None:
  """Joins the job `cfg` (a `distributed` section) names; a no-op for one process or when already joined."""
  if cfg is None or not cfg.get("coordinator", ""):
    return
  _STATE["barrier_timeout_s"] = int(cfg.get("barrier_timeout_s", _TIMEOUT_S))
  if jax.distributed.is_initialized():
    return
  kwargs = dict(initialization_timeout=int(cfg.timeout_s), heartbeat_timeout_seconds=int(cfg.heartbeat_s))
  where = cfg.coordinator
  if cfg.coordinator != "auto":
    if ":" not in cfg.coordinator:
      raise ConfigError(f"config.distributed.coordinator: {cfg.coordinator!r} is not auto or host:port")
    if cfg.num_processes < 1 or not 0 <= cfg.process_id < cfg.num_processes:
      raise ConfigError(f"config.distributed: process_id={cfg.process_id} with num_processes={cfg.num_processes}; "
                        "give num_processes >= 1 and 0 <= process_id < num_processes")
    kwargs.update(coordinator_address=cfg.coordinator, num_processes=int(cfg.num_processes),
                  process_id=int(cfg.process_id))
    _check_coordinator(cfg.coordinator, int(cfg.process_id), float(cfg.timeout_s))
  else:
    where = os.environ.get("JAX_COORDINATOR_ADDRESS", "the cluster's coordinator")
  try:
    jax.distributed.initialize(**kwargs)
  except Exception as e:  # noqa: BLE001 (jaxlib raises its own XlaRuntimeError, or ValueError, RuntimeError)
    text = str(e).strip().splitlines()
    raise LlamalogueError(f"config.distributed: could not join the job at {where} within {cfg.timeout_s} s "
                          f"({type(e).__name__}: {text[0][:200] if text else ''})") from None
  print(f"distributed: process {jax.process_index()} of {jax.process_count()}, {jax.local_device_count()} local / "
        f"{jax.device_count()} devices", file=sys.stderr, flush=True)
  if not is_lead():  # one voice: process 0 reports; the others keep stderr for warnings and errors
    sys.stdout = open(os.devnull, "w")
  _start_watchdog(max(2.0, 0.6 * float(cfg.heartbeat_s)))


# A process that dies is noticed by the runtime after `heartbeat_s`, which then aborts every other process
# from C++ (a stack dump, no word of ours). The watchdog says it first, in one line: each process stamps
# a key in the coordinator's store every second and reads the others'; a stamp older than `stale_s`, or a
# coordinator that no longer answers (process 0 died), ends this process with PEER_LOST.
PEER_LOST = 75   # EX_TEMPFAIL: the job failed because another process did; rerun every process to resume


_FINISHED = threading.Event()   # this process's job ended normally (finished()): the coordinator may go away
_STAMP: list = []               # the watchdog's stamp function, once started


def finished() -> None:
  """Tells the other processes that this one ended its job normally (modes.run_mode calls it after the mode
  returned), so that its exit, and the coordinator's going away with process 0, is not taken for a crash."""
  _FINISHED.set()
  if _STAMP:
    _quiet(lambda: _STAMP[0]("done"))


def _start_watchdog(stale_s: float) -> None:
  import atexit
  client, me, n = _client(), jax.process_index(), jax.process_count()
  seen = {i: time.monotonic() for i in range(n)}
  last, done = {}, set()

  def stamp(value: str) -> None:
    client.key_value_set(f"llamalogue/alive/{me}", value, allow_overwrite=True)

  def watch():
    count = 0
    while True:
      count += 1
      try:
        if not _FINISHED.is_set():
          stamp(str(count))
        for i in range(n):
          if i == me:
            continue
          value = client.key_value_try_get(f"llamalogue/alive/{i}")
          if value == "done":
            done.add(i)
          elif value == "exit" and i not in done:
            _die(f"process {i} of {n} exited before the job ended (its own output says why)")
          elif value != last.get(i):
            last[i], seen[i] = value, time.monotonic()
        now = time.monotonic()
        gone = [i for i in range(n) if i != me and i not in done and now - seen[i] > stale_s]
        if gone:   # also once this process is done: its shutdown would wait on the lost peer
          _die(f"process {gone[0]} of {n} stopped answering ({stale_s:.0f} s): it died or was killed")
      except Exception as e:  # noqa: BLE001 (the coordinator lives in process 0: if it died, every call fails)
        # At the end of a job the coordinator goes away with process 0 once it is done, or with this
        # process's own shutdown: that is the job ending, not a peer lost.
        if _FINISHED.is_set() or 0 in done:
          return
        if "NOT_FOUND" not in str(e):
          _die(f"the coordinator stopped answering ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__}); "
               "process 0 died or was killed")
      time.sleep(1.0)

  def _die(why: str) -> None:
    print(f"error: distributed: process {me}: {why}; stopping. The last checkpoint is intact: rerun the same "
          "command on every process to resume", file=sys.stderr, flush=True)
    os._exit(PEER_LOST)

  _STAMP.append(stamp)
  # Runs before jax's own distributed shutdown (atexit: last in, first out). A process leaving without
  # finished() (an error, a signal) says `exit`, and the others stop at once instead of waiting on it.
  atexit.register(lambda: _quiet(lambda: stamp("done" if _FINISHED.is_set() else "exit")))
  threading.Thread(target=watch, name="llamalogue-watchdog", daemon=True).start()


def _quiet(fn) -> None:
  try:
    fn()
  except Exception:  # noqa: BLE001 (at exit the coordinator may already be gone)
    pass


def _check_coordinator(address: str, process_id: int, timeout_s: float) -> None:
  """Fails with one line, within `timeout_s`, where the runtime would abort the process: process 0 must be
  able to serve on the port, the others must reach it (the runtime's own timeout ends in a C++ abort)."""
  host, _, port = address.rpartition(":")
  if not port.isdigit():
    raise ConfigError(f"config.distributed.coordinator: {address!r} is not host:port")
  if process_id == 0:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
      sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      try:
        sock.bind(("" if host in ("localhost", "127.0.0.1", "0.0.0.0") else host, int(port)))
      except OSError as e:
        raise LlamalogueError(f"config.distributed: process 0 cannot serve the coordinator on {address} "
                              f"({e.strerror}); choose another port") from None
    return
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      socket.create_connection((host, int(port)), timeout=1.0).close()
      return
    except OSError:
      if time.monotonic() > deadline:
        raise LlamalogueError(f"config.distributed: could not join the job at {address} within {timeout_s:.0f} s "
                              "(no coordinator answers there: is process 0 running, on that host and port?)") from None
      time.sleep(0.25)


def is_lead() -> bool:
  """Process 0: the one that writes files shared by all (summaries, reports, caches)."""
  return jax.process_index() == 0


def _client():
  from jax._src import distributed as jax_distributed   # the runtime's client: barriers with timeouts, a KV store
  return jax_distributed.global_state.client


def barrier(name: str, timeout_s: float | None = None) -> None:
  """Every process waits here for the others, at most `timeout_s` (then one line says which barrier)."""
  if jax.process_count() == 1:
    return
  timeout = timeout_s or _STATE["barrier_timeout_s"]
  key = f"llamalogue/{name}/{next(_COUNTER)}"
  try:
    _client().wait_at_barrier(key, int(timeout * 1000))
  except Exception as e:  # noqa: BLE001
    raise LlamalogueError(f"distributed: process {jax.process_index()} waited {timeout:.0f} s at barrier {name!r} "
                          f"and not every process arrived ({str(e).splitlines()[0][:160] if str(e) else e})") from None


def allgather_json(name: str, value, timeout_s: float | None = None) -> list:
  """`[value of process 0, value of process 1, ...]` for a JSON value, through the coordinator's key-value store."""
  if jax.process_count() == 1:
    return [value]
  timeout = int((timeout_s or _STATE["barrier_timeout_s"]) * 1000)
  key = f"llamalogue/{name}/{next(_COUNTER)}"
  client = _client()
  client.key_value_set(f"{key}/{jax.process_index()}",
                       json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
  try:
    return [json.loads(client.blocking_key_value_get(f"{key}/{i}", timeout)) for i in range(jax.process_count())]
  except Exception as e:  # noqa: BLE001
    raise LlamalogueError(f"distributed: process {jax.process_index()} did not receive every process's "
                          f"{name!r} within {timeout // 1000} s ({str(e).splitlines()[0][:160] if str(e) else e})") from None


def broadcast_json(name: str, value):
  """Process 0's `value` on every process."""
  return allgather_json(name, value if is_lead() else None)[0]


def allgather(x: np.ndarray) -> np.ndarray:
  """`[N processes, ...]` of a host array of the same shape and dtype on every process."""
  if jax.process_count() == 1:
    return np.asarray(x)[None]
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(np.asarray(x)))


def my_rows(n: int) -> np.ndarray:
  """The rows `0..n-1` this process handles: a contiguous share (the first processes take one more when
  `n` does not divide)."""
  return _rows_of(jax.process_index(), n)


def gather_rows(values: np.ndarray, n: int) -> np.ndarray:
  """Every process's `my_rows(n)` values, concatenated in row order (`values` `[my rows, ...]`)."""
  if jax.process_count() == 1:
    return np.asarray(values)
  counts = [len(r) for r in (_rows_of(i, n) for i in range(jax.process_count()))]
  width = max(counts)
  values = np.asarray(values)
  padded = np.zeros((width,) + values.shape[1:], values.dtype)
  padded[:len(values)] = values
  gathered = allgather(padded)
  return np.concatenate([gathered[i, :c] for i, c in enumerate(counts)])


def _rows_of(i: int, n: int) -> np.ndarray:
  """Process i's share of rows 0..n-1."""
  k, r = divmod(n, jax.process_count())
  start = i * k + min(i, r)
  return np.arange(start, start + k + (i < r))


def local_replica(tree):
  """A process-local copy (on this process's first device) of a tree of global arrays that every process
  holds whole (replicated); a sharded array is gathered first. One process: the tree as it is."""
  if jax.process_count() == 1:
    return tree

  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return x
    if not x.is_fully_replicated:
      from jax.sharding import NamedSharding, PartitionSpec
      x = jax.jit(lambda a: a, out_shardings=NamedSharding(x.sharding.mesh, PartitionSpec()))(x)
    return x.addressable_data(0)
  return jax.tree.map(one, tree)


def host_array(tree):
  """Numpy copies of a tree's arrays, on every process (global arrays gathered): inputs that jit treats as
  replicated, whatever the process count. PRNG keys stay as they are."""
  return jax.tree.map(lambda x: x if not isinstance(x, jax.Array) or _is_key(x) else np.asarray(local_replica(x)),
                      tree)


def _is_key(x) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_global(tree, shardings):
  """A tree of process-local (or host) arrays placed on the global mesh as `shardings` say; every process
  passes the same values."""
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)
  host = host_array(tree)
  if not isinstance(shardings, jax.sharding.Sharding):
    return jax.device_put(host, shardings)
  return jax.tree.map(lambda x: x if _is_key(x) else jax.device_put(x, shardings), host)
