"""Shared by the end-to-end tests of the fine-tuning modes."""

import pathlib
import signal
import time

import pytest


def kill_after_checkpoint(proc, workdir: pathlib.Path, min_step: int, timeout: float = 400) -> None:
  """SIGKILLs `proc` as soon as a complete `latest` checkpoint at step >= `min_step` exists in `workdir`."""
  latest = pathlib.Path(workdir) / "checkpoints" / "latest"
  deadline = time.time() + timeout
  while time.time() < deadline:
    steps = [int(d.name.split("_")[1]) for d in latest.glob("step_*") if (d / "commit_success.txt").exists()] \
        if latest.exists() else []
    if steps and max(steps) >= min_step:
      break
    if proc.poll() is not None:
      pytest.fail(f"run ended before it could be killed: {proc.stderr.read()[-2000:]}")
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
