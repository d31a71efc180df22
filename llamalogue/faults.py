"""Faults are inputs too: preemption signals, one run per workdir, disk space, quiet orbax failures.

Preemption. `install(name)` (the run scaffold calls it at loop start, `modes.run_mode` around every
mode) makes SIGTERM and SIGINT stop the run cleanly:
  * inside a training loop (`install(name, defer=True)`) a signal only sets a flag; the loop asks
    `should_stop(step)` after each step and, when it says so, saves a checkpoint and raises
    `Preempted.at_step(...)`;
  * anywhere else (data preparation, evaluation, teacher replies, between study stages) the signal
    raises `Preempted` at once, like KeyboardInterrupt: those stages write their outputs atomically
    and resume from them;
  * a second signal while a checkpoint is pending stops at once.
main.py prints `Preempted`'s one line and exits with `status`: 128 + the signal number (143 for
SIGTERM, 130 for SIGINT), what shells and schedulers (SLURM requeue, Kubernetes) expect.

Under multi-process runs every process must save at the same step. `should_stop(step)` is the one
place that decides it: an agreement plugged in with `set_agreement(fn)` (multi-host code:
`fn(step, local_flag) -> bool`, the same answer on every process), else JAX's preemption service
(`multihost_utils.reached_preemption_sync_point`, when `jax.distributed` runs it; SIGTERM is then left
to JAX's own notifier, which tells every process), else this process's flag.

Workdir lock. `workdir_lock(dir, what)` holds `fcntl.flock` on `DIR/.lock` (pid, host, time and
mode written in it) for the run: a second launch is refused with one line naming the holder; a lock
file left by a process that died (the kernel dropped its flock) is taken over with a line saying so.
Nested locks of this process (the study runs its stages in subdirectories) re-enter.

Disk. `check_free(path, need, what)` raises `DiskFull` before a write that cannot fit;
`is_disk_full(exc)` recognises the failure during the write (ENOSPC, EDQUOT, TensorStore's
RESOURCE_EXHAUSTED). `attempt(fn)` keeps orbax/TensorStore/asyncio noise of a failed operation off
the terminal (its log records are shown when the operation succeeds).
"""

import contextlib
import errno
import fcntl
import gc
import json
import logging
import os
import pathlib
import shutil
import signal
import socket
import sys
import threading
import time
from typing import Callable

from llamalogue.errors import LlamalogueError

SIGNALS = (signal.SIGTERM, signal.SIGINT)
LOCK_FILE = ".lock"


# ---------------------------------------------------------------------------- preemption

class Preempted(BaseException):
  """A stop asked for by a signal. A BaseException (like KeyboardInterrupt), so that no `except
  Exception` on the way turns it into another error. `str()` is the one line to print."""

  def __init__(self, line: str, signum: int, at_a_step: bool = False):
    super().__init__(line)
    self.signum = signum
    self.at_a_step = at_a_step   # a loop's stop: in a multi-process job, every process stops at this step

  @property
  def status(self) -> int:
    """The exit status: 128 + the signal number (143 SIGTERM, 130 SIGINT)."""
    return 128 + self.signum

  @classmethod
  def at_step(cls, name: str, signum: int, step: int, checkpoint) -> "Preempted":
    return cls(f"{name}: {signal_name(signum)} at step {step}: checkpoint saved in {checkpoint}; "
               "rerun the same command to resume", signum, at_a_step=True)

  def within(self, where: str) -> "Preempted":
    """The same stop, its line prefixed by where it happened (a study stage)."""
    return Preempted(f"{where}: {self}", self.signum, self.at_a_step)


def signal_name(signum: int) -> str:
  return signal.Signals(signum).name


class _State:
  received: int | None = None   # the first signal since the outermost install
  depth = 0                     # nesting of install()
  defer = 0                     # nesting of install(defer=True): a loop will ask should_stop
  names: list = []              # what is running, innermost last (for the line)
  previous: dict = {}           # the handlers before the outermost install
  agreement: Callable[[int, bool], bool] | None = None


_S = _State()


def _handler(signum, frame):
  again = _S.received is not None
  _S.received = _S.received or signum
  name = _S.names[-1] if _S.names else "run"
  if again and _S.defer:
    raise Preempted(f"{name}: {signal_name(signum)} again: stopped at once, without a checkpoint; rerun the "
                    "same command to resume from the last one", signum)
  if not _S.defer or (signum != signal.SIGTERM and _S.agreement is None and _jax_preemption_service()):
    # Nobody will ask should_stop (or, multi-process, no agreement covers this signal): stop here.
    raise Preempted(f"{name}: {signal_name(signum)}: stopped; rerun the same command to resume", signum)
  # Inside a training loop: finish the step; should_stop() reports it.


