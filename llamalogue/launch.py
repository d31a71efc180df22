"""Run one main.py command as N JAX processes on this machine: a local multi-host job, for trying and testing.

  python -m llamalogue.launch --processes=2 --devices_per_process=2 -- --config=configs/pretrain.py:tiny --workdir=DIR

Every process runs `main.py` with the arguments after `--`, plus
`--config.distributed.coordinator=127.0.0.1:<port> --config.distributed.num_processes=N
--config.distributed.process_id=i`, on `devices_per_process` CPU devices of its own (XLA's host
platform; collectives between processes go through gloo). Each output line is prefixed with
`[i]`. The launcher exits with the first non-zero exit status of any process (0 if all succeed);
when one process fails, the others stop on their own within `distributed.heartbeat_s` (the JAX
runtime's health check), and the launcher ends any that are left after a grace period.
On a real cluster, run main.py on every host instead (README: "Training on accelerators and many hosts").
"""

import argparse
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def commands(processes: int, devices_per_process: int, main_args: list[str], port: int,
             heartbeat_s: int = 0) -> list[tuple[list[str], dict]]:
  """(argv, environment) of each process."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
  extra = [f"--config.distributed.coordinator=127.0.0.1:{port}", f"--config.distributed.num_processes={processes}"]
  if heartbeat_s:
    extra.append(f"--config.distributed.heartbeat_s={heartbeat_s}")
  return [([sys.executable, str(ROOT / "main.py"), *main_args, *extra, f"--config.distributed.process_id={i}"], env)
          for i in range(processes)]


def _pump(i: int, stream, out) -> None:
  for line in iter(stream.readline, ""):
    out.write(f"[{i}] {line}")
    out.flush()


def run(processes: int, devices_per_process: int, main_args: list[str], port: int = 0, heartbeat_s: int = 0,
        grace_s: float = 60.0) -> int:
  """Starts the processes, relays their output, returns the job's exit status."""
  port = port or free_port()
  procs, pumps = [], []
  for i, (argv, env) in enumerate(commands(processes, devices_per_process, main_args, port, heartbeat_s)):
    p = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(p)
    for stream, out in ((p.stdout, sys.stdout), (p.stderr, sys.stderr)):
      t = threading.Thread(target=_pump, args=(i, stream, out), daemon=True)
      t.start()
      pumps.append(t)
  status, failed_at = 0, None
  try:
    while any(p.poll() is None for p in procs):
      codes = [p.poll() for p in procs]
      bad = [c for c in codes if c not in (None, 0)]
      if bad and failed_at is None:
        status, failed_at = bad[0], time.time()
      if failed_at is not None and time.time() - failed_at > grace_s:
        for p in procs:
          if p.poll() is None:
            p.kill()
      time.sleep(0.1)
  except KeyboardInterrupt:
    for p in procs:
      p.terminate()
    status = 130
  for t in pumps:
    t.join(timeout=5)
  codes = [p.wait() for p in procs]
  return status or next((c for c in codes if c), 0)


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if "--" not in argv:
    print("error: usage: python -m llamalogue.launch --processes=N --devices_per_process=K -- <main.py arguments>",
          file=sys.stderr)
    return 2
  split = argv.index("--")
  ap = argparse.ArgumentParser(prog="python -m llamalogue.launch")
  ap.add_argument("--processes", type=int, default=2)
  ap.add_argument("--devices_per_process", type=int, default=1)
  ap.add_argument("--port", type=int, default=0, help="the coordinator's port (0: a free one)")
  ap.add_argument("--heartbeat_s", type=int, default=0, help="override config.distributed.heartbeat_s")
  args = ap.parse_args(argv[:split])
  if args.processes < 1 or args.devices_per_process < 1:
    print("error: --processes and --devices_per_process must be >= 1", file=sys.stderr)
    return 2
  return run(args.processes, args.devices_per_process, argv[split + 1:], args.port, args.heartbeat_s)


if __name__ == "__main__":
  sys.exit(main())
