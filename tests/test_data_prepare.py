"""The prepare pipeline end to end on small CHAT fixtures: outputs, splits, budget, reuse, bad input."""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import warnings
import zipfile

import ml_collections
import numpy as np
import pytest

from configs import base
from llamalogue import paths
from llamalogue.data import bpe, prepare, sources, transcript, units
from llamalogue.errors import ConfigError, DataError

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "chat"
GOOD = FIXTURES / "good"
BAD = FIXTURES / "bad"

_ADULT = ["look at the {0} over there .", "do you like the {0} ?", "where did the {0} go ?",
          "shall we find the {0} together ?", "the {0} is very big today ."]
_CHILD = ["I see the {0} .", "yes I like it .", "the {0} went home .", "we can find it now .",
          "it is big and {1} ."]
_THINGS = ["dog", "cat", "bus", "ball", "tree", "boat", "duck", "cake", "moon", "fish", "frog", "sock"]
_COLORS = ["red", "blue", "green", "small", "loud", "soft"]


def family_transcript(k: int, turns: int = 12) -> str:
  """A simple, valid two-speaker transcript; content varies with k."""
  lines = ["@UTF8", "@Begin", "@Languages:\teng", "@Participants:\tCHI Kid Target_Child, MOT Mother",
           f"@ID:\teng|Gen|CHI|2;{k % 12}.|female|||Target_Child|||", "@ID:\teng|Gen|MOT|||||Mother|||"]
  for i in range(turns):
    thing, color = _THINGS[(k + i) % len(_THINGS)], _COLORS[(k * 7 + i) % len(_COLORS)]
    if i % 2 == 0:
      lines.append("*MOT:\t" + _ADULT[(k + i) % len(_ADULT)].format(thing, color))
    else:
      lines.append("*CHI:\t" + _CHILD[(k + i) % len(_CHILD)].format(thing, color))
  lines.append("@End")
  return "\n".join(lines) + "\n"


def adult_transcript(k: int) -> str:
  """Mother and father talking, the target child once (turn 6): units without, with, without the child."""
  lines = ["@UTF8", "@Begin", "@Languages:\teng",
           "@Participants:\tCHI Kid Target_Child, MOT Mother, FAT Father",
           f"@ID:\teng|Adult|CHI|3;{k % 12}.|male|||Target_Child|||", "@ID:\teng|Adult|MOT|||||Mother|||",
           "@ID:\teng|Adult|FAT|||||Father|||"]
  for i in range(12):
    thing, color = _THINGS[(k * 5 + i) % len(_THINGS)], _COLORS[(k + i) % len(_COLORS)]
    if i == 6:
      lines.append("*CHI:\t" + _CHILD[(k + i) % len(_CHILD)].format(thing, color))
    elif i % 2 == 0:
      lines.append("*MOT:\t" + _ADULT[(k + i) % len(_ADULT)].format(thing, color))
    else:
      lines.append("*FAT:\t" + _CHILD[(k * 3 + i) % len(_CHILD)].format(thing, color))
  lines.append("@End")
  return "\n".join(lines) + "\n"


@pytest.fixture
def corpus(tmp_path) -> pathlib.Path:
  """The good fixtures plus 40 generated transcripts, as a TalkBank-like directory."""
  root = tmp_path / "Corpus"
  shutil.copytree(GOOD / "Family", root / "Family")
  for k in range(40):
    p = root / "Gen" / f"kid{k % 4}" / f"gen{k:02d}.cha"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(family_transcript(k))
  return root


@pytest.fixture
def mixed_corpus(corpus) -> pathlib.Path:
  """`corpus` plus 24 transcripts where the parents mostly talk to each other."""
  for k in range(24):
    p = corpus / "Adult" / f"home{k % 3}" / f"adult{k:02d}.cha"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(adult_transcript(k))
  return corpus