def _jax_preemption_service() -> bool:
  """JAX's preemption sync manager runs (jax.distributed initialised with the service on). Reads JAX's
  distributed state only: asking jax.process_count() here would start the backends before
  jax.distributed.initialize() could run."""
  if "jax" not in sys.modules:
    return False
  try:
    from jax._src import distributed
    state = distributed.global_state
    return state.client is not None and state.preemption_sync_manager is not None
  except (ImportError, AttributeError):
    return False


class Guard:
  """What `install` changed; `restore(guard)` puts it back."""

  def __init__(self, name: str, defer: bool):
    self.name, self.defer, self.installed = name, defer, []


def install(name: str, defer: bool = False) -> Guard:
  """Handles SIGTERM/SIGINT until `restore`; nests. `defer`: a loop asks `should_stop` after each step."""
  guard = Guard(name, defer)
  _S.names.append(name)
  _S.defer += int(defer)
  _S.depth += 1
  if _S.depth == 1:
    _S.received = None
    if threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        if sig == signal.SIGTERM and _jax_preemption_service():
          continue  # JAX's notifier listens to SIGTERM and tells every process
        _S.previous[sig] = signal.signal(sig, _handler)
        guard.installed.append(sig)
  return guard


def restore(guard: Guard) -> None:
  """Undoes `install`; the outermost restore puts the previous handlers back."""
  if guard.name in _S.names:  # the innermost entry of that name
    del _S.names[len(_S.names) - 1 - _S.names[::-1].index(guard.name)]
  _S.defer -= int(guard.defer)
  _S.depth -= 1
  if _S.depth == 0:
    for sig, old in _S.previous.items():
      signal.signal(sig, old if old is not None else signal.SIG_DFL)
    _S.previous.clear()
    _S.received = None


@contextlib.contextmanager
def handling(name: str, defer: bool = False):
  """`install` ... `restore` as a context manager."""
  guard = install(name, defer)
  try:
    yield guard
  finally:
    restore(guard)


def set_agreement(fn: Callable[[int, bool], bool] | None) -> None:
  """Plugs in the cross-process stop decision: `fn(step, this process got a signal) -> bool`, equal on
  every process (an all-reduce of the flag, say). None: back to the default."""
  _S.agreement = fn


def received() -> int | None:
  """The signal this process got since the outermost install (None: none)."""
  return _S.received


def should_stop(step: int) -> bool:
  """Whether the training loop stops after `step`; the same answer on every process (see the docstring)."""
  if _S.agreement is not None:
    return bool(_S.agreement(step, _S.received is not None))
  if _jax_preemption_service():
    from jax.experimental import multihost_utils
    if multihost_utils.reached_preemption_sync_point(step):
      _S.received = _S.received or signal.SIGTERM
      return True
    return False
  return _S.received is not None


def stop_signal() -> int:
  """The signal a stop answers (SIGTERM when JAX's service reported it)."""
  return _S.received or signal.SIGTERM


# ---------------------------------------------------------------------------- workdir lock

class WorkdirBusy(LlamalogueError):
  """Another process holds the workdir."""


_held: dict[str, list] = {}   # realpath -> [open file, count]: this process's locks


def _host_rank() -> int:
  """This process's rank in a multi-process job: jax's once `jax.distributed` runs (llamalogue/modes.py joins
  the job before taking the lock), else from the launcher's environment (0 when single)."""
  import jax
  if jax.distributed.is_initialized():
    return jax.process_index()
  for var in ("JAX_PROCESS_ID", "SLURM_PROCID", "CLOUD_TPU_TASK_ID", "TPU_WORKER_ID", "RANK"):
    if os.environ.get(var, "").isdigit():
      return int(os.environ[var])
  return 0


def _describe(info: dict) -> str:
  since = info.get("since", "")
  return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} ({info.get('mode', '?')}, since "
          f"{since or '?'})")


def _read_info(f) -> dict:
  try:
    f.seek(0)
    return json.loads(f.read() or "{}")
  except (OSError, ValueError):
    return {}


