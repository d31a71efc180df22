"""Preference pairs for DPO: load them, build them from held-out dialogue, encode them to token ids.

A pair is an adult turn and two child replies, each with its CHAT speaker tag:
`prompt="*MOT: what is that ?"`, `chosen="*CHI: it looks like a gun ."` (the child's real
reply), `rejected="*CHI: you do it like that ."` (a random child utterance of the same length).

* `load_pairs(spec)` reads the study's released files (`huggingface_dpo_format*.json`, a JSON
  array; `len_/tok_pairs_no_overlap_1.csv`; `synthetic_dpo_format.json`, untagged: tags are
  added), our own JSONL `{prompt, chosen, rejected}` (a JSON array works too) and Hugging Face
  hub datasets `hf:<id>[:split]`. A bad row stops with one line naming the file and row, or,
  with `on_error="skip"`, is counted and reported at the end.
* `build_pairs(data_dir)` makes pairs from a prepared held-out split (STUDY.md §4): training
  pairs and the dialogue minimal-pair benchmark (word- and token-matched), disjoint by adult
  turn. `run` is the `pairs` mode of main.py (configs/pairs.py).
* `encode_pairs(pairs, tokenizer, style=...)` gives next-token arrays per side, in one of two
  styles: `benchmark` (the string and span the dialogue minimal-pair benchmark scores) or `trl`
  (trl 0.19.1's `DPOTrainer.tokenize_row`: prompt and reply tokenized apart, EOS after the reply).
"""

import collections
import csv
import dataclasses
import json
import pathlib
import re
import sys
import time
from typing import Iterator

import numpy as np

from evaluation import scoring, tasks
from llamalogue import hf, paths
from llamalogue.data.units import SPEAKER_TAG
from llamalogue.errors import ConfigError, DataError

ON_ERROR = ("raise", "skip")
STYLES = ("benchmark", "trl")
MATCHES, OVERLAPS = ("word", "token"), ("tokens", "words")   # distractor length match; what "overlap" counts
TAG = re.compile(SPEAKER_TAG.pattern + r"(\s|$)")   # a text that starts with its speaker's tag


@dataclasses.dataclass(frozen=True)
class Pair:
  prompt: str                     # "*MOT: <utt>"
  chosen: str                     # "*CHI: <utt>"
  rejected: str                   # "*CHI: <utt>"
  where: str = dataclasses.field(default="", compare=False)   # "file:line" of its source row

  def record(self) -> dict:
    return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


class Pairs(list):
  """A list of `Pair`s plus what loading did: rows skipped (by reason) and texts tagged."""

  def __init__(self, items=(), source: str = ""):
    super().__init__(items)
    self.source, self.skipped, self.tagged, self.problems = source, collections.Counter(), collections.Counter(), []


def _check_on_error(on_error: str) -> None:
  if on_error not in ON_ERROR:
    raise ConfigError(f"on_error: {on_error!r} is not one of {ON_ERROR}")


def _report(what: str, skipped: collections.Counter, total: int, problems: list[str]) -> None:
  """One warning line for counted skips, plus the first few rows that were skipped."""
  if not skipped:
    return
  reasons = ", ".join(f"{n} {r}" for r, n in skipped.most_common())
  print(f"warning: {what}: skipped {sum(skipped.values())} of {total} rows ({reasons})", file=sys.stderr)
  for p in problems[:5]:
    print(f"warning:   {p}", file=sys.stderr)


# ---------------------------------------------------------------------------- loading

def tagged(text: str, tag: str) -> str:
  """`text` as it is if it starts with a `*XXX:` speaker tag, else `*<tag>: <text>`."""
  return text if TAG.match(text) else f"*{tag}: {text.strip()}"


def body(text: str) -> str:
  """The utterance without its speaker tag."""
  m = TAG.match(text)
  return text[m.end():] if m else text


def make_pair(rec, where: str, counts: collections.Counter) -> Pair:
  """A Pair from a `{prompt, chosen, rejected}` record; tags added where missing (counted)."""
  if not isinstance(rec, dict):
    raise DataError(f"{where}: expected an object with prompt, chosen, rejected; got {type(rec).__name__}")
  fields = tasks.need(rec, ("prompt", "chosen", "rejected"), where)
  out = []
  for key, text, tag in zip(("prompt", "chosen", "rejected"), fields, ("MOT", "CHI", "CHI")):
    if not body(text).strip():
      raise DataError(f"{where}: empty {key}" + (" reply" if key != "prompt" else ""))
    if not TAG.match(text):
      counts[key] += 1
    out.append(tagged(text, tag))
  return Pair(*out, where=where)


