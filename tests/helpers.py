"""Shared by the end-to-end tests of the fine-tuning modes."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_main(config: str, workdir, *extra: str, wait: bool = True, timeout: float = 900, devices: int = 1):
  """`python main.py --config=CONFIG --workdir=WORKDIR EXTRA...` on `devices` CPU devices (one process): the
  finished process (stdout/stderr captured), or with `wait=False` the running Popen."""
  flags = f"--xla_force_host_platform_device_count={devices}" if devices > 1 else ""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags, PYTHONUNBUFFERED="1")
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


def launch(config: str, workdir, *extra: str, processes: int = 2, devices_per_process: int = 2, wait: bool = True,
           timeout: float = 900, heartbeat_s: int = 0):
  """The same command as `processes` JAX processes (python -m llamalogue.launch): finished or running."""
  cmd = [sys.executable, "-m", "llamalogue.launch", f"--processes={processes}",
         f"--devices_per_process={devices_per_process}", *([f"--heartbeat_s={heartbeat_s}"] if heartbeat_s else []),
         "--", f"--config={config}", f"--workdir={workdir}", *extra]
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def together(*procs, timeout: float = 900) -> list[subprocess.CompletedProcess]:
  """Waits for running processes (`run_main`/`launch` with `wait=False`) started side by side, e.g. a
  1-process reference and its 2-process twin (their compiles, single-threaded, overlap): each finished,
  output captured."""
  deadline = time.time() + timeout
  done = []
  for p in procs:
    try:
      out, err = p.communicate(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
    done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
  return done


def close_after_adam(a, b, lr: float) -> None:
  """Two param trees equal to Adam's rounding: every weight within lr/10, all but one in a thousand within
  1e-6 (Adam turns a last-bit difference of a gradient near 0 into a step of up to lr; a wrong collective,
  jax#40830, moves most weights by O(lr))."""
  import jax
  diffs = np.concatenate([np.abs(np.asarray(x) - np.asarray(y)).ravel() for x, y in zip(jax.tree.leaves(a),
                                                                                         jax.tree.leaves(b))])
  assert diffs.max() <= lr / 10, diffs.max()
  assert np.mean(diffs > 1e-6) < 1e-3, (np.mean(diffs > 1e-6), np.sort(diffs)[-5:])
