"""Shared by the end-to-end tests of the fine-tuning modes."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_main(config: str, workdir, *extra: str, wait: bool = True, timeout: float = 900):
  """`python main.py --config=CONFIG --workdir=WORKDIR EXTRA...` on one CPU device: the finished process
  (stdout/stderr captured), or with `wait=False` the running Popen."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONUNBUFFERED="1")
  cmd = [sys.executable, str(ROOT / "main.py"), f"--config={config}", f"--workdir={workdir}", *extra]
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def kill_after_checkpoint(proc, workdir: pathlib.Path, min_step: int, timeout: float = 400,
                          sig: int = signal.SIGKILL) -> None:
  """Sends `sig` (SIGKILL) to `proc` as soon as a complete `latest` checkpoint at step >= `min_step` exists in
  `workdir`, and waits for it to end."""
  latest = pathlib.Path(workdir) / "checkpoints" / "latest"
  deadline = time.time() + timeout
  while time.time() < deadline:
    # orbax writes step_<n>.orbax-checkpoint-tmp* first, then renames it to step_<n>
    steps = [int(d.name[5:]) for d in latest.glob("step_*") if d.name[5:].isdigit()
             and (d / "commit_success.txt").exists()] if latest.exists() else []
    if steps and max(steps) >= min_step:
      break
    if proc.poll() is not None:
      pytest.fail(f"run ended before it could be killed: {proc.stderr.read()[-2000:]}")
    time.sleep(0.02)
  proc.send_signal(sig)
  proc.wait()