def _json_rows(path: pathlib.Path) -> Iterator[tuple[str, object]]:
  """(where, record or DataError) per row of a JSON array or a JSON-lines file."""
  text = path.read_text(encoding="utf-8")
  if text.lstrip().startswith("["):
    try:
      rows = json.loads(text)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    for i, rec in enumerate(rows):
      yield f"{path}: entry {i + 1}", rec
    return
  for n, line in enumerate(text.splitlines(), 1):
    try:
      if line.strip():
        yield f"{path}:{n}", json.loads(line)
    except json.JSONDecodeError as e:
      yield f"{path}:{n}", DataError(f"{path}:{n}: malformed JSON line ({e.msg})")


def _csv_rows(path: pathlib.Path) -> Iterator[tuple[str, object]]:
  """The study's pair CSVs: `,pospair,negpair`, cells `*MOT: <utt>\\t*CHI: <utt>`."""
  with path.open(encoding="utf-8", newline="") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None or header[1:] != ["pospair", "negpair"]:
      raise DataError(f"{path}:1: expected the header ',pospair,negpair', got {header}")
    for row in reader:
      where = f"{path}:{reader.line_num}"
      try:
        if len(row) != 3:
          raise DataError(f"{where}: expected 3 columns (index, pospair, negpair), got {len(row)}")
        prompt, chosen = tasks.split_cell(row[1], where)
        prompt_neg, rejected = tasks.split_cell(row[2], where)
        if prompt != prompt_neg:
          raise DataError(f"{where}: the prompt differs between pospair and negpair")
        yield where, {"prompt": prompt, "chosen": chosen, "rejected": rejected}
      except DataError as e:
        yield where, e


def _hf_rows(spec: str) -> Iterator[tuple[str, object]]:
  """Rows of a Hugging Face hub dataset `hf:<id>[:split]` (default split `train`)."""
  repo, _, split = spec[3:].partition(":")
  try:
    import datasets  # heavy, only for hf: pair datasets
    ds = datasets.load_dataset(repo, split=split or "train")
  except Exception as e:
    raise DataError(f"{spec}: cannot load the dataset from the Hugging Face hub ({type(e).__name__}); "
                    "offline? save it as JSONL {prompt, chosen, rejected} and pass the file") from None
  for i, rec in enumerate(ds):
    yield f"{spec}: row {i + 1}", rec


def load_pairs(spec: str, *, limit: int = 0, offset: int = 0, on_error: str = "raise") -> Pairs:
  """Pairs from a released file, our JSONL, or `hf:<id>[:split]`; paths may start with `data:`.

  `offset` skips the source's first rows (0-based, as the study numbers them: rows 18,000- of
  the CSVs are its benchmark), `limit` > 0 reads at most that many rows after it. A bad row
  raises DataError naming file and row, or with `on_error="skip"` is counted in `.skipped`
  and reported on stderr at the end.
  """
  _check_on_error(on_error)
  if spec.startswith("hf:"):
    rows, source = _hf_rows(spec), spec
  else:
    path = paths.resolve(spec, "pairs file")
    if path.is_dir():
      raise DataError(f"{path}: is a directory; give a pairs file (.json, .jsonl or .csv)")
    rows = _csv_rows(path) if path.suffix.lower() == ".csv" else _json_rows(path)
    source = str(path)
  out = Pairs(source=source)
  total = 0
  for i, (where, rec) in enumerate(rows):
    if i < offset:
      continue
    if limit and i >= offset + limit:
      break
    total += 1
    try:
      if isinstance(rec, DataError):
        raise rec
      out.append(make_pair(rec, where, out.tagged))
    except DataError as e:
      if on_error == "raise":
        raise
      out.skipped[_reason(str(e), where)] += 1
      out.problems.append(str(e))
  _report(f"pairs {source}", out.skipped, total, out.problems)
  return out


