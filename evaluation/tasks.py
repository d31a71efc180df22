"""Evaluation tasks: loaders that turn benchmark files into scoring requests.

Every item is a set of candidate texts with the character index where each one's
scored span starts (0 = the whole text) and the index of the right candidate.
Loaders read from `llamalogue.paths.data_root()` (see ../shared/data/README.md);
a missing file raises DataError naming it and where it comes from, and a
malformed line names the file and line.
"""

import csv
import dataclasses
import json
import pathlib
import zipfile
from typing import Callable, Iterable

from llamalogue import paths
from llamalogue.errors import ConfigError, DataError


@dataclasses.dataclass(frozen=True)
class Item:
  uid: str                        # "<task>/<subtask>/<index in the source>"
  subtask: str
  texts: tuple[str, ...]
  spans: tuple[int, ...]          # scored span of texts[i] is texts[i][spans[i]:]
  label: int = 0                  # index of the right candidate
  ratio: float | None = None      # wug: human preference for the first candidate


@dataclasses.dataclass
class Task:
  name: str                       # the name `config.tasks` uses
  benchmark: str                  # display name
  kind: str                       # "choice" (accuracy) or "correlation" (Spearman rho, wug)
  items: list[Item]
  source: str
  notes: str = ""
  private: bool = False           # never write its texts anywhere (EWoK)


SOURCES = {
    "communicative_baby": "the study's release, github.com/fpadovani/communicative_baby_dpo (dpo_dataset/)",
    "blimp": "BLiMP, github.com/alexwarstadt/blimp (data/*.jsonl)",
    "babylm": "the BabyLM 2025 evaluation data (github.com/babylm/evaluation-pipeline-2025, evaluation_data/)",
    "zorro": "Zorro, github.com/phueb/Zorro (sentences/babyberta/*.txt)",
    "ewok": "EWoK as filtered for BabyLM 2025 (password ZIP, password 'ewok'; never unpack it in plain text)",
    "lexical_decision": "the study's lexical-decision set, Hugging Face dataset bbunzeck/lexical-decision "
                        "(columns lexeme, wug), saved as eval/lexical_decision/lexical_decision.jsonl",
}


# ---------------------------------------------------------------------------- file reading

def data_file(rel: str, source: str) -> pathlib.Path:
  """`data_root()/rel`, or DataError naming the file and where it comes from."""
  p = paths.data_root() / rel
  if not p.exists():
    raise DataError(f"missing benchmark file {p} (from {SOURCES[source]}; data root {paths.data_root()}, "
                    "set LLAMALOGUE_DATA to change it)")
  return p


def read_jsonl(path: pathlib.Path, text: str | None = None) -> list[tuple[int, dict]]:
  """(line number, record) pairs; blank lines skipped; bad JSON -> DataError with file:line."""
  if text is None:
    text = path.read_text(encoding="utf-8")
  out = []
  for n, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{n}: malformed JSON line ({e.msg})") from None
    if not isinstance(rec, dict):
      raise DataError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
    out.append((n, rec))
  return out


def need(rec: dict, keys: Iterable[str], where: str, types=(str,)) -> list:
  """The values of `keys` in `rec`, or DataError naming the missing or mistyped key."""
  values = []
  for k in keys:
    if k not in rec:
      raise DataError(f"{where}: missing field {k!r}")
    if not isinstance(rec[k], types):
      raise DataError(f"{where}: field {k!r} should be {'/'.join(t.__name__ for t in types)}, "
                      f"got {type(rec[k]).__name__}")
    values.append(rec[k])
  return values


def pair_item(task: str, subtask: str, index, good: str, bad: str, spans=(0, 0)) -> Item:
  return Item(f"{task}/{subtask}/{index}", subtask, (good, bad), tuple(spans))


# ---------------------------------------------------------------------------- dialogue minimal pairs

def dialogue_text(prompt: str, reply: str) -> str:
  """The study's scored string: `prompt + " " + reply`."""
  return prompt + " " + reply