def make_config(childes, **overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "prepare"
  c.seed = 0
  c.data = base.data()
  c.data.childes = str(childes)
  c.data.vocab_size = 300
  c.data.num_workers = 1
  c.data.heldout_a = 0.1
  c.data.heldout_b = 0.1
  c.data.valid = 0.1
  for k, v in overrides.items():
    c.data[k] = v
  return c


def prepared(tmp_path, childes, **overrides) -> pathlib.Path:
  return prepare.ensure_prepared(make_config(childes, **overrides), tmp_path / "run")


def read_lines(path: pathlib.Path) -> list[str]:
  return path.read_text().splitlines()


def test_outputs_complete_and_consistent(tmp_path, corpus):
  out = prepared(tmp_path, corpus)
  assert out == tmp_path / "run" / "data"
  for name in prepare.OUTPUTS:
    assert (out / name).exists(), name
  assert [p.name for p in out.parent.iterdir()] == ["data"]       # no temp dirs left
  stats = json.loads((out / "stats.json").read_text())
  u = stats["utterances"]
  assert u["read"] == u["in_units"] + sum(u["dropped"].values())    # nothing lost silently
  assert u["empty_tokens"] == u["recovered_from_main_tier"] == 1    # rich.cha's misaligned %mor
  assert stats["pylangacq_warnings"] == {"total": 1, "files": 1, "per_file": {"Corpus/Family/Ann/rich.cha": 1}}
  assert stats["files"]["read"] == 44 and stats["files"]["skipped"] == 0
  total = 0
  for split, name in prepare.TEXT_FILES.items():
    lines = read_lines(out / name)
    assert len(lines) == stats["splits"][split]["units"]
    words = sum(units_words(line) for line in lines)
    assert words == stats["splits"][split]["words"] == stats["words"][split]
    total += len(lines)
    for line in lines:
      assert line.startswith("*") and line.count(": ") == 3, line
  assert stats["budget"]["words"] == stats["words"]["pretrain"] and not stats["budget"]["hit"]
  assert "pre-training split" in (out / "summary.md").read_text()
  manifest = json.loads((out / "DONE").read_text())
  assert manifest["version"] == prepare.VERSION and len(manifest["key"]) == 64


def units_words(line: str) -> int:
  from llamalogue.data import chat
  return chat.count_words(line)


def test_text_keeps_tags_and_maps_roles(tmp_path, corpus):
  out = prepared(tmp_path, corpus, heldout_a=0.0, heldout_b=0.0, valid=0.0)
  text = (out / "pretrain.txt").read_text()
  # rich.cha's target child is coded SHE: written as *CHI:, other codes kept.
  assert "*MOT: what is that ? *CHI: it looks like a gun . *MOT: yes it does ." in text
  assert "*INV: can you tell me more ? *CHI: and then we played in the sand until it got dark ." in text
  assert "*SHE:" not in text
  # Brent-style transcript: no Target_Child, the `Child` role counts as the child.
  assert "*MOT: look at the doggy over there . *CHI: doggy go woof ." in text
  # a mother-only transcript has no units
  assert "recorder" not in text
  assert "hola" not in text and "xxx" not in text


def test_units_are_consecutive_triplets_with_the_child(tmp_path, corpus):
  p = corpus / "Family" / "Ann" / "rich.cha"
  t = transcript.read_transcript(p.read_text(), "rich", str(p))
  rules = units.UnitRules(unit_size=3, min_words=1, min_unit_words=5, require_child=True)
  got, drops, used = units.build_units(t, rules)
  assert used == 3 * len(got)
  assert used + sum(drops.values()) + sum(t.drops.values()) == t.read
  by_index = {u.index: u for u in t.utts}
  for text, words, child in got:
    assert text.count("*CHI:") >= 1 and words >= 5 and child
  # `xxx .` (index 3) is dropped, so no unit spans indices 2 and 4.
  assert not any("yes it does . *FAT: do you want" in u.text for u in got)
  # stricter rules drop more, with reasons
  strict = units.UnitRules(unit_size=3, min_words=5, min_unit_words=0)
  got2, drops2, used2 = units.build_units(t, strict)
  assert drops2[units.SHORT] > 0 and used2 + sum(drops2.values()) == len(t.utts)
  only = units.UnitRules(unit_size=2, min_words=1, min_unit_words=0, speakers=("MOT", "Target_Child"))
  got3, drops3, _ = units.build_units(t, only)
  assert drops3[units.SPEAKER_FILTER] > 0
  assert got3 and all("*FAT:" not in u.text and "*INV:" not in u.text for u in got3)
  assert by_index[1].tag == "CHI" and by_index[1].code == "SHE" and by_index[1].child


def test_splits_by_transcript_and_disjoint(tmp_path, corpus):
  out = prepared(tmp_path, corpus)
  pre = set(read_lines(out / "pretrain.txt"))
  for name in ("heldout_a.txt", "heldout_b.txt", "valid.txt"):
    assert not pre & set(read_lines(out / name)), name
  ids = {}
  for split in ("heldout_a", "heldout_b"):
    for line in read_lines(out / f"{split}_dialogues.jsonl"):
      rec = json.loads(line)
      assert rec["split"] == split and rec["utterances"]
      ids[rec["transcript"]] = split
      for utt in rec["utterances"]:
        assert set(utt) == {"i", "speaker", "tag", "role", "child", "text", "words"}
  assert set(ids.values()) == {"heldout_a", "heldout_b"}
  # The split is a function of (seed, transcript path) only.
  for tid, split in ids.items():
    assert units.split_of(tid, 42, 0.1, 0.1, 0.1) == split
  stats = json.loads((out / "stats.json").read_text())
  assert sum(s["files"] for s in stats["splits"].values()) == 44


def test_split_of_is_seeded_and_proportional():
  ids = [f"C/child{i}/file{i:04d}.cha" for i in range(4000)]
  a = [units.split_of(i, 42, 0.05, 0.05, 0.02) for i in ids]
  assert a == [units.split_of(i, 42, 0.05, 0.05, 0.02) for i in ids]
  assert a != [units.split_of(i, 43, 0.05, 0.05, 0.02) for i in ids]
  share = {s: a.count(s) / len(ids) for s in units.SPLITS}
  assert abs(share["heldout_a"] - 0.05) < 0.015 and abs(share["valid"] - 0.02) < 0.01
  # small inputs still get every split asked for
  small = units.assign_splits(ids[:5], 42, 0.05, 0.05, 0.02)
  assert set(small.values()) == set(units.SPLITS)


def test_word_budget_is_exact(tmp_path, corpus):
  out = prepared(tmp_path, corpus, max_words=300)
  stats = json.loads((out / "stats.json").read_text())
  b = stats["budget"]
  assert b["hit"] and 300 - 40 < b["words"] <= 300
  assert b["words"] == stats["words"]["pretrain"] == int(np.load(out / "train_words.npy").sum())
  assert stats["utterances"]["dropped"][units.OVER_BUDGET] == 3 * b["units_over"] > 0
  u = stats["utterances"]
  assert u["read"] == u["in_units"] + sum(u["dropped"].values())


def test_tokens_words_and_tokenizer(tmp_path, corpus):
  out = prepared(tmp_path, corpus)
  tokens_N = np.load(out / "train_tokens.npy")
  words_N = np.load(out / "train_words.npy")
  assert tokens_N.dtype == np.uint16 and words_N.dtype == np.uint8
  assert tokens_N.shape == words_N.shape
  lines = read_lines(out / "pretrain.txt")
  tok = bpe.load(out / "tokenizer.json")
  eos = tok.token_to_id(bpe.EOS)
  assert tok.get_vocab_size() <= 300
  # each unit followed by EOS, ids identical to encoding each unit on its own
  expected = [i for line in lines for i in tok.encode(line).ids + [eos]]
  assert tokens_N.tolist() == expected
  assert int((tokens_N == eos).sum()) == len(lines)
  assert int(words_N.sum()) == sum(units_words(line) for line in lines)
  # the word mask marks exactly the first token of each lexical word
  first = lines[0]
  ids = tok.encode(first).ids
  marks = words_N[:len(ids)].tolist()
  pieces = [tok.decode([i]) for i in ids]
  starts = [k for k, p in enumerate(pieces) if k == 0 or p.startswith(" ")]
  lexical = [k for k in starts if not pieces[k].strip().startswith("*")
             and pieces[k].strip() not in (".", "?", "!", ",")]
  assert [k for k, m in enumerate(marks) if m] == lexical
  valid_N = np.load(out / "valid_tokens.npy")
  assert valid_N.size > 0 and int((valid_N == eos).sum()) == len(read_lines(out / "valid.txt"))


def test_autotokenizer_loads_the_data_dir(tmp_path, corpus):
  from transformers import AutoTokenizer
  out = prepared(tmp_path, corpus)
  hf = AutoTokenizer.from_pretrained(out)
  tok = bpe.load(out / "tokenizer.json")
  s = "*MOT: what is that ? *CHI: it looks like a gun ."
  assert hf(s)["input_ids"] == tok.encode(s).ids                     # no BOS added
  assert hf.eos_token == hf.pad_token == bpe.EOS
  assert hf.eos_token_id == tok.token_to_id(bpe.EOS)
  assert hf.decode(hf(s)["input_ids"]) == s


def test_second_run_reuses_outputs(tmp_path, corpus, monkeypatch):
  out = prepared(tmp_path, corpus)
  done = (out / "DONE").read_text()
  monkeypatch.setattr(prepare, "build", lambda *a, **k: pytest.fail("rebuilt although unchanged"))
  assert prepared(tmp_path, corpus) == out
  # num_workers and seq_len do not change the outputs: still reused
  assert prepared(tmp_path, corpus, num_workers=2, seq_len=32) == out
  assert (out / "DONE").read_text() == done


def test_changed_config_or_input_rebuilds(tmp_path, corpus):
  out = prepared(tmp_path, corpus)
  key1 = json.loads((out / "DONE").read_text())["key"]
  prepared(tmp_path, corpus, vocab_size=280)
  key2 = json.loads((out / "DONE").read_text())["key"]
  assert key2 != key1 and bpe.load(out / "tokenizer.json").get_vocab_size() <= 280
  p = corpus / "Gen" / "kid0" / "gen00.cha"
  p.write_text(p.read_text().replace("look at", "peek at"))
  prepared(tmp_path, corpus, vocab_size=280)
  assert json.loads((out / "DONE").read_text())["key"] not in (key1, key2)
  assert [p.name for p in out.parent.iterdir()] == ["data"]


def test_failed_run_leaves_no_output(tmp_path, corpus, monkeypatch):
  def boom(*a, **k):
    raise RuntimeError("killed during tokenizer training")
  monkeypatch.setattr(bpe, "train", boom)
  with pytest.raises(RuntimeError):
    prepared(tmp_path, corpus)
  assert not (tmp_path / "run" / "data").exists()
  assert list((tmp_path / "run").iterdir()) == []
  # a half-written directory without DONE is never taken for complete
  fake = tmp_path / "run" / "data"
  fake.mkdir()
  (fake / "pretrain.txt").write_text("partial\n")
  monkeypatch.undo()
  out = prepared(tmp_path, corpus)
  assert (out / "DONE").exists() and read_lines(out / "pretrain.txt") != ["partial"]


def test_process_pool_gives_identical_outputs(tmp_path, corpus):
  one = prepare.ensure_prepared(make_config(corpus, num_workers=1), tmp_path / "one")
  two = prepare.ensure_prepared(make_config(corpus, num_workers=2), tmp_path / "two")
  for name in ("pretrain.txt", "heldout_a_dialogues.jsonl", "train_tokens.npy", "tokenizer.json"):
    assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_sources_zip_dir_file_mix(tmp_path, corpus):
  z = tmp_path / "Gen.zip"
  with zipfile.ZipFile(z, "w") as f:
    for p in sorted((corpus / "Gen").rglob("*.cha")):
      f.write(p, "Gen/" + str(p.relative_to(corpus / "Gen")))
  single = corpus / "Family" / "plain.cha"
  items, bad = sources.list_items(f"{z},{corpus / 'Family'},{single}")
  ids = [i.id for i in items]
  assert "Gen/kid0/gen00.cha" in ids and "Family/Ann/rich.cha" in ids and "plain.cha" in ids
  assert len(items) == 45 and not bad
  items, bad = sources.list_items(f"{z},{z}")
  assert len(items) == 40 and len(bad) == 40
  assert bad[f"{z}:Gen/kid0/gen00.cha"] == "duplicate transcript id 'Gen/kid0/gen00.cha' (listed twice?)"
  out = prepared(tmp_path, f"{z},{corpus / 'Family'}")
  assert json.loads((out / "stats.json").read_text())["files"]["read"] == 44


def test_url_source_goes_through_pylangacq(tmp_path, monkeypatch):
  import pylangacq
  texts = [family_transcript(k) for k in range(12)]

  def fake_read_chat(path, strict=True, **kw):
    assert path == "https://example.org/Gen.zip" and strict is False
    return pylangacq.CHAT.from_strs(texts, ids=[f"Gen/g{k}.cha" for k in range(12)], strict=False)

  monkeypatch.setattr(pylangacq, "read_chat", fake_read_chat)
  items, bad = sources.list_items("https://example.org/Gen.zip")
  assert not bad and [i.id for i in items][:2] == ["https://example.org/Gen.zip#Gen/g0.cha",
                                                   "https://example.org/Gen.zip#Gen/g1.cha"]
  out = prepared(tmp_path, "https://example.org/Gen.zip")
  assert read_lines(out / "pretrain.txt")


# ---------------------------------------------------------------- units without the child (data.adult_share)

def test_units_carry_whether_the_child_speaks():
  t = transcript.read_transcript(adult_transcript(3), "a3", "a3.cha")
  got, drops, used = units.build_units(t, units.UnitRules(require_child=False))
  assert [u.child for u in got] == [False, False, True, False] and used == 12 and not +drops
  got, drops, _ = units.build_units(t, units.UnitRules())
  assert [u.child for u in got] == [True] and drops[units.NO_CHILD] == 9


def mix_stats(out: pathlib.Path) -> tuple[dict, list[str], int]:
  """stats.json, the pre-training lines without the child, the longest unit's words; checked against each other."""
  stats = json.loads((out / "stats.json").read_text())
  lines = read_lines(out / "pretrain.txt")
  alone = [line for line in lines if "*CHI:" not in line]
  a = stats["adult_only"]
  assert len(alone) == a["units_used"] and sum(units_words(x) for x in alone) == a["words"]
  assert a["share"] == pytest.approx(a["words"] / stats["words"]["pretrain"], abs=1e-4)
  u = stats["utterances"]
  assert u["read"] == u["in_units"] + sum(u["dropped"].values())
  return stats, alone, max(units_words(x) for x in lines)


@pytest.mark.parametrize("share", [0.25, 0.5])
def test_adult_share_is_reached_within_the_budget(tmp_path, mixed_corpus, share):
  out = prepared(tmp_path, mixed_corpus, require_child=False, adult_share=share, max_words=900)
  stats, alone, longest = mix_stats(out)
  a, b = stats["adult_only"], stats["budget"]
  assert b["hit"] and 900 - longest < b["words"] <= 900
  assert abs(a["words"] - share * b["words"]) <= longest                 # within one unit's words
  assert a["units_dropped"] > 0
  assert stats["utterances"]["dropped"][units.OVER_ADULT_SHARE] == 3 * a["units_dropped"]
  assert "units without the child:" in (out / "summary.md").read_text()


def test_adult_share_as_far_as_the_corpora_allow(tmp_path, mixed_corpus):
  natural = prepared(tmp_path / "natural", mixed_corpus, require_child=False)
  n_stats, n_alone, _ = mix_stats(natural)
  assert n_stats["adult_only"]["share_asked"] == -1 and n_stats["adult_only"]["units_dropped"] == 0
  # too few child words for the budget: fewer words in all, the share still reached
  out = prepared(tmp_path / "few_child", mixed_corpus, require_child=False, adult_share=0.1)
  stats, alone, longest = mix_stats(out)
  assert not stats["budget"]["hit"] and stats["adult_only"]["units_dropped"] > 0
  assert abs(stats["adult_only"]["words"] - 0.1 * stats["words"]["pretrain"]) <= longest
  assert set(read_lines(out / "pretrain.txt")) - set(alone) == set(read_lines(natural / "pretrain.txt")) - set(n_alone)
  # too few units without the child: all of them, the rest child units, the share reported lower
  out = prepared(tmp_path / "few_adult", mixed_corpus, require_child=False, adult_share=0.9)
  stats, _, _ = mix_stats(out)
  assert stats["adult_only"]["units_dropped"] == 0 and stats["adult_only"]["share"] < 0.9
  assert read_lines(out / "pretrain.txt") == read_lines(natural / "pretrain.txt")


def test_heldout_splits_stay_child_dialogue(tmp_path, mixed_corpus):
  child = prepare.ensure_prepared(make_config(mixed_corpus), tmp_path / "child")
  for share in (-1.0, 0.0, 0.4):
    out = prepare.ensure_prepared(make_config(mixed_corpus, require_child=False, adult_share=share),
                                  tmp_path / f"mix{share}")
    for name in ("heldout_a.txt", "heldout_b.txt", "valid.txt", "heldout_a_dialogues.jsonl",
                 "heldout_b_dialogues.jsonl"):
      assert (out / name).read_bytes() == (child / name).read_bytes(), (share, name)
      assert all("*CHI:" in line for line in read_lines(out / name) if name.endswith(".txt"))
    assert json.loads((out / "stats.json").read_text())["adult_only"]["heldout_units_excluded"] > 0
  # share 0: no unit without the child, the same pre-training data as require_child=True
  for name in ("pretrain.txt", "train_tokens.npy", "valid_tokens.npy", "tokenizer.json"):
    assert (tmp_path / "mix0.0" / "data" / name).read_bytes() == (child / name).read_bytes(), name


def test_adult_share_is_in_the_cache_key_only_when_it_can_matter(corpus):
  items, _ = sources.list_items(str(corpus))

  def key(config):
    return prepare.cache_key(prepare._data_config(config), items)

  before = make_config(corpus)
  del before.data["adult_share"]                  # a config written before the field existed
  assert key(before) == key(make_config(corpus))   # its prepared outputs stay valid
  keys = {key(make_config(corpus, require_child=False, adult_share=s)) for s in (-1.0, 0.0, 0.3)}
  assert len(keys) == 3 and key(make_config(corpus)) not in keys


# ---------------------------------------------------------------- bad input

BAD_REASONS = {
    "non_utf8.cha": "not UTF-8 text (byte 0xf6 on line 7)",
    "broken_headers.cha": "@Participants entry 'MOT' needs a speaker code and a role",
    "no_participants.cha": "no @Participants line",
    "truncated.cha": "no @End line (truncated file?)",
    "not_chat.cha": "not a CHAT transcript",
    "empty.cha": "CHAT transcript without utterances",
    "corrupt.zip": "not a readable ZIP archive",
}


@pytest.mark.parametrize("name", sorted(BAD_REASONS))
def test_bad_file_among_good_is_skipped_and_counted(tmp_path, corpus, name, capsys):
  bad = BAD / name
  out = prepared(tmp_path, f"{corpus},{bad}")
  stats = json.loads((out / "stats.json").read_text())
  assert stats["files"]["skipped"] == 1 and stats["files"]["read"] == 44
  (where, reason), = stats["files"]["skipped_files"].items()
  assert where == str(bad) and BAD_REASONS[name] in reason
  err = capsys.readouterr().err
  assert "skipped 1 bad file" in err and name in err


@pytest.mark.parametrize("name", sorted(BAD_REASONS))
def test_bad_file_stops_a_strict_run(tmp_path, corpus, name):
  with pytest.raises(DataError, match=BAD_REASONS[name].split("(")[0].strip()) as e:
    prepared(tmp_path, f"{corpus},{BAD / name}", strict=True)
  assert name in str(e.value) and "\n" not in str(e.value)
  assert not (tmp_path / "run" / "data").exists()


def test_corrupt_zip_member_is_skipped(tmp_path, corpus):
  z = tmp_path / "Gen.zip"
  with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as f:
    for k in range(3):
      f.writestr(f"Gen/g{k}.cha", family_transcript(k))
  data = bytearray(z.read_bytes())
  start = data.index(b"Gen/g1.cha") + len("Gen/g1.cha") + 5   # inside g1's compressed data
  data[start:start + 8] = b"\xff" * 8
  z.write_bytes(bytes(data))
  out = prepared(tmp_path, f"{corpus},{z}")
  stats = json.loads((out / "stats.json").read_text())
  assert list(stats["files"]["skipped_files"]) == [f"{z}:Gen/g1.cha"]
  assert "cannot read" in stats["files"]["skipped_files"][f"{z}:Gen/g1.cha"]


def test_missing_path_and_empty_dir_are_errors(tmp_path, corpus):
  with pytest.raises(DataError, match=r"data.childes: path does not exist: .*nowhere"):
    prepared(tmp_path, f"{corpus},{tmp_path / 'nowhere'}")
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match=r"data.childes: directory has no .cha or .zip files: .*empty"):
    prepared(tmp_path, tmp_path / "empty")
  with pytest.raises(DataError, match="no usable CHAT transcripts"):
    prepared(tmp_path, f"{BAD / 'not_chat.cha'},{BAD / 'truncated.cha'}")
  assert not (tmp_path / "run" / "data").exists()


