"""Benchmark the whole `prepare` step against pylangacq reading the same files.

  python benchmarks/prepare.py                       # all of $LLAMALOGUE_DATA/childes
  python benchmarks/prepare.py --childes=data:childes/Eng-UK --repeats=3

`ours` is a cold `ensure_prepared` (reading, cleaning, units, splits, BPE training,
packed arrays, stats) into a fresh directory with `--workers` processes; `baseline`
is `pylangacq.read_chat(path, strict=False)` on every ZIP / directory / .cha of the
same input, warnings silenced. Files are read once beforehand so both start from a
warm page cache; with --repeats each side keeps its fastest run. Target: ratio <= 2.5
on 2 cores. The last line is exactly:
  ratio=<ours/baseline> ours=<seconds> baseline=<seconds> unit=s
"""

import argparse
import json
import pathlib
import sys
import tempfile
import time
import warnings

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
  sys.path.insert(0, str(ROOT))


def read_targets(childes: str) -> list[str]:
  """What read_chat is pointed at: each ZIP and .cha file, or a directory of .cha files."""
  from llamalogue.data import sources
  targets = []
  for entry in sources.resolve_entries(childes):
    if isinstance(entry, str):
      targets.append(entry)
    elif entry.is_file():
      targets.append(str(entry))
    else:
      files = sources.local_files(entry)
      targets += [str(p) for p, _ in files if p.suffix.lower() == ".zip"]
      if any(p.suffix.lower() == ".cha" for p, _ in files):
        targets.append(str(entry))
  return targets


def warm(targets: list[str]) -> None:
  for t in targets:
    p = pathlib.Path(t)
    for f in ([p] if p.is_file() else sorted(p.rglob("*.cha")) if p.is_dir() else []):
      f.read_bytes()


def time_baseline(targets: list[str]) -> tuple[float, int]:
  import pylangacq
  t0 = time.perf_counter()
  n_files = 0
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for t in targets:
      n_files += pylangacq.read_chat(t, strict=False).n_files
  return time.perf_counter() - t0, n_files


def time_ours(childes: str, workers: int) -> tuple[float, dict]:
  from configs import prepare as prepare_config
  from llamalogue.data import prepare
  config = prepare_config.get_config()
  config.data.childes = childes
  config.data.num_workers = workers
  with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
    t0 = time.perf_counter()
    out = prepare.ensure_prepared(config, tmp)
    seconds = time.perf_counter() - t0
    stats = json.loads((out / "stats.json").read_text())
  return seconds, stats


def report(stats: dict) -> None:
  u, f = stats["utterances"], stats["files"]
  print(f"files: {f['read']} read, {f['skipped']} skipped")
  print(f"utterances: {u['read']:,} read, {u['in_units']:,} in units, "
        f"{u['recovered_from_main_tier']:,} recovered from the main tier "
        f"({u['empty_tokens']:,} with empty pylangacq tokens)")
  print("dropped: " + ", ".join(f"{k} {v:,}" for k, v in u["dropped"].items()))
  print(f"words: corpus {stats['words']['corpus']:,}; budget {stats['budget']['max_words']:,}, "
        f"pretrain {stats['budget']['words']:,}{' (hit)' if stats['budget']['hit'] else ''}")
  for s, v in stats["splits"].items():
    print(f"split {s}: {v['files']:,} files, {v['units']:,} units, {v['words']:,} words")
  print(f"tokens: train {stats['tokens']['train']:,}, valid {stats['tokens']['valid']:,}, "
        f"vocab {stats['tokens']['vocab_size']:,}")
  print("ours by phase (s): " + ", ".join(f"{k} {v}" for k, v in stats["seconds"].items()))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--childes", default="data:childes", help="as config.data.childes")
  parser.add_argument("--workers", type=int, default=2, help="processes for ours")
  parser.add_argument("--repeats", type=int, default=1, help="runs per side; the fastest counts")
  args = parser.parse_args()

  targets = read_targets(args.childes)
  warm(targets)
  baseline, ours, stats = float("inf"), float("inf"), None
  for r in range(args.repeats):
    b, n_files = time_baseline(targets)
    o, s = time_ours(args.childes, args.workers)
    print(f"run {r + 1}: baseline {b:.2f} s ({n_files} files via read_chat), ours {o:.2f} s", flush=True)
    baseline = min(baseline, b)
    if o < ours:
      ours, stats = o, s
  report(stats)
  print(f"ratio={ours / baseline:.3f} ours={ours:.2f} baseline={baseline:.2f} unit=s")


if __name__ == "__main__":
  main()