def _reason(message: str, where: str) -> str:
  """The skip counter's key: the message without its location and detail (`missing field 'chosen'`)."""
  text = message[len(where) + 2:] if message.startswith(where + ": ") else message
  return re.sub(r"(, got .*|\s*\(.*\))$", "", text)


# ---------------------------------------------------------------------------- encoding

@dataclasses.dataclass
class Side:
  inputs: np.ndarray              # [N, L] int32 token ids
  targets: np.ndarray             # [N, L] int32 next-token ids
  loss_mask: np.ndarray           # [N, L] float32, 1 on the reply's targets


@dataclasses.dataclass
class Encoded:
  chosen: Side
  rejected: Side
  style: str
  rows: np.ndarray                # [N] index of each encoded pair in the input list
  skipped: collections.Counter
  counts: dict


def trl_tokenize(pairs: list[Pair], tokenizer) -> list[dict[str, list[int]]]:
  """trl 0.19.1 `DPOTrainer.tokenize_row` of each pair for a decoder-only model, without truncation.

  Prompt, chosen and rejected are tokenized separately without special tokens (no BOS: trl adds
  BOS and EOS to the prompt only for encoder-decoder models); EOS is appended to each reply.
  """
  eos = tokenizer.eos_token_id
  if eos is None:
    raise ConfigError("style trl: the tokenizer has no EOS token to end the replies with")
  ids = {k: tokenizer([getattr(p, k) for p in pairs], add_special_tokens=False)["input_ids"]
         for k in ("prompt", "chosen", "rejected")}
  return [{"prompt_input_ids": list(ids["prompt"][i]), "chosen_input_ids": list(ids["chosen"][i]) + [eos],
           "rejected_input_ids": list(ids["rejected"][i]) + [eos]} for i in range(len(pairs))]


def sequences(pairs: list[Pair], tokenizer, style: str) -> tuple[list[list[int]], np.ndarray]:
  """Token ids of the 2N scored sequences (chosen first, then rejected) and each one's first reply token."""
  if style == "benchmark":
    texts = ([tasks.dialogue_text(p.prompt, p.chosen) for p in pairs]
             + [tasks.dialogue_text(p.prompt, p.rejected) for p in pairs])
    spans = [len(p.prompt) + 1 for p in pairs] * 2
    return scoring.encode(tokenizer, texts, spans)
  rows = trl_tokenize(pairs, tokenizer)
  ids = ([r["prompt_input_ids"] + r["chosen_input_ids"] for r in rows]
         + [r["prompt_input_ids"] + r["rejected_input_ids"] for r in rows])
  first = np.array([len(r["prompt_input_ids"]) for r in rows] * 2, np.int64)
  return ids, first


def pack(ids: list[list[int]], first: np.ndarray, length: int, pad_id: int) -> Side:
  """Next-token arrays `[N, length]`: inputs = ids[:-1], targets = ids[1:], mask on targets >= first."""
  n = len(ids)
  inputs = np.full((n, length), pad_id, np.int32)
  targets = np.full((n, length), pad_id, np.int32)
  mask = np.zeros((n, length), np.float32)
  for i, row in enumerate(ids):
    k = len(row) - 1
    inputs[i, :k] = row[:-1]
    targets[i, :k] = row[1:]
    mask[i, max(int(first[i]), 1) - 1:k] = 1.0
  return Side(inputs, targets, mask)