@pytest.mark.parametrize("key,value,match", [
    ("vocab_size", 100, "config.data.vocab_size"),
    ("heldout_a", 1.5, "config.data.heldout_a"),
    ("heldout_b", 0.95, "config.data.heldout_a"),
    ("max_words", 0, "config.data.max_words"),
    ("childes", " ", "config.data.childes"),
    ("adult_share", 0.3, r"config.data.adult_share: needs data.require_child=False"),
    ("adult_share", 1.5, "config.data.adult_share"),
    ("adult_share", -0.5, "config.data.adult_share"),
])
def test_bad_config_names_the_key(tmp_path, key, value, match):
  config = make_config(GOOD)
  config.data[key] = value
  with pytest.raises(ConfigError, match=match) as e:
    prepare.ensure_prepared(config, tmp_path)
  assert "\n" not in str(e.value)


def test_pylangacq_warnings_are_counted_not_printed(tmp_path, capfd):
  p = GOOD / "Family" / "Ann" / "rich.cha"
  with warnings.catch_warnings():
    warnings.simplefilter("error")          # a leaked warning would raise here
    t = transcript.read_transcript(p.read_text(), "rich", str(p))
  assert t.warnings == 1 and t.empty_tokens == 1 and t.recovered == 1
  assert "she said I'm sorry ." in [u.text for u in t.utts]
  assert "misalignment" not in capfd.readouterr().err