@contextlib.contextmanager
def workdir_lock(workdir, what: str):
  """Holds DIR/.lock for the duration (see the docstring). Only rank 0 of a multi-process launch locks:
  the other processes of the same job share its workdir."""
  root = pathlib.Path(workdir).expanduser()
  if _host_rank() != 0:
    yield
    return
  root.mkdir(parents=True, exist_ok=True)
  key = os.path.realpath(root)
  if key in _held:  # this process already holds it (a mode run from inside another)
    _held[key][1] += 1
    try:
      yield
    finally:
      _held[key][1] -= 1
    return
  path = root / LOCK_FILE
  f = open(path, "a+")
  try:
    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    info = _read_info(f)
    f.close()
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      raise WorkdirBusy(f"{root}: in use by {_describe(info)}; one run per workdir: wait for it, stop it, or "
                        "choose another --workdir") from None
    raise LlamalogueError(f"{path}: cannot lock the workdir ({e.strerror})") from None
  old = _read_info(f)
  if old.get("pid"):
    print(f"{root}: taking over the lock of {_describe(old)}, which is no longer running", file=sys.stderr)
  mine = {"pid": os.getpid(), "host": socket.gethostname(), "mode": what,
          "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
  f.seek(0)
  f.truncate()
  f.write(json.dumps(mine) + "\n")
  f.flush()
  _held[key] = [f, 1]
  try:
    yield
  finally:
    del _held[key]
    try:
      f.seek(0)
      f.truncate()  # a clean exit leaves an empty lock file: nothing to take over
    finally:
      fcntl.flock(f.fileno(), fcntl.LOCK_UN)
      f.close()


# ---------------------------------------------------------------------------- disk

class DiskFull(LlamalogueError):
  """Not enough room for a write (checked before it, or failed during it)."""


def mb(n: float) -> str:
  return f"{n / 2 ** 20:,.1f} MiB"


def free_bytes(path) -> int:
  """Free bytes on the filesystem of `path` (its nearest existing parent)."""
  p = pathlib.Path(path).absolute()
  while not p.exists() and p.parent != p:
    p = p.parent
  return shutil.disk_usage(p).free


def check_free(path, need: int, what: str, hint: str = "") -> None:
  """Raises DiskFull when the filesystem of `path` has less than `need` bytes free."""
  free = free_bytes(path)
  if free < need:
    raise DiskFull(f"{path}: no room for {what}: it needs about {mb(need)}, {mb(free)} free; free some space and "
                   f"rerun the same command{hint}")


_DISK_WORDS = ("No space left on device", "RESOURCE_EXHAUSTED", "Disk quota exceeded", "os_error_code='28'",
               "os_error_code='122'")


def chain(exc: BaseException):
  """`exc` and its causes / contexts, outermost first."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    yield exc
    exc = exc.__cause__ or exc.__context__


def is_disk_full(exc: BaseException) -> bool:
  for e in chain(exc):
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if any(w in str(e) for w in _DISK_WORDS):
      return True
  return False


def reason(exc: BaseException, limit: int = 240) -> str:
  """The innermost cause of `exc`, one line: what failed, without the traceback."""
  inner = list(chain(exc))[-1]
  text = " ".join(str(inner).split()) or type(inner).__name__
  text = text if len(text) <= limit else text[:limit - 3] + "..."
  return f"{type(inner).__name__}: {text}"


class _Hold(logging.Filter):
  """Holds back every record of a logger (to show later or drop)."""

  def __init__(self):
    super().__init__()
    self.records = []

  def filter(self, record):
    self.records.append(record)
    return False


class Failure:
  """What went wrong in an `attempt`: its one-line reason and whether the disk was full."""

  def __init__(self, exc: BaseException):
    self.reason, self.disk_full = reason(exc), is_disk_full(exc)


def attempt(fn: Callable[[], object]):
  """`(fn(), None)`, or `(None, Failure)` when it raises an Exception. Orbax's (absl) and asyncio's log
  records and unraisable-exception reports are held back meanwhile: shown on success, dropped on failure
  (the caller reports it in one line), and the failed operation's leftovers (tasks, coroutines) are
  collected here, silently, not later on the terminal."""
  loggers = [logging.getLogger("absl"), logging.getLogger("asyncio")]
  holds = [_Hold() for _ in loggers]
  for lg, h in zip(loggers, holds):
    lg.addFilter(h)
  hook = sys.unraisablehook
  sys.unraisablehook = lambda unraisable: None
  failure = None
  before = set(threading.enumerate())
  try:
    try:
      result = fn()
    except Exception as e:  # noqa: BLE001 -- reported by the caller, in one line
      failure, result = Failure(e), None
    if failure is not None:
      # The failed operation's other threads (orbax writes each array in one) still run: let them end
      # here, their complaints held back, before the caller cleans up after them.
      deadline = time.monotonic() + 60
      for t in set(threading.enumerate()) - before:
        if type(t).__module__.startswith("orbax"):
          t.join(max(0.0, deadline - time.monotonic()))
      gc.collect()
  finally:
    # A failed read can leave orbax coroutines in its event-loop thread that are collected only later:
    # from now on their "Exception ignored in <coroutine ...>" reports are dropped too (nothing else is).
    sys.unraisablehook = _without_orbax_leftovers(hook) if failure is not None else hook
    for lg, h in zip(loggers, holds):
      lg.removeFilter(h)
      if failure is None:
        for record in h.records:
          lg.handle(record)
  return result, failure


def _without_orbax_leftovers(hook):
  if getattr(hook, "drops_orbax_leftovers", False):
    return hook

  def filtered(unraisable) -> None:
    code = getattr(unraisable.object, "cr_code", None)
    if code is not None and "orbax" in code.co_filename:
      return
    hook(unraisable)

  filtered.drops_orbax_leftovers = True
  return filtered
