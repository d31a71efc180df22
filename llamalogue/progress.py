"""Progress of long jobs: a tqdm bar on a terminal, a plain line every few seconds in a log file.

`bar(total, desc, unit)` is what every loop of the project shows (training steps, reference
log-probabilities, evaluation texts). When stderr is not a terminal (a log file, a SLURM job,
`nohup`), carriage-return updates would make one line of many kilobytes; instead one line
`desc: 120/2645 step (4.5%), 3.1 step/s, eta 13m, loss=2.96` is written every
`$LLAMALOGUE_PROGRESS_EVERY` seconds (default 30) and at the end.
"""

import os
import sys
import time

import jax
from tqdm.auto import tqdm


def _every() -> float:
  try:
    return max(0.0, float(os.environ.get("LLAMALOGUE_PROGRESS_EVERY", "30")))
  except ValueError:
    return 30.0


def _duration(seconds: float) -> str:
  seconds = int(max(0, seconds))
  if seconds >= 3600:
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
  if seconds >= 60:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds}s"


class LineProgress:
  """tqdm's `update` / `set_postfix` / `close` / `total`, printing whole lines at an interval."""

  def __init__(self, total: int | None, desc: str, unit: str, initial: int = 0, every: float | None = None,
               file=None):
    self.total, self.desc, self.unit, self.n = total, desc.strip(), unit, initial
    self.every = _every() if every is None else every
    self.file = file or sys.stderr
    self.start_n, self.t0 = initial, time.perf_counter()
    self.last, self.postfix = self.t0, ""

  def update(self, n: int = 1) -> None:
    self.n += n
    now = time.perf_counter()
    if now - self.last >= self.every:
      self.last = now
      self._line(now)

  def set_postfix(self, **values) -> None:
    self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

  def _line(self, now: float) -> None:
    rate = (self.n - self.start_n) / max(now - self.t0, 1e-9)
    parts = [f"{self.desc}: {self.n}"]
    if self.total:
      parts[0] += f"/{self.total} {self.unit} ({100.0 * self.n / self.total:.1f}%)"
    else:
      parts[0] += f" {self.unit}"
    parts.append(f"{rate:.3g} {self.unit}/s")
    if self.total and rate > 0 and self.n < self.total:
      parts.append(f"eta {_duration((self.total - self.n) / rate)}")
    if self.postfix:
      parts.append(self.postfix)
    print(", ".join(parts), file=self.file, flush=True)

  def close(self) -> None:
    if self.n != self.start_n:
      self._line(time.perf_counter())

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def bar(total: int | None, desc: str, unit: str = "it", initial: int = 0, disable: bool = False):
  """A tqdm bar on a terminal, else a `LineProgress`; `disable` shows nothing (as on every process but 0)."""
  if disable or jax.process_index() != 0:
    return tqdm(total=total, disable=True)
  if sys.stderr.isatty():
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, mininterval=1.0,
                file=sys.stderr)
  return LineProgress(total, desc, unit, initial)