# ---------------------------------------------------------------- main.py and real data

def _main(args, env_extra=None, timeout=120):
  env = {**os.environ, **(env_extra or {})}
  return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True,
                        text=True, env=env, timeout=timeout)


def test_main_prepare_mode(tmp_path, corpus):
  r = _main(["--config=configs/prepare.py", f"--workdir={tmp_path}",
             f"--config.data.childes={corpus}", "--config.data.vocab_size=300"])
  assert r.returncode == 0, r.stderr
  assert "| pretrain |" in r.stdout and (tmp_path / "data" / "DONE").exists()
  r = _main(["--config=configs/prepare.py", f"--workdir={tmp_path / 'x'}",
             f"--config.data.childes={tmp_path / 'missing'}"])
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1].startswith("error: data.childes: path does not exist")


def test_tiny_config_on_real_data(tmp_path):
  root = paths.data_root() / "childes"
  if not (root / "Eng-UK" / "Wooten.zip").exists():
    pytest.skip(f"real CHILDES ZIPs not found under {root}")
  from configs import prepare as prepare_config
  config = prepare_config.get_config("tiny")
  out = prepare.ensure_prepared(config, tmp_path)
  stats = json.loads((out / "stats.json").read_text())
  files = stats["files"]
  assert files["read"] == files["transcripts_listed"] > 0 and files["skipped"] == 0
  assert stats["splits"]["pretrain"]["units"] > 100 and stats["tokens"]["valid"] > 0
  u = stats["utterances"]
  assert u["read"] == u["in_units"] + sum(u["dropped"].values())