def load_dialogue_word(**_) -> Task:
  """Word-matched dialogue minimal pairs: huggingface_dpo_format_eval.json (7,548 pairs)."""
  path = data_file("communicative_baby/dpo_dataset/huggingface_dpo_format_eval.json", "communicative_baby")
  try:
    rows = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
  if not isinstance(rows, list):
    raise DataError(f"{path}: expected a JSON list of {{prompt, chosen, rejected}} objects")
  items = []
  for i, rec in enumerate(rows):
    if not isinstance(rec, dict):
      raise DataError(f"{path}: entry {i} is not an object")
    prompt, chosen, rejected = need(rec, ("prompt", "chosen", "rejected"), f"{path}: entry {i}")
    items.append(pair_item("dialogue_word", "word_matched", 18_000 + i,
                           dialogue_text(prompt, chosen), dialogue_text(prompt, rejected)))
  return Task("dialogue_word", "Dialogue MP (word)", "choice", items, str(path))


def split_cell(cell: str, where: str) -> tuple[str, str]:
  """`*MOT: <utt>\\t*CHI: <utt>` -> (prompt, reply)."""
  parts = cell.split("\t")
  if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
    raise DataError(f"{where}: expected '<prompt>\\t<reply>' in a pair cell, got {cell[:60]!r}")
  return parts[0], parts[1]


def load_dialogue_token(first_row: int = 18_000, last_row: int = 25_519, **_) -> Task:
  """Token-matched dialogue minimal pairs: rows 18,000-25,519 of tok_pairs_no_overlap_1.csv."""
  path = data_file("communicative_baby/dpo_dataset/tok_pairs_no_overlap_1.csv", "communicative_baby")
  items = []
  with path.open(encoding="utf-8", newline="") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None or header[1:] != ["pospair", "negpair"]:
      raise DataError(f"{path}:1: expected header ',pospair,negpair', got {header}")
    for row in reader:
      where = f"{path}:{reader.line_num}"
      if len(row) != 3:
        raise DataError(f"{where}: expected 3 columns (index, pospair, negpair), got {len(row)}")
      try:
        index = int(row[0])
      except ValueError:
        raise DataError(f"{where}: row index {row[0]!r} is not an integer") from None
      if not first_row <= index <= last_row:
        continue
      prompt, good = split_cell(row[1], where)
      prompt_bad, bad = split_cell(row[2], where)
      items.append(pair_item("dialogue_token", "token_matched", index,
                             dialogue_text(prompt, good), dialogue_text(prompt_bad, bad)))
  return Task("dialogue_token", "Dialogue MP (token)", "choice", items, str(path))


def load_dialogue_pairs(path: str = "", **_) -> Task:
  """Dialogue minimal pairs from a JSONL of {prompt, chosen, rejected} (e.g. our held-out split)."""
  if not path:
    raise ConfigError("config.heldout_pairs: give a JSONL of {prompt, chosen, rejected} for task dialogue_heldout")
  p = paths.resolve(path, "config.heldout_pairs")
  items = []
  for n, rec in read_jsonl(p):
    prompt, chosen, rejected = need(rec, ("prompt", "chosen", "rejected"), f"{p}:{n}")
    items.append(pair_item("dialogue_heldout", "heldout", n,
                           dialogue_text(prompt, chosen), dialogue_text(prompt, rejected)))
  return Task("dialogue_heldout", "Dialogue MP (held-out)", "choice", items, str(p))


# ---------------------------------------------------------------------------- syntax: BLiMP, supplement, Zorro

def load_sentence_pairs(name: str, benchmark: str, folder: str, source: str, lowercase: bool = False) -> Task:
  """One JSONL per sub-task with `sentence_good` / `sentence_bad`."""
  root = data_file(folder, source)
  files = sorted(root.glob("*.jsonl"))
  if not files:
    raise DataError(f"{root}: no *.jsonl files (from {SOURCES[source]})")
  items = []
  for f in files:
    for n, rec in read_jsonl(f):
      good, bad = need(rec, ("sentence_good", "sentence_bad"), f"{f}:{n}")
      if lowercase:
        good, bad = good.lower(), bad.lower()
      items.append(pair_item(name, f.stem, n, good, bad))
  notes = "lower-cased as the study's script does" if lowercase else ""
  return Task(name, benchmark, "choice", items, str(root), notes)


def load_blimp(lowercase: bool = False, **_) -> Task:
  return load_sentence_pairs("blimp", "BLiMP", "eval/blimp", "blimp", lowercase)


def load_blimp_filtered(**_) -> Task:
  return load_sentence_pairs("blimp_filtered", "BLiMP (BabyLM filtered)", "eval/babylm_2025/blimp_filtered", "babylm")


