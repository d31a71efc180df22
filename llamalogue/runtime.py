"""Process-level settings that make XLA:CPU training faster, applied by the entry points.

`keep_freed_memory()`: XLA allocates one large temporary buffer per step (≈250 MB for the
tiny benchmark shape, several GB for 135M) and frees it after the step. glibc serves an
allocation that large with a fresh `mmap` and returns it with `munmap`, so every step the
kernel page-faults and zeroes the whole buffer again: 64,000 faults and about 12% of the
tiny step's time, 6% of the 135M step's, on the 2-core CPU this was measured on. With one
malloc arena, no mmap-served allocations and no trimming, freed memory stays with the
process and the next step reuses it without a fault.

The costs: the process keeps its peak heap until it exits (a training process does anyway),
and threads contend for the one arena. XLA's compiles get a few percent slower, and the
tokenizer trainer got three times slower (data/bpe.py now trains in a spawned process, which
has the default malloc). So main.py applies it to training modes only. Set
`LLAMALOGUE_MALLOC=system` to skip it. Call it before jax runs anything: XLA's worker
threads choose their malloc arena on their first allocation.
"""

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8   # glibc <malloc.h>


def keep_freed_memory() -> bool:
  """Tunes glibc malloc as described above; True if it was applied (Linux with glibc only)."""
  if os.environ.get("LLAMALOGUE_MALLOC", "").lower() == "system" or not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):       # not glibc (e.g. musl): leave the allocator alone
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  ok = mallopt(_M_ARENA_MAX, 1) == 1
  ok &= mallopt(_M_MMAP_MAX, 0) == 1
  ok &= mallopt(_M_TRIM_THRESHOLD, -1) == 1    # (size_t)-1: never give the top of the heap back
  return bool(ok)
