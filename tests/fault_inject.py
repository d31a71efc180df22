"""Runs main.py with a fault injected in the checkpoint write path, on any machine (no root, no tmpfs):

  python -m tests.fault_inject N main.py --config=... --workdir=...

The N-th checkpoint item orbax writes through its JSON handler (every checkpoint's `meta`, written beside
its `state` arrays) raises ENOSPC, as a full disk does in the middle of a checkpoint.
"""

import errno
import runpy
import sys


def main() -> None:
  fail_at = int(sys.argv[1])
  sys.argv = sys.argv[2:]
  import orbax.checkpoint as ocp
  handler = ocp.handlers.JsonCheckpointHandler
  original = handler.async_save
  calls = [0]

  async def failing(self, directory, *args, **kwargs):
    calls[0] += 1
    if calls[0] == fail_at:
      raise OSError(errno.ENOSPC, "No space left on device", str(directory))
    return await original(self, directory, *args, **kwargs)

  handler.async_save = failing
  runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
  main()
