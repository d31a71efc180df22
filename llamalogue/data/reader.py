"""Reads all transcripts, in a process pool, into per-transcript results.

Each worker reads one transcript (a ZIP member or a file), parses it with
pylangacq, cleans it and builds its units (its split is given), and returns a
small picklable dict. Results come back in input order, so the output does
not depend on the number of workers.
"""

import dataclasses
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from llamalogue.data import sources
from llamalogue.data import transcript
from llamalogue.data import units
from llamalogue.data.sources import BadFile, Item


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a worker needs to know (all of it from config.data)."""
  rules: units.UnitRules
  split_seed: int = 42
  normalize_tags: bool = True


def dialogue_record(t: transcript.Transcript, split: str) -> dict:
  """Utterance-level record of a held-out transcript (for pairs and prompts)."""
  return {
      "transcript": t.id,
      "split": split,
      "participants": t.participants,
      "child": sorted({u.code for u in t.utts if u.child}),
      "utterances": [{"i": u.index, "speaker": u.code, "tag": u.tag, "role": u.role,
                      "child": u.child, "text": u.text, "words": u.words} for u in t.utts],
  }


def process_item(item: Item, split: str, s: Settings) -> dict:
  """One transcript of `split` -> {id, split, units, stats...}; `error` set for a bad file."""
  base = {"id": item.id, "name": item.name}
  try:
    text = sources.read_text(item)
    t = transcript.read_transcript(text, item.id, item.name, s.normalize_tags)
  except BadFile as e:
    return {**base, "error": e.reason}
  if t.read == 0:
    return {**base, "error": "CHAT transcript without utterances"}
  # Held-out splits are child dialogue whatever data.require_child says (their units are the eval slices).
  rules = s.rules if split == "pretrain" else dataclasses.replace(s.rules, require_child=True)
  unit_list, unit_drops, used = units.build_units(t, rules)
  drops = t.drops + unit_drops
  return {
      **base,
      "error": None,
      "split": split,
      "order": units.hash_unit(s.split_seed + 1, item.id),
      "units": unit_list,
      "used": used,
      "read": t.read,
      "drops": dict(drops),
      "empty_tokens": t.empty_tokens,
      "recovered": t.recovered,
      "warnings": t.warnings,
      "words": sum(u.words for u in t.utts),
      "dialogue": dialogue_record(t, split) if split in ("heldout_a", "heldout_b") else None,
  }


_SETTINGS: Settings | None = None


def _init(settings: Settings) -> None:
  global _SETTINGS
  _SETTINGS = settings


def _work(job: tuple[Item, str]) -> dict:
  return process_item(*job, _SETTINGS)


def read_all(jobs: list[tuple[Item, str]], settings: Settings, num_workers: int):
  """Yields process_item results for (item, split) jobs in input order.

  Workers are spawned (not forked): the caller may already hold JAX or
  tokenizer threads. If the pool breaks (e.g. a script without an
  `if __name__ == "__main__":` guard), the remaining jobs run in-process.
  """
  done = 0
  if num_workers > 1 and len(jobs) > 1:
    pool = ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init, initargs=(settings,))
    try:
      for result in pool.map(_work, jobs, chunksize=4):
        done += 1
        yield result
      return
    except BrokenProcessPool:
      print("warning: the reading process pool broke; continuing in one process",
            file=sys.stderr)
    finally:   # also when the caller stops early (data.strict): drop queued work
      pool.shutdown(wait=True, cancel_futures=True)
  for item, split in jobs[done:]:
    yield process_item(item, split, settings)
  sources.close_zips()