def encode_pairs(pairs: list[Pair], tokenizer, *, style: str = "benchmark", max_len: int = 0,
                 on_error: str = "raise", pad_multiple: int = 16) -> Encoded:
  """Token arrays for DPO, per side; L = longest input rounded up to `pad_multiple` (at most `max_len`).

  `benchmark`: the scored string `prompt + " " + reply` with the benchmark's scored span
  (evaluation/scoring.py: tokens from the first whose character end lies past the reply's
  start; special tokens as the tokenizer adds them, none for ours). `trl`: trl 0.19.1's
  tokenization (`trl_tokenize`). A pair whose input (all tokens but the last) is longer
  than `max_len` (> 0) raises DataError naming its row, or with `on_error="skip"` is counted.
  """
  if style not in STYLES:
    raise ConfigError(f"style: {style!r} is not one of {STYLES}")
  _check_on_error(on_error)
  n = len(pairs)
  ids, first = sequences(pairs, tokenizer, style) if n else ([], np.zeros(0, np.int64))
  inputs_len = np.array([len(r) - 1 for r in ids], np.int64).reshape(2, n) if n else np.zeros((2, 0), np.int64)
  skipped, problems, keep = collections.Counter(), [], []
  for i, pair in enumerate(pairs):
    longest = int(inputs_len[:, i].max())
    if max_len and longest > max_len:
      message = f"{pair.where or f'pair {i}'}: {longest} input tokens ({style} style), more than max_len {max_len}"
      if on_error == "raise":
        raise DataError(message + "; shorten it or set on_error=skip")
      skipped["longer than max_len"] += 1
      problems.append(message)
      continue
    keep.append(i)
  _report(f"encoding pairs ({style})", skipped, n, problems)
  rows = np.array(keep, np.int64)
  longest = int(inputs_len[:, rows].max()) if len(rows) else 1
  length = -(-longest // pad_multiple) * pad_multiple
  if max_len:
    length = min(length, max_len)
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
  if pad_id is None:
    raise ConfigError("the tokenizer has neither a pad nor an EOS token to pad with")
  sides = [pack([ids[s * n + i] for i in rows], first[s * n + rows], length, pad_id) for s in (0, 1)]
  counts = {"pairs": len(pairs), "encoded": len(rows), "skipped": sum(skipped.values()), "length": length,
            "style": style, "tokens": int(sum(inputs_len[:, rows].sum(axis=1))) if len(rows) else 0,
            "reply_targets": {"chosen": int(sides[0].loss_mask.sum()), "rejected": int(sides[1].loss_mask.sum())}}
  return Encoded(sides[0], sides[1], style, rows, skipped, counts)


# ---------------------------------------------------------------------------- building from held-out dialogue

# CHAT roles of adult speakers whose turns become prompts (the study's released pairs: mothers only).
ADULT_ROLES = ("Mother", "Father", "Grandmother", "Grandfather", "Investigator", "Adult", "Teacher", "Caretaker",
               "Babysitter", "Visitor", "Relative", "Aunt", "Uncle", "Observer", "Housekeeper")
OUTPUTS = {"train": "pairs_train.jsonl", "eval_word": "pairs_eval_word.jsonl", "eval_token": "pairs_eval_token.jsonl"}
STATS_FILE = "pairs_stats.json"


@dataclasses.dataclass(frozen=True)
class BuildSettings:
  seed: int = 42
  match: str = "word"             # length match of the training pairs' distractors: word | token
  overlap: str = "tokens"         # tokens: no shared whitespace token (the release); words: no shared lexical word
  min_words: int = 3              # lexical words in the adult turn and in every child reply
  eval_fraction: float = 0.3      # share of pairs (whole adult turns) for the minimal-pair benchmark
  adult_roles: tuple[str, ...] = ADULT_ROLES

  def check(self, prefix: str = "") -> "BuildSettings":
    for key, ok, what in (("match", self.match in MATCHES, f"is not one of {MATCHES}"),
                          ("overlap", self.overlap in OVERLAPS, f"is not one of {OVERLAPS}"),
                          ("min_words", self.min_words >= 1, "must be at least 1"),
                          ("eval_fraction", 0 < self.eval_fraction < 1, "must lie strictly between 0 and 1"),
                          ("adult_roles", bool(self.adult_roles), "is empty; give CHAT roles, e.g. Mother,Father")):
      if not ok:
        raise ConfigError(f"{prefix}{key}: {getattr(self, key)!r} {what}")
    return self


def prepared_dir(spec: str, split: str = "heldout_a") -> pathlib.Path:
  """The prepared data dir holding `<split>_dialogues.jsonl` (a prepare/pretrain workdir or its data/)."""
  if not spec:
    raise ConfigError("config.data_dir: empty; give a prepared data dir (python main.py --config=configs/prepare.py)")
  path = paths.resolve(spec, "config.data_dir")
  for d in (path / "data", path):
    if (d / f"{split}_dialogues.jsonl").exists():
      return d
  raise DataError(f"config.data_dir: {path} has no {split}_dialogues.jsonl (nor data/{split}_dialogues.jsonl); "
                  "run the prepare mode first")


def read_dialogues(path: pathlib.Path) -> list[dict]:
  """The utterance-level transcripts the prepare mode writes (llamalogue/data/reader.py)."""
  out = []
  for n, rec in tasks.read_jsonl(path):
    utts = rec.get("utterances")
    if not isinstance(utts, list):
      raise DataError(f"{path}:{n}: missing field 'utterances'")
    for j, u in enumerate(utts):
      tasks.need(u, ("text", "tag", "role"), f"{path}:{n}: utterance {j + 1}")
      tasks.need(u, ("i", "words"), f"{path}:{n}: utterance {j + 1}", types=(int,))
      tasks.need(u, ("child",), f"{path}:{n}: utterance {j + 1}", types=(bool,))
    out.append(rec)
  return out


def _words(text: str, overlap: str) -> set[str]:
  words = text.split()
  return set(words) if overlap == "tokens" else {w.lower() for w in words if any(ch.isalnum() for ch in w)}


def exchanges(dialogues: list[dict], s: BuildSettings, drops: collections.Counter) -> list[tuple[str, str, str]]:
  """(adult tag, adult turn, child reply): a target-child utterance right after an adult's, filtered."""
  roles = set(s.adult_roles)
  out = []
  for d in dialogues:
    utts = d["utterances"]
    for a, c in zip(utts, utts[1:]):
      if a["child"] or a["role"] not in roles or not c["child"]:
        continue
      if c["i"] != a["i"] + 1:
        drops["utterance_between"] += 1
      elif a["words"] < s.min_words:
        drops["short_adult_turn"] += 1
      elif c["words"] < s.min_words:
        drops["short_reply"] += 1
      elif _words(a["text"], s.overlap) & _words(c["text"], s.overlap):
        drops["overlap"] += 1
      else:
        out.append((a["tag"], a["text"], c["text"]))
  return out


def length_keys(texts: list[str], match: str, tokenizer) -> list[int]:
  """Whitespace tokens (word) or subword tokens of the reply as it is scored after `*CHI:` (token)."""
  if match == "word":
    return [len(t.split()) for t in texts]
  if tokenizer is None:
    raise ConfigError("match=token needs a tokenizer (tokenizer.json in the prepared data dir)")
  return [len(x) for x in tokenizer([" " + t for t in texts], add_special_tokens=False)["input_ids"]]


def split_by_prompt(prompts: list[str], fraction: float, rng: np.random.Generator) -> np.ndarray:
  """[N] bool, True for the benchmark: whole adult turns (by text) drawn until `fraction` of the items."""
  counts = collections.Counter(prompts)
  order = sorted(counts)
  chosen, total = set(), 0
  for k in rng.permutation(len(order)):
    if total >= fraction * len(prompts):
      break
    chosen.add(order[k])
    total += counts[order[k]]
  return np.array([p in chosen for p in prompts], bool)


def draw_distractors(replies: list[str], keys: list[int], pool: list[str], pool_keys: list[int],
                     rng: np.random.Generator) -> list[str | None]:
  """For each reply, a random pool utterance with the same length key and another text (None if none)."""
  buckets = collections.defaultdict(list)
  for j, k in enumerate(pool_keys):
    buckets[k].append(j)
  out = []
  for reply, key in zip(replies, keys):
    bucket = buckets.get(key, [])
    tries = [bucket[int(rng.integers(len(bucket)))] for _ in range(8)] if bucket else []
    pick = next((pool[j] for j in tries if pool[j] != reply), None)
    if pick is None and bucket:   # (almost) every utterance of this length is the reply itself
      others = [j for j in bucket if pool[j] != reply]
      pick = pool[others[int(rng.integers(len(others)))]] if others else None
    out.append(pick)
  return out


def build_pairs(data_dir: str | pathlib.Path, settings: BuildSettings = BuildSettings(), *, tokenizer=None,
                split: str = "heldout_a") -> dict:
  """Training pairs and the word-/token-matched benchmark from a prepared held-out split.

  chosen = the target child's reply right after an adult turn (both with >= `min_words`
  lexical words, sharing no word: `overlap`), rejected = a random child utterance of the
  split with the same length (`match`) and another text. Adult turns (by text) go wholly to
  training or to the benchmark. Seeded: the same inputs and settings give the same pairs.
  Returns {"train", "eval_word", "eval_token": [Pair], "stats": dict}.
  """
  t0 = time.time()
  s = settings.check()
  d = prepared_dir(str(data_dir), split)
  if tokenizer is None:
    tokenizer = hf.load_tokenizer(d)
  dialogues = read_dialogues(d / f"{split}_dialogues.jsonl")
  drops = collections.Counter()
  items = exchanges(dialogues, s, drops)
  pool = [u["text"] for dl in dialogues for u in dl["utterances"] if u["child"] and u["words"] >= s.min_words]
  replies = [c for _, _, c in items]
  is_eval = split_by_prompt([a for _, a, _ in items], s.eval_fraction, np.random.default_rng([s.seed, 0]))
  drawn = {}
  for stream, match in enumerate(MATCHES, 1):
    drawn[match] = draw_distractors(replies, length_keys(replies, match, tokenizer), pool,
                                    length_keys(pool, match, tokenizer), np.random.default_rng([s.seed, stream]))

  def pairs(select: np.ndarray, match: str) -> list[Pair]:
    return [Pair(f"*{tag}: {a}", f"*CHI: {c}", f"*CHI: {r}", where=f"{split} exchange {i}")
            for i, ((tag, a, c), r) in enumerate(zip(items, drawn[match])) if select[i] and r is not None]
  out = {"train": pairs(~is_eval, s.match), "eval_word": pairs(is_eval, "word"), "eval_token": pairs(is_eval, "token")}
  missing = {m: np.array([r is None for r in drawn[m]], bool) for m in MATCHES}
  no_distractor = {"train": int((missing[s.match] & ~is_eval).sum()),
                   **{f"eval_{m}": int((missing[m] & is_eval).sum()) for m in MATCHES}}
  out["stats"] = {
      "data_dir": str(d), "split": split, "settings": {**dataclasses.asdict(s), "adult_roles": list(s.adult_roles)},
      "dialogues": len(dialogues), "utterances": sum(len(dl["utterances"]) for dl in dialogues),
      "child_utterances_in_pool": len(pool), "exchanges_kept": len(items), "exchanges_dropped": dict(drops),
      "adult_turns": {k: len({a for (_, a, _), e in zip(items, is_eval) if e == (k == "eval")})
                      for k in ("train", "eval")},
      "items": {"train": int((~is_eval).sum()), "eval": int(is_eval.sum())},
      "no_distractor": no_distractor, "pairs": {k: len(out[k]) for k in OUTPUTS},
      "seconds": round(time.time() - t0, 3)}
  return out


def pair_files(out_dir: str | pathlib.Path) -> dict[str, pathlib.Path]:
  """Where `write_pairs` writes each output: {train, eval_word, eval_token, stats: path}."""
  return {key: pathlib.Path(out_dir) / name for key, name in {**OUTPUTS, "stats": STATS_FILE}.items()}


def write_pairs(built: dict, out_dir: str | pathlib.Path) -> dict[str, pathlib.Path]:
  """DIR/pairs_train.jsonl, pairs_eval_word.jsonl, pairs_eval_token.jsonl ({prompt, chosen, rejected}) and stats."""
  written = pair_files(out_dir)
  for key in OUTPUTS:
    paths.atomic_write(written[key], "".join(json.dumps(p.record(), ensure_ascii=False) + "\n" for p in built[key]))
  paths.atomic_write(written["stats"], json.dumps(built["stats"], indent=2, ensure_ascii=False) + "\n")
  return written


def settings_from_config(config) -> BuildSettings:
  roles = tuple(r.strip() for r in str(config.adult_roles).split(",") if r.strip())
  return BuildSettings(seed=config.seed, match=config.match, overlap=config.overlap, min_words=config.min_words,
                       eval_fraction=config.eval_fraction, adult_roles=roles).check("config.")


def run(config, workdir: str) -> None:
  """The `pairs` mode (configs/pairs.py): build from `config.data_dir`, write into `workdir`."""
  settings = settings_from_config(config)
  built = build_pairs(config.data_dir, settings, split=config.split)
  written = write_pairs(built, workdir)
  st = built["stats"]
  print(f"pairs: {st['exchanges_kept']} adult->child exchanges from {st['dialogues']} transcripts "
        f"({sum(st['exchanges_dropped'].values())} dropped: {st['exchanges_dropped']})")
  for key in OUTPUTS:
    print(f"pairs: {key}: {st['pairs'][key]} pairs -> {written[key]}")
  print(f"pairs: stats -> {written['stats']}")
