"""One CHAT transcript -> speakers with roles and cleaned utterances.

Parsing is pylangacq's (`strict=False`); its per-utterance warnings are
counted, not printed. Every utterance is cleaned from its raw main tier
(`utterance.tiers[code]`), so an utterance whose `tokens` came back empty
because `%mor` is misaligned is recovered like any other; how many were is
counted (`recovered`).
"""

import collections
import dataclasses
import re
import warnings

from llamalogue.data import chat
from llamalogue.data.sources import BadFile

CHILD_ROLES = ("Target_Child",)
# Transcripts without a Target_Child (e.g. Brent, Morisset) call the child `Child`.
FALLBACK_CHILD_ROLES = ("Child",)
# Canonical tags: a role held by exactly one speaker is written with this code.
CANONICAL_CODES = {"child": "CHI", "Mother": "MOT", "Father": "FAT"}

UNKNOWN_SPEAKER = "unknown_speaker"
_CODE = re.compile(r"[A-Za-z0-9_']+$")


@dataclasses.dataclass
class Utt:
  """A cleaned utterance: original speaker code, tag, role, text, word count."""
  index: int          # position among the transcript's utterances (0-based)
  code: str
  tag: str            # code as written in the unit text (`CHI` for the target child)
  role: str
  text: str
  words: int
  child: bool         # spoken by the target child


@dataclasses.dataclass
class Transcript:
  id: str
  participants: dict[str, str]           # code -> role
  utts: list[Utt]
  read: int = 0                          # utterances pylangacq returned
  drops: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  empty_tokens: int = 0                  # utterances whose `tokens` came back empty
  recovered: int = 0                     # ... of which cleaning kept text
  warnings: int = 0                      # pylangacq warnings for this file


def check_headers(text: str, name: str) -> dict[str, str]:
  """Checks the CHAT frame; returns {code: role} from @Participants.

  Raises BadFile naming the problem: not CHAT at all, no @Participants,
  an entry without a role, no @End (a truncated file).
  """
  head = text[:20000]
  lines = [l.strip() for l in head.splitlines()]
  if "@Begin" not in lines:
    if not any(l.startswith("*") and ":" in l for l in lines):
      raise BadFile(name, "not a CHAT transcript (no @Begin line and no *SPEAKER: lines)")
    raise BadFile(name, "broken CHAT headers: no @Begin line")
  parts_line = next((l for l in _logical_lines(head) if l.startswith("@Participants:")), None)
  if parts_line is None:
    raise BadFile(name, "broken CHAT headers: no @Participants line")
  roles = {}
  for entry in parts_line.split(":", 1)[1].split(","):
    fields = entry.split()
    if len(fields) < 2 or not _CODE.match(fields[0]):
      raise BadFile(name, f"broken CHAT headers: @Participants entry {entry.strip()!r} "
                    "needs a speaker code and a role")
    roles[fields[0]] = fields[-1]
  if not any(l.strip() == "@End" for l in text[-2000:].splitlines()):
    raise BadFile(name, "broken CHAT transcript: no @End line (truncated file?)")
  return roles


def _logical_lines(text: str) -> list[str]:
  """Header lines with CHAT tab-continuations joined."""
  out: list[str] = []
  for line in text.splitlines():
    if line.startswith("\t") and out:
      out[-1] += " " + line.strip()
    else:
      out.append(line.strip())
  return out


def child_codes(participants: dict[str, str]) -> set[str]:
  """Speaker codes of the target child(ren)."""
  codes = {c for c, r in participants.items() if r in CHILD_ROLES}
  return codes or {c for c, r in participants.items() if r in FALLBACK_CHILD_ROLES}


def tag_map(participants: dict[str, str], normalize: bool) -> dict[str, str]:
  """code -> tag; the single target child, mother, father get CHI, MOT, FAT."""
  tags = {c: c for c in participants}
  if not normalize:
    return tags
  groups = {"child": sorted(child_codes(participants))}
  for role in ("Mother", "Father"):
    groups[role] = sorted(c for c, r in participants.items() if r == role)
  for key, codes in groups.items():
    canon = CANONICAL_CODES[key]
    if len(codes) == 1 and (canon == codes[0] or canon not in participants):
      tags[codes[0]] = canon
  return tags


def parse(text: str, tid: str):
  """pylangacq parse of one transcript; returns (CHAT, warning count)."""
  import pylangacq
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    reader = pylangacq.CHAT.from_strs([text], ids=[tid], parallel=False, strict=False)
  return reader, len(caught)


def read_transcript(text: str, tid: str, name: str, normalize_tags: bool = True) -> Transcript:
  """Parses, maps speakers to roles and cleans every utterance."""
  header_roles = check_headers(text, name)
  reader, n_warnings = parse(text, tid)
  participants = {p.code: p.role for p in reader.participants()}
  for code, role in header_roles.items():
    participants.setdefault(code, role)
  tags = tag_map(participants, normalize_tags)
  children = child_codes(participants)
  out = Transcript(id=tid, participants=participants, utts=[], warnings=n_warnings)
  clean = chat.clean
  index = -1
  for u in reader.utterances():
    code = u.participant
    if code is None:          # a changeable header (@Comment, @New Episode, ...)
      continue
    index += 1
    raw = u.annotated     # the raw main tier, as in u.tiers[code]
    if raw is None:
      raw = (u.tiers or {}).get(code, "")
    # Only files with warnings can have misaligned (empty-token) utterances.
    empty = bool(n_warnings) and not u.tokens
    if empty:
      out.empty_tokens += 1
    if code not in participants:
      out.drops[UNKNOWN_SPEAKER] += 1
      continue
    cleaned, n_words, reason = clean(raw)
    if reason:
      out.drops[reason] += 1
      continue
    if empty:
      out.recovered += 1
    out.utts.append(Utt(index, code, tags[code], participants[code], cleaned,
                        n_words, code in children))
  out.read = index + 1
  return out