# ---------------------------------------------------------------- prepare once, train anywhere

def test_prepared_dir_is_used_without_reading_childes(tmp_path, corpus, monkeypatch):
  """`data.prepared` = a finished output: used as it is, the CHILDES paths need not exist."""
  out = prepared(tmp_path, corpus)
  elsewhere = tmp_path / "copied" / "data"
  shutil.copytree(out, elsewhere)                                     # as if made on another machine
  monkeypatch.setattr(prepare, "build", lambda *a, **k: pytest.fail("prepare rebuilt the data"))
  monkeypatch.setattr(sources, "list_items", lambda *a, **k: pytest.fail("prepare read the CHILDES inputs"))
  for given in (elsewhere, elsewhere.parent):                        # the data dir or the workdir holding it
    config = make_config(tmp_path / "nowhere", prepared=str(given))
    assert prepare.ensure_prepared(config, tmp_path / "train_run") == elsewhere
  assert not (tmp_path / "train_run").exists()


@pytest.mark.parametrize("damage,match", [
    ("no_dir", "path does not exist"),
    ("no_done", "DONE is missing"),
    ("bad_done", "DONE is not a JSON manifest"),
    ("old_version", "prepare version 0"),
    ("no_tokenizer", "tokenizer.json is missing"),
    ("bad_tokenizer", "tokenizer.json is not a readable tokenizer"),
    ("no_tokens", "train_tokens.npy is missing"),
    ("short_words", "the arrays do not belong together"),
    ("other_tokens", "stats.json counted"),
])
def test_bad_prepared_dir_is_one_clear_error(tmp_path, corpus, damage, match):
  out = prepared(tmp_path, corpus)
  bad = tmp_path / "bad" / "data"
  shutil.copytree(out, bad)
  if damage == "no_dir":
    shutil.rmtree(bad)
  elif damage == "no_done":
    (bad / "DONE").unlink()
  elif damage == "bad_done":
    (bad / "DONE").write_text("{half")
  elif damage == "old_version":
    (bad / "DONE").write_text(json.dumps({**json.loads((bad / "DONE").read_text()), "version": 0}))
  elif damage == "no_tokenizer":
    (bad / "tokenizer.json").unlink()
  elif damage == "bad_tokenizer":
    (bad / "tokenizer.json").write_text('{"model": 3}')
  elif damage == "no_tokens":
    (bad / "train_tokens.npy").unlink()
  elif damage == "short_words":
    np.save(bad / "train_words.npy", np.load(bad / "train_words.npy")[:-1])
  elif damage == "other_tokens":
    tokens = np.load(bad / "train_tokens.npy")
    np.save(bad / "train_tokens.npy", tokens[:-1])
    np.save(bad / "train_words.npy", np.load(bad / "train_words.npy")[:-1])
  with pytest.raises(DataError, match=match) as e:
    prepare.ensure_prepared(make_config(tmp_path / "nowhere", prepared=str(bad)), tmp_path / "run2")
  assert "\n" not in str(e.value) and str(e.value).startswith("config.data.prepared:")


def test_main_pretrain_with_a_bad_prepared_dir(tmp_path):
  r = _main(["--config=configs/pretrain.py:tiny", f"--workdir={tmp_path / 'run'}",
             f"--config.data.prepared={tmp_path}", f"--config.data.childes={tmp_path / 'nowhere'}"])
  assert r.returncode == 2
  assert r.stderr.strip().splitlines()[-1] == (
      f"error: config.data.prepared: {tmp_path / 'DONE'} is missing: not a finished `prepare` output")
