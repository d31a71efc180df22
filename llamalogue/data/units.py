"""Dialogue units (triplets) and transcript-level splits.

A unit is `unit_size` consecutive utterances of one transcript, written with
their tags: `*MOT: what is that ? *CHI: it looks like a gun . *MOT: yes .`
Consecutive means adjacent in the transcript: an utterance that is dropped
(unintelligible, too short, filtered speaker) ends the run, so no unit
glues together turns that were not adjacent. Runs are cut into
non-overlapping units from their start; every utterance that ends up in no
unit is counted under the first reason that applies.
"""

import collections
import dataclasses
import hashlib
import re
from typing import NamedTuple

from llamalogue.data.transcript import Transcript

SPLITS = ("pretrain", "heldout_a", "heldout_b", "valid")

# A speaker tag as our texts write it (`unit_text`): `*` + a CHAT speaker code + `:`. Codes are
# capitals and digits: MOT, CHI, SI1 (a sibling), TO2, AD1, AT, ... (every code of the CHILDES data
# matches: tests/test_data_chat.py). The one pattern that the sampler, PPO's reply parsing, the
# teacher and the pair readers cut and recognise turns with.
SPEAKER_TAG = re.compile(r"\*[A-Z][A-Z0-9]{1,6}:")

# Utterance drop reasons decided here (cleaning reasons live in chat.py).
SPEAKER_FILTER = "speaker_filter"        # speaker not in data.speakers
SHORT = "short_utterance"                # fewer than data.min_words lexical words
SINGLE_SPEAKER = "single_speaker_transcript"
LEFTOVER = "run_leftover"                # end of a run too short for a unit
NO_CHILD = "unit_without_child"          # no target-child turn: data.require_child, or a held-out split
SHORT_UNIT = "short_unit"                # unit below data.min_unit_words
DUPLICATE = "duplicate_of_heldout"       # pre-training unit whose text is in another split
OVER_BUDGET = "over_budget"              # pre-training units past data.max_words
OVER_ADULT_SHARE = "over_adult_share"    # pre-training units without the child past data.adult_share


class Unit(NamedTuple):
  """One dialogue unit: its tagged text, lexical words, and whether the target child speaks in it."""
  text: str
  words: int
  child: bool


@dataclasses.dataclass(frozen=True)
class UnitRules:
  """The config fields that shape units (see configs/base.py data())."""
  unit_size: int = 3
  min_words: int = 1
  min_unit_words: int = 5
  require_child: bool = True
  speakers: tuple[str, ...] = ()      # codes or roles to keep; () = everyone


def hash_unit(seed: int, tid: str) -> float:
  """Deterministic pseudo-random number in [0, 1) for a transcript id."""
  digest = hashlib.sha256(f"{seed}\0{tid}".encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(tid: str, seed: int, heldout_a: float, heldout_b: float, valid: float) -> str:
  """The split of a transcript, from a seeded hash of its id."""
  u = hash_unit(seed, tid)
  if u < heldout_a:
    return "heldout_a"
  if u < heldout_a + heldout_b:
    return "heldout_b"
  if u < heldout_a + heldout_b + valid:
    return "valid"
  return "pretrain"


def assign_splits(ids: list[str], seed: int, heldout_a: float, heldout_b: float,
                  valid: float) -> dict[str, str]:
  """id -> split for a whole input, by split_of().

  So that small inputs still get every split asked for, a split with a
  non-zero fraction that got no transcript takes the pre-training
  transcript that ranks first by another seeded hash (while at least two
  pre-training transcripts remain).
  """
  out = {i: split_of(i, seed, heldout_a, heldout_b, valid) for i in ids}
  for split, fraction in (("heldout_a", heldout_a), ("heldout_b", heldout_b), ("valid", valid)):
    if fraction <= 0 or split in out.values():
      continue
    pretrain = sorted((i for i, s in out.items() if s == "pretrain"),
                      key=lambda i: hash_unit(seed + 2, i))
    if len(pretrain) >= 2:
      out[pretrain[0]] = split
  return out


def unit_text(utts) -> str:
  return " ".join(f"*{u.tag}: {u.text}" for u in utts)


def _runs(t: Transcript, rules: UnitRules, drops: collections.Counter):
  """Maximal runs of adjacent utterances that may enter a unit."""
  run, last = [], None
  for u in t.utts:
    reason = None
    if rules.speakers and u.code not in rules.speakers and u.role not in rules.speakers:
      reason = SPEAKER_FILTER
    elif u.words < rules.min_words:
      reason = SHORT
    if reason:
      drops[reason] += 1
      if run:
        yield run
      run, last = [], None
      continue
    if run and u.index != last + 1:
      yield run
      run = []
    run.append(u)
    last = u.index
  if run:
    yield run


def build_units(t: Transcript, rules: UnitRules):
  """Units of one transcript: ([Unit], drops Counter, used utterances)."""
  drops: collections.Counter = collections.Counter()
  if len({u.code for u in t.utts}) < 2:
    drops[SINGLE_SPEAKER] += len(t.utts)
    return [], drops, 0
  units, used, n = [], 0, rules.unit_size
  for run in _runs(t, rules, drops):
    whole = len(run) - len(run) % n
    drops[LEFTOVER] += len(run) - whole
    for i in range(0, whole, n):
      group = run[i:i + n]
      words = sum(u.words for u in group)
      child = any(u.child for u in group)
      if rules.require_child and not child:
        drops[NO_CHILD] += n
      elif words < rules.min_unit_words:
        drops[SHORT_UNIT] += n
      else:
        units.append(Unit(unit_text(group), words, child))
        used += n
  return units, drops, used
