"""The `prepare` mode: CHILDES -> units -> splits -> tokenizer -> packed tokens.

  python main.py --config=configs/prepare.py --workdir=DIR

Writes DIR/data/ (see OUTPUTS). The directory is built as a temporary
sibling and renamed into place, with a DONE manifest written last, so an
interrupted run never leaves something a later run takes for complete. A
run with the same inputs and config (same `key`) reuses it.

Prepare once, train anywhere: `--config.data.prepared=PATH` (a `data/` directory
made by `prepare`, possibly on another machine, or the workdir holding it) is used
as it is, checked by its DONE manifest, tokenizer and token arrays; the CHILDES
inputs are then not read (they need not exist).
"""

import collections
import hashlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

import jax
import numpy as np
from tokenizers import Tokenizer

from llamalogue import distributed, paths
from llamalogue.data import bpe
from llamalogue.data import reader
from llamalogue.data import sources
from llamalogue.data import units
from llamalogue.errors import ConfigError, DataError

VERSION = 1   # bump when outputs change for the same inputs and config
TEXT_FILES = {"pretrain": "pretrain.txt", "heldout_a": "heldout_a.txt",
              "heldout_b": "heldout_b.txt", "valid": "valid.txt"}
OUTPUTS = (
    "pretrain.txt", "heldout_a.txt", "heldout_b.txt", "valid.txt",
    "heldout_a_dialogues.jsonl", "heldout_b_dialogues.jsonl",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "train_tokens.npy", "train_words.npy", "valid_tokens.npy", "valid_words.npy",
    "stats.json", "summary.md", "DONE")
# config.data fields that change the outputs (num_workers does not). key_fields() adds adult_share
# when require_child=False, so outputs prepared with require_child=True before it existed stay valid.
KEY_FIELDS = ("childes", "strict", "max_words", "min_words", "min_unit_words", "unit_size",
              "require_child", "speakers", "normalize_tags", "split_seed", "heldout_a",
              "heldout_b", "valid", "vocab_size")
MAX_LISTED_PROBLEMS = 20


def run(config, workdir) -> None:
  """The `prepare` mode: builds DIR/data (or reuses it) and prints its summary."""
  out = ensure_prepared(config, workdir)
  print((out / "summary.md").read_text().rstrip())
  print(f"outputs: {out}")


def ensure_prepared(config, workdir) -> pathlib.Path:
  """DIR/data, built now if missing or stale (inputs or config changed); or `config.data.prepared`.
  With several processes, process 0 builds it while the others wait, then every process checks it."""
  d = _data_config(config)
  if d.get("prepared"):
    return use_prepared(d["prepared"])
  if jax.process_count() > 1:
    if distributed.is_lead():
      _ensure(d, workdir)
    distributed.barrier("prepare data", timeout_s=24 * 3600)
  return _ensure(d, workdir)