def load_supplement(**_) -> Task:
  return load_sentence_pairs("supplement", "BLiMP supplement", "eval/babylm_2025/supplement_filtered", "babylm")


def load_zorro(lowercase: bool = False, **_) -> Task:
  """Zorro: plain text, pairs of lines, the ungrammatical sentence first (odd lines)."""
  root = data_file("eval/zorro", "zorro")
  files = sorted(root.glob("*.txt"))
  if not files:
    raise DataError(f"{root}: no *.txt paradigm files (from {SOURCES['zorro']})")
  items = []
  for f in files:
    lines = f.read_text(encoding="utf-8").strip("\n").split("\n")
    if len(lines) % 2:
      raise DataError(f"{f}:{len(lines)}: odd number of lines; Zorro files hold pairs (ungrammatical, grammatical)")
    for i in range(0, len(lines), 2):
      bad, good = lines[i], lines[i + 1]
      if not bad.strip() or not good.strip():
        raise DataError(f"{f}:{i + 1 if not bad.strip() else i + 2}: empty sentence")
      if lowercase:
        good, bad = good.lower(), bad.lower()
      items.append(pair_item("zorro", f.stem, i // 2, good, bad))
  notes = "lower-cased as the study's script does" if lowercase else ""
  return Task("zorro", "Zorro", "choice", items, str(root), notes)


# ---------------------------------------------------------------------------- BabyLM 2025 zero-shot

def load_ewok(**_) -> Task:
  """EWoK (BabyLM 2025 filtered), read from the password ZIP in memory only.

  As the BabyLM 2025 pipeline: both targets follow Context1 and only ` <target>` is scored.
  """
  path = data_file("eval/ewok/ewok_filtered_babylm2025.zip", "ewok")
  items = []
  try:
    with zipfile.ZipFile(path) as z:
      z.setpassword(b"ewok")
      for info in sorted(z.infolist(), key=lambda i: i.filename):
        if not info.filename.endswith(".jsonl"):
          continue
        where = f"{path}!{info.filename}"
        for n, rec in read_jsonl(pathlib.Path(where), z.read(info).decode("utf-8")):
          ctx, t1, t2, domain = need(rec, ("Context1", "Target1", "Target2", "Domain"), f"{where}:{n}")
          texts = (ctx + " " + t1, ctx + " " + t2)
          items.append(Item(f"ewok/{domain}/{pathlib.Path(info.filename).stem}:{n}", domain, texts,
                            (len(ctx), len(ctx))))
  except (zipfile.BadZipFile, RuntimeError) as e:
    raise DataError(f"{path}: cannot read the EWoK ZIP ({e})") from None
  return Task("ewok", "EWoK", "choice", items, str(path), "target scored given Context1 (BabyLM 2025)",
              private=True)


def load_entity_tracking(**_) -> Task:
  """Entity tracking: the first option is right; only the option after the prefix is scored."""
  root = data_file("eval/babylm_2025/entity_tracking", "babylm")
  items = []
  for f in sorted(root.glob("*.jsonl")):
    for n, rec in read_jsonl(f):
      where = f"{f}:{n}"
      (prefix,) = need(rec, ("input_prefix",), where)
      (options,) = need(rec, ("options",), where, (list,))
      (numops,) = need(rec, ("numops",), where, (int,))
      if len(options) < 2 or not all(isinstance(o, str) for o in options):
        raise DataError(f"{where}: 'options' must be a list of at least two strings")
      subtask = f"{f.stem}_{numops}_ops"
      items.append(Item(f"entity_tracking/{subtask}/{n}", subtask, tuple(prefix + o for o in options),
                        tuple(len(prefix) for _ in options)))
  if not items:
    raise DataError(f"{root}: no entity-tracking items (from {SOURCES['babylm']})")
  return Task("entity_tracking", "Entity tracking", "choice", items, str(root))


def load_wug(**_) -> Task:
  """Wug adjective nominalization: two full sentences, human preference ratio for the first."""
  path = data_file("eval/babylm_2025/wug_adj_nominalization/wug_adj_nominalization.jsonl", "babylm")
  items = []
  for n, rec in read_jsonl(path):
    (sentences,) = need(rec, ("sentences",), f"{path}:{n}")
    (ratio,) = need(rec, ("ratio",), f"{path}:{n}", (int, float))
    texts = tuple(sentences.split("\t"))
    if len(texts) != 2:
      raise DataError(f"{path}:{n}: 'sentences' must hold two tab-separated sentences")
    items.append(Item(f"wug/wug_adj_nominalization/{n}", "wug_adj_nominalization", texts, (0, 0),
                      ratio=float(ratio)))
  return Task("wug", "Wug adj. nominalization", "correlation", items, str(path))


# ---------------------------------------------------------------------------- the study's lexical decision

def load_lexical_decision(**_) -> Task:
  """The study's lexical decision (real word vs. nonword), if its data has been saved locally."""
  path = data_file(LEXICAL_DECISION_FILE, "lexical_decision")
  items = []
  for n, rec in read_jsonl(path):
    lexeme, wug = need(rec, ("lexeme", "wug"), f"{path}:{n}")
    if lexeme and wug:
      items.append(pair_item("lexical_decision", "lexical_decision", n, lexeme, wug))
  return Task("lexical_decision", "Lexical decision", "choice", items, str(path))


# ---------------------------------------------------------------------------- registry

LOADERS: dict[str, Callable[..., Task]] = {
    "dialogue_word": load_dialogue_word,
    "dialogue_token": load_dialogue_token,
    "dialogue_heldout": load_dialogue_pairs,
    "zorro": load_zorro,
    "blimp": load_blimp,
    "blimp_filtered": load_blimp_filtered,
    "supplement": load_supplement,
    "ewok": load_ewok,
    "entity_tracking": load_entity_tracking,
    "wug": load_wug,
    "reading": None,              # evaluation/reading.py: a regression, not items
    "lexical_decision": load_lexical_decision,
}

DEFAULT_TASKS = ("dialogue_word", "dialogue_token", "zorro", "blimp", "blimp_filtered", "supplement",
                 "ewok", "entity_tracking", "wug", "reading")

# Tasks the study's own scripts scored lower-cased (evaluate_BLIMP.py / evaluate_zorro.py).
STUDY_LOWERCASED = ("blimp", "zorro")


LEXICAL_DECISION_FILE = "eval/lexical_decision/lexical_decision.jsonl"


def parse_task_names(spec: str, heldout: str = "") -> list[str]:
  """`"all"` or a comma-separated list -> known task names, in the given order.

  "all" adds dialogue_heldout when `heldout` is given and lexical_decision when its data is present.
  """
  spec = (spec or "all").strip()
  if spec == "all":
    names = list(DEFAULT_TASKS)
    if heldout:
      names.insert(2, "dialogue_heldout")
    if (paths.data_root() / LEXICAL_DECISION_FILE).exists():
      names.insert(names.index("zorro") + 1, "lexical_decision")
    return names
  names = [n.strip() for n in spec.split(",") if n.strip()]
  unknown = [n for n in names if n not in LOADERS]
  if unknown:
    raise ConfigError(f"config.tasks: unknown task(s) {unknown}; choose from {sorted(LOADERS)} or 'all'")
  return list(dict.fromkeys(names))


def lowercase_for(task: str, mode: str, convention: str) -> bool:
  """config.lowercase: 'auto' lower-cases what the study's scripts did, under the study convention."""
  if mode not in ("auto", "yes", "no"):
    raise ConfigError(f"config.lowercase: {mode!r} is not one of auto, yes, no")
  if mode == "auto":
    return convention == "study" and task in STUDY_LOWERCASED
  return mode == "yes" and task in STUDY_LOWERCASED


def load(name: str, convention: str = "study", lowercase: str = "auto", heldout: str = "") -> Task:
  loader = LOADERS[name]
  return loader(lowercase=lowercase_for(name, lowercase, convention), path=heldout)


def subsample(items: list[Item], n: int) -> list[Item]:
  """At most `n` items, spread round-robin over sub-tasks in file order (0 = all)."""
  if not n or n >= len(items):
    return items
  by_sub: dict[str, list[Item]] = {}
  for it in items:
    by_sub.setdefault(it.subtask, []).append(it)
  out, depth = [], 0
  while len(out) < n:
    for group in by_sub.values():
      if depth < len(group) and len(out) < n:
        out.append(group[depth])
    depth += 1
  return out