def _ensure(d: dict, workdir) -> pathlib.Path:
  out = pathlib.Path(workdir).expanduser() / "data"
  items, bad = sources.list_items(d["childes"], strict=d["strict"])
  key = cache_key(d, items)
  if is_complete(out, key):
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=".data.tmp-", dir=out.parent))
  try:
    build(d, items, bad, key, tmp)
    _swap(tmp, out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out


def use_prepared(path: str) -> pathlib.Path:
  """A finished `prepare` output at `path` (or `path`/data), checked without its CHILDES inputs.

  Raises DataError naming the file when the DONE manifest, a listed output, the
  tokenizer or the token arrays are missing or unreadable.
  """
  out = paths.resolve(path, "config.data.prepared")
  if not (out / "DONE").exists() and (out / "data" / "DONE").exists():
    out = out / "data"
  try:
    manifest = json.loads((out / "DONE").read_text())
  except OSError:
    raise DataError(f"config.data.prepared: {out / 'DONE'} is missing: not a finished `prepare` output") from None
  except ValueError:
    raise DataError(f"config.data.prepared: {out / 'DONE'} is not a JSON manifest") from None
  if not isinstance(manifest, dict) or manifest.get("version") != VERSION or not manifest.get("key"):
    raise DataError(f"config.data.prepared: {out / 'DONE'} is from prepare version "
                    f"{manifest.get('version') if isinstance(manifest, dict) else '?'}; this code reads version "
                    f"{VERSION} (run `prepare` again)")
  for name in [*manifest.get("files", []), *OUTPUTS]:
    if not (out / name).exists():
      raise DataError(f"config.data.prepared: {out / name} is missing (listed by {out / 'DONE'})")
  try:
    Tokenizer.from_file(str(out / "tokenizer.json"))
  except Exception as e:  # the tokenizers library raises plain Exceptions on a bad file
    raise DataError(f"config.data.prepared: {out / 'tokenizer.json'} is not a readable tokenizer: "
                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
  for split in ("train", "valid"):
    try:
      tokens = np.load(out / f"{split}_tokens.npy", mmap_mode="r")
      words = np.load(out / f"{split}_words.npy", mmap_mode="r")
    except (OSError, ValueError) as e:
      raise DataError(f"config.data.prepared: {out / split}_*.npy: unreadable token arrays ({e})") from None
    if tokens.ndim != 1 or words.shape != tokens.shape:
      raise DataError(f"config.data.prepared: {out / (split + '_tokens.npy')} has shape {tokens.shape} but "
                      f"{split}_words.npy has {words.shape}: the arrays do not belong together")
    try:
      counted = json.loads((out / "stats.json").read_text())["tokens"][split]
    except (OSError, ValueError, KeyError, TypeError):
      raise DataError(f"config.data.prepared: {out / 'stats.json'} has no tokens.{split} count") from None
    if counted != tokens.shape[0]:
      raise DataError(f"config.data.prepared: {out / (split + '_tokens.npy')} holds {tokens.shape[0]} tokens but "
                      f"stats.json counted {counted}: the directory is incomplete or mixed")
  return out


def is_complete(out: pathlib.Path, key: str) -> bool:
  """True when `out` was finished by a run with this key."""
  try:
    manifest = json.loads((out / "DONE").read_text())
  except (OSError, ValueError):
    return False
  return manifest.get("key") == key and all((out / f).exists() for f in OUTPUTS)


def key_fields(d: dict) -> tuple[str, ...]:
  """The config.data fields that shape the outputs: KEY_FIELDS, plus adult_share when it can matter."""
  return KEY_FIELDS if d["require_child"] else (*KEY_FIELDS, "adult_share")


def cache_key(d: dict, items: list[sources.Item]) -> str:
  """Hash of the config fields that matter, the code version and the inputs' bytes."""
  h = hashlib.sha256()
  h.update(json.dumps({k: d[k] for k in key_fields(d) if k != "childes"}, sort_keys=True).encode())
  h.update(f"version={VERSION}\n".encode())
  seen = set()
  for item in items:
    h.update(item.id.encode() + b"\0")
    if item.text is not None:
      h.update(hashlib.sha256(item.text.encode()).digest())
    elif item.path not in seen:
      seen.add(item.path)
      h.update(_file_digest(item.path))
  return h.hexdigest()


def _file_digest(path: str) -> bytes:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.digest()


def _swap(tmp: pathlib.Path, out: pathlib.Path) -> None:
  """Moves the finished `tmp` to `out`, replacing an old `out` atomically enough."""
  old = None
  if out.exists():
    old = out.with_name(f".data.old-{os.getpid()}")
    os.replace(out, old)
  os.replace(tmp, out)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def _data_config(config) -> dict:
  """config.data as a plain dict, checked; ConfigError names a bad key."""
  if "data" not in config:
    raise ConfigError("config.data is missing; use configs/base.py data()")
  d = config.data.to_dict() if hasattr(config.data, "to_dict") else dict(config.data)
  defaults = {"min_unit_words": 0, "valid": 0.0, "normalize_tags": True, "num_workers": 1,
              "strict": False, "speakers": "", "require_child": True, "unit_size": 3,
              "min_words": 1, "split_seed": 42, "adult_share": -1.0}
  for k, v in defaults.items():
    d.setdefault(k, v)
  for k in ("childes", "max_words", "heldout_a", "heldout_b", "vocab_size"):
    if k not in d:
      raise ConfigError(f"config.data.{k} is missing")

  def check(ok, key, what):
    if not ok:
      raise ConfigError(f"config.data.{key}: {what}, got {d[key]!r}")

  for k in ("max_words", "vocab_size", "unit_size"):
    check(isinstance(d[k], int) and d[k] > 0, k, "must be a positive integer")
  for k in ("min_words", "min_unit_words", "num_workers", "split_seed"):
    check(isinstance(d[k], int) and d[k] >= 0, k, "must be an integer >= 0")
  for k in ("heldout_a", "heldout_b", "valid"):
    check(isinstance(d[k], (int, float)) and 0 <= d[k] < 1, k, "must be a fraction in [0, 1)")
  check(d["heldout_a"] + d["heldout_b"] + d["valid"] < 1, "heldout_a",
        "heldout_a + heldout_b + valid must leave transcripts for pre-training")
  check(d["vocab_size"] >= 257 + 1, "vocab_size", "must exceed the 256 byte tokens + EOS")
  check(isinstance(d["speakers"], str), "speakers", "must be a comma-separated string")
  share = d["adult_share"]
  check(isinstance(share, (int, float)) and not isinstance(share, bool) and (share == -1 or 0 <= share <= 1),
        "adult_share", "must be -1 (the corpora's natural share) or a fraction in [0, 1]")
  check(share == -1 or not d["require_child"], "adult_share",
        "needs data.require_child=False (with True no unit without the child is kept)")
  check(isinstance(d["childes"], str) and d["childes"].strip(), "childes",
        "must name ZIPs, directories, .cha files or URLs")
  d.setdefault("prepared", "")
  check(isinstance(d["prepared"], str), "prepared", "must be a path (or empty)")
  return d


def _settings(d: dict) -> reader.Settings:
  rules = units.UnitRules(
      unit_size=d["unit_size"], min_words=d["min_words"], min_unit_words=d["min_unit_words"],
      require_child=bool(d["require_child"]),
      speakers=tuple(s.strip() for s in d["speakers"].split(",") if s.strip()))
  return reader.Settings(rules=rules, split_seed=d["split_seed"],
                         normalize_tags=bool(d["normalize_tags"]))


def _log(msg: str) -> None:
  print(f"prepare: {msg}", flush=True)


def build(d: dict, items, bad: dict, key: str, out: pathlib.Path) -> None:
  """The whole pipeline into the (empty, temporary) directory `out`."""
  t0 = time.time()
  workers = max(1, min(d["num_workers"], os.cpu_count() or 1))
  _log(f"reading {len(items)} transcripts with {workers} worker(s)")
  split = units.assign_splits([i.id for i in items], d["split_seed"], d["heldout_a"],
                              d["heldout_b"], d["valid"])
  results = []
  for r in reader.read_all([(i, split[i.id]) for i in items], _settings(d), workers):
    if r["error"]:
      if d["strict"]:
        raise DataError(f"{r['name']}: {r['error']} (data.strict=True; set it False to skip)")
      bad[r["name"]] = r["error"]
      continue
    results.append(r)
  t_read = time.time()
  _warn_bad(bad)
  if not results:
    raise DataError(f"data.childes: no usable CHAT transcripts in {d['childes']!r}")

  split_units, budget, adult = _assign(results, d["max_words"], d["adult_share"])
  if not split_units["pretrain"]:
    raise DataError("data: the pre-training split has no units; add transcripts or relax "
                    "data.min_words / data.min_unit_words / data.require_child")
  for split, name in TEXT_FILES.items():
    _write_lines(out / name, (u.text for u in split_units[split]))
  for split in ("heldout_a", "heldout_b"):
    _write_lines(out / f"{split}_dialogues.jsonl",
                 (json.dumps(r["dialogue"], ensure_ascii=False)
                  for r in results if r["split"] == split))
  t_write = time.time()

  _log(f"training byte-level BPE (vocab {d['vocab_size']}) on "
       f"{len(split_units['pretrain'])} pre-training units")
  tok = bpe.train([u.text for u in split_units["pretrain"]], d["vocab_size"])
  bpe.save(tok, out)
  t_bpe = time.time()
  n_tokens = {}
  for name, split in (("train", "pretrain"), ("valid", "valid")):
    texts = [u.text for u in split_units[split]]
    tokens_N, words_N = bpe.encode(tok, texts)
    bpe.save_arrays(out, name, tokens_N, words_N)
    n_tokens[name] = int(tokens_N.shape[0])
    if int(words_N.sum()) != sum(u.words for u in split_units[split]):
      raise AssertionError(f"{name}: words mask disagrees with the word count")
  t_tok = time.time()

  seconds = {"read": t_read - t0, "write_text": t_write - t_read,
             "train_tokenizer": t_bpe - t_write, "encode": t_tok - t_bpe, "total": t_tok - t0}
  stats = make_stats(d, items, bad, results, split_units, budget, adult, tok, n_tokens, seconds)
  (out / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
  (out / "summary.md").write_text(summary(stats))
  manifest = {"key": key, "version": VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "files": sorted(OUTPUTS)}
  (out / "DONE").write_text(json.dumps(manifest, indent=2) + "\n")


def _write_lines(path: pathlib.Path, lines) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for line in lines:
      f.write(line)
      f.write("\n")


def _warn_bad(bad: dict) -> None:
  if not bad:
    return
  print(f"warning: skipped {len(bad)} bad file(s):", file=sys.stderr)
  for i, (name, reason) in enumerate(sorted(bad.items())):
    if i == MAX_LISTED_PROBLEMS:
      print(f"warning:   ... and {len(bad) - i} more (all in stats.json)", file=sys.stderr)
      break
    print(f"warning:   {name}: {reason}", file=sys.stderr)


def _assign(results: list[dict], max_words: int, adult_share: float):
  """Units per split; pre-training units in seeded transcript order up to the budget.

  A pre-training unit whose exact text also occurs in another split is
  dropped (duplicate_of_heldout), so nothing of the held-out text is
  trained on. The budget stops at the first unit that would pass
  `max_words`; that unit and all later ones are dropped (over_budget).

  With `adult_share` in [0, 1] the units without the child and those with
  it are two queues, each in that seeded order. Units without the child come
  first, up to `adult_share` of the words (of the budget, or of fewer words
  when the child units cannot fill the rest); the others are dropped
  (over_adult_share). Child units then fill the rest of the budget as
  above. Returns (units per split, budget, adult-only accounting).
  """
  split_units = {s: [] for s in units.SPLITS}
  for r in results:
    if r["split"] != "pretrain":
      split_units[r["split"]].extend(r["units"])
  held_texts = {u.text for s in units.SPLITS if s != "pretrain" for u in split_units[s]}
  pretrain = sorted((r for r in results if r["split"] == "pretrain"),
                    key=lambda r: (r["order"], r["id"]))
  queue = []
  for r in pretrain:
    r["over"] = r["adult_over"] = 0
    r["duplicate"] = sum(u.text in held_texts for u in r["units"])
    queue += [(r, u) for u in r["units"] if u.text not in held_texts]
  words = [u.words for _, u in queue]
  if adult_share < 0:
    n = _fits(words, max_words)
    taken, over, past_share = list(range(n)), list(range(n, len(queue))), []
  else:
    alone = [k for k, (_, u) in enumerate(queue) if not u.child]
    child = [k for k, (_, u) in enumerate(queue) if u.child]
    goal = _adult_goal(adult_share, max_words, sum(words[k] for k in child))
    n_alone = _fits([words[k] for k in alone], goal) if goal > 0 else 0   # 0: not even 0-word units
    room = max_words - sum(words[k] for k in alone[:n_alone])
    n_child = _fits([words[k] for k in child], room)
    taken = sorted(alone[:n_alone] + child[:n_child])
    over, past_share = child[n_child:], alone[n_alone:]
  for k in over:
    queue[k][0]["over"] += 1
  for k in past_share:
    queue[k][0]["adult_over"] += 1
  split_units["pretrain"] = [queue[k][1] for k in taken]
  pre = split_units["pretrain"]
  budget = {"max_words": max_words, "words": sum(u.words for u in pre), "units_over": len(over),
            "hit": bool(over)}
  adult_words = sum(u.words for u in pre if not u.child)
  adult = {"share_asked": adult_share,
           "share": round(adult_words / budget["words"], 4) if budget["words"] else 0.0,
           "words": adult_words, "units_used": sum(not u.child for u in pre),
           "units_dropped": sum(not queue[k][1].child for k in over + past_share)}
  return split_units, budget, adult


def _fits(words: list[int], limit: float) -> int:
  """How many of `words`, taken in order, fit in `limit` (the count before the first that would pass it)."""
  total = 0
  for k, w in enumerate(words):
    if total + w > limit:
      return k
    total += w
  return len(words)


def _adult_goal(share: float, max_words: int, child_words: int) -> float:
  """Words of units without the child: `share` of the budget, or of all that the child units can fill."""
  if share == 1:
    return max_words
  return share * min(max_words, child_words / (1 - share))


def make_stats(d, items, bad, results, split_units, budget, adult, tok, n_tokens, seconds) -> dict:
  """Everything countable about the run; utterances read = in units + dropped."""
  unit_size = d["unit_size"]
  drops = collections.Counter()
  for r in results:
    drops.update(r["drops"])
  left_out = 0
  for reason, field in ((units.OVER_BUDGET, "over"), (units.DUPLICATE, "duplicate"),
                        (units.OVER_ADULT_SHARE, "adult_over")):
    utts = sum(r.get(field, 0) for r in results) * unit_size
    if utts:
      drops[reason] += utts
    left_out += utts
  read = sum(r["read"] for r in results)
  in_units = sum(r["used"] for r in results) - left_out
  if read != in_units + sum(drops.values()):
    raise AssertionError(f"utterance accounting: read {read} != {in_units} + {sum(drops.values())}")
  per_split = {}
  for s in units.SPLITS:
    rs = [r for r in results if r["split"] == s]
    per_split[s] = {"files": len(rs), "units": len(split_units[s]),
                    "words": sum(u.words for u in split_units[s]),
                    "utterances": len(split_units[s]) * unit_size}
  warn_files = {r["id"]: r["warnings"] for r in results if r["warnings"]}
  mix = {}
  if not d["require_child"]:
    held_out = sum(r["drops"].get(units.NO_CHILD, 0) for r in results if r["split"] != "pretrain")
    mix = {"adult_only": {**adult, "heldout_units_excluded": held_out // unit_size}}
  return {
      "inputs": d["childes"],
      "files": {"transcripts_listed": len(items), "read": len(results), "skipped": len(bad),
                "skipped_files": dict(sorted(bad.items()))},
      "utterances": {"read": read, "in_units": in_units, "dropped": dict(drops.most_common()),
                     "empty_tokens": sum(r["empty_tokens"] for r in results),
                     "recovered_from_main_tier": sum(r["recovered"] for r in results)},
      "pylangacq_warnings": {"total": sum(warn_files.values()), "files": len(warn_files),
                             "per_file": warn_files},
      "words": {"corpus": sum(r["words"] for r in results),
                **{s: per_split[s]["words"] for s in units.SPLITS}},
      "budget": budget,
      **mix,
      "splits": per_split,
      "tokens": {**n_tokens, "vocab_size": tok.get_vocab_size()},
      "config": {k: d[k] for k in key_fields(d)},
      "seconds": {k: round(v, 2) for k, v in seconds.items()},
  }


def summary(stats: dict) -> str:
  """A short human-readable report (summary.md)."""
  u, f, w, b = stats["utterances"], stats["files"], stats["words"], stats["budget"]
  lines = [
      "# CHILDES data preparation",
      "",
      f"- files: {f['read']} read, {f['skipped']} skipped",
      f"- utterances: {u['read']:,} read, {u['in_units']:,} in units; "
      f"{u['empty_tokens']:,} had empty pylangacq tokens (%mor misaligned), "
      f"{u['recovered_from_main_tier']:,} of them recovered from the main tier",
      f"- pylangacq warnings: {stats['pylangacq_warnings']['total']:,} in "
      f"{stats['pylangacq_warnings']['files']} files (per file in stats.json)",
      f"- lexical words: {w['corpus']:,} in cleaned utterances; pre-training split "
      f"{w['pretrain']:,} of a {b['max_words']:,} budget"
      + (" (budget reached)" if b["hit"] else ""),
      *_adult_line(stats),
      f"- tokens: train {stats['tokens']['train']:,}, valid {stats['tokens']['valid']:,}, "
      f"vocab {stats['tokens']['vocab_size']:,}",
      f"- time: {stats['seconds']['total']:.1f} s",
      "",
      "| split | files | units | words |",
      "|---|---:|---:|---:|",
  ]
  for s, v in stats["splits"].items():
    lines.append(f"| {s} | {v['files']:,} | {v['units']:,} | {v['words']:,} |")
  lines += ["", "| utterances dropped | count |", "|---|---:|"]
  lines += [f"| {k} | {v:,} |" for k, v in u["dropped"].items()]
  return "\n".join(lines) + "\n"


def _adult_line(stats: dict) -> list[str]:
  """The summary line on units without the child (only when data.require_child=False)."""
  if "adult_only" not in stats:
    return []
  a = stats["adult_only"]
  asked = "natural" if a["share_asked"] < 0 else f"asked {a['share_asked']:.3f}"
  return [f"- units without the child: {a['share']:.3f} of pre-training words ({asked}); "
          f"{a['units_used']:,} used, {a['units_dropped']:,} left out; "
          f"{a['heldout_units_excluded']:,} excluded from the held-out splits"]
