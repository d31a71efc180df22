"""Task loaders: item counts on the real files, and a clear error for every bad input."""

import json
import zipfile

import numpy as np
import pytest

from evaluation import reading, tasks
from llamalogue import paths
from llamalogue.errors import ConfigError, DataError

DATA = paths.data_root()
needs_data = pytest.mark.skipif(not (DATA / "eval").is_dir() or not (DATA / "communicative_baby").is_dir(),
                                reason="../shared/data not present")


@needs_data
@pytest.mark.parametrize("name, items, subtasks", [
    ("dialogue_word", 7_548, 1),
    ("dialogue_token", 7_520, 1),
    ("blimp", 67_000, 67),
    ("blimp_filtered", 59_875, 67),
    ("supplement", 5_218, 5),
    ("zorro", 46_000, 23),
    ("ewok", 7_618, 11),
    ("entity_tracking", 9_483, 18),
    ("wug", 200, 1),
])
def test_released_counts(name, items, subtasks):
  task = tasks.load(name)
  assert len(task.items) == items
  assert len({it.subtask for it in task.items}) == subtasks


@needs_data
def test_dialogue_strings_are_prompt_space_reply():
  word = tasks.load("dialogue_word")
  rec = json.loads((DATA / "communicative_baby/dpo_dataset/huggingface_dpo_format_eval.json").read_text())[0]
  assert word.items[0].texts == (rec["prompt"] + " " + rec["chosen"], rec["prompt"] + " " + rec["rejected"])
  tok = tasks.load("dialogue_token")
  assert tok.items[0].uid.endswith("/18000") and tok.items[-1].uid.endswith("/25519")
  good, bad = tok.items[0].texts
  assert "\t" not in good and good.startswith("*MOT: ") and " *CHI: " in good and " *CHI: " in bad


@needs_data
def test_zorro_ungrammatical_line_comes_first():
  task = tasks.load("zorro", lowercase="no")
  item = next(it for it in task.items if it.subtask == "irregular-verb")
  assert item.texts == ("Michael chose the good one some time ago .", "Michael chosen the good one some time ago .")
  lower = tasks.load("zorro", lowercase="auto", convention="study")
  assert lower.items[0].texts[0] == lower.items[0].texts[0].lower()
  assert tasks.load("zorro", lowercase="auto", convention="babylm2025").notes == ""


@needs_data
def test_spans_of_continuation_tasks():
  ewok = tasks.load("ewok")
  it = ewok.items[0]
  assert ewok.private and it.spans[0] == it.spans[1] > 0 and it.texts[0][it.spans[0]] == " "
  et = tasks.load("entity_tracking")
  it = et.items[0]
  assert len(it.texts) == 5 and len(set(it.spans)) == 1 and it.texts[0][:it.spans[0]].endswith("contains ")
  assert it.subtask.endswith("_0_ops")


def test_subsample_covers_every_subtask():
  items = [tasks.Item(f"t/{s}/{i}", s, ("a", "b"), (0, 0)) for s in "abc" for i in range(10)]
  out = tasks.subsample(items, 7)
  assert len(out) == 7 and {it.subtask for it in out} == {"a", "b", "c"}
  assert tasks.subsample(items, 0) is items


def test_task_names():
  assert tasks.parse_task_names("all")[0] == "dialogue_word"
  assert "dialogue_heldout" in tasks.parse_task_names("all", heldout="x.jsonl")
  assert tasks.parse_task_names("zorro, wug,zorro") == ["zorro", "wug"]
  with pytest.raises(ConfigError, match="unknown task"):
    tasks.parse_task_names("zorro,blimpp")


# ---------------------------------------------------------------------------- bad input

@pytest.fixture
def data_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("LLAMALOGUE_DATA", str(tmp_path))
  return tmp_path


def test_missing_file_names_it_and_its_source(data_dir):
  with pytest.raises(DataError, match=r"huggingface_dpo_format_eval\.json.*communicative_baby_dpo"):
    tasks.load("dialogue_word")
  with pytest.raises(DataError, match=r"eval/zorro.*phueb/Zorro"):
    tasks.load("zorro")
  with pytest.raises(DataError, match=r"lexical_decision.*bbunzeck/lexical-decision"):
    tasks.load("lexical_decision")


def test_malformed_jsonl_names_file_and_line(data_dir):
  d = data_dir / "eval/blimp"
  d.mkdir(parents=True)
  good = json.dumps({"sentence_good": "a b .", "sentence_bad": "b a ."})
  (d / "p.jsonl").write_text(good + "\n\n" + good[:-3] + "\n")
  with pytest.raises(DataError, match=r"p\.jsonl:3: malformed JSON"):
    tasks.load("blimp")
  (d / "p.jsonl").write_text(good + "\n" + json.dumps({"sentence_good": "x"}) + "\n")
  with pytest.raises(DataError, match=r"p\.jsonl:2: missing field 'sentence_bad'"):
    tasks.load("blimp")


def test_malformed_csv_row_names_file_and_line(data_dir):
  d = data_dir / "communicative_baby/dpo_dataset"
  d.mkdir(parents=True)
  ok = '18000,"*MOT: hi .\t*CHI: yes .","*MOT: hi .\t*CHI: no ."\n'
  (d / "tok_pairs_no_overlap_1.csv").write_text(",pospair,negpair\n" + ok + '18001,"*MOT: hi . *CHI: yes .","x"\n')
  with pytest.raises(DataError, match=r"tok_pairs_no_overlap_1\.csv:3: expected '<prompt>\\t<reply>'"):
    tasks.load("dialogue_token")
  (d / "tok_pairs_no_overlap_1.csv").write_text(",pospair,negpair\n" + ok + "18001,only\n")
  with pytest.raises(DataError, match=r"csv:3: expected 3 columns"):
    tasks.load("dialogue_token")
  (d / "tok_pairs_no_overlap_1.csv").write_text(",pospair,negpair\n" + ok)
  assert tasks.load("dialogue_token").items[0].texts == ("*MOT: hi . *CHI: yes .", "*MOT: hi . *CHI: no .")


def test_heldout_pairs_loader(tmp_path):
  p = tmp_path / "pairs.jsonl"
  p.write_text(json.dumps({"prompt": "*MOT: hi .", "chosen": "*CHI: yes .", "rejected": "*CHI: no ."}) + "\n"
               + '{"prompt": "*MOT: x", "chosen": 3, "rejected": "y"}\n')
  with pytest.raises(DataError, match=r"pairs\.jsonl:2: field 'chosen' should be str"):
    tasks.load("dialogue_heldout", heldout=str(p))
  p.write_text(p.read_text().splitlines()[0] + "\n")
  assert tasks.load("dialogue_heldout", heldout=str(p)).items[0].texts[0] == "*MOT: hi . *CHI: yes ."
  with pytest.raises(ConfigError, match="heldout_pairs"):
    tasks.load("dialogue_heldout")


def test_zorro_odd_line_count(data_dir):
  d = data_dir / "eval/zorro"
  d.mkdir(parents=True)
  (d / "p.txt").write_text("bad one .\ngood one .\nlonely .\n")
  with pytest.raises(DataError, match=r"p\.txt:3: odd number of lines"):
    tasks.load("zorro")


def test_ewok_zip_is_read_in_memory(data_dir):
  d = data_dir / "eval/ewok"
  d.mkdir(parents=True)
  rec = {"Context1": "C one.", "Context2": "C two.", "Target1": "T one.", "Target2": "T two.", "Domain": "dom"}
  with zipfile.ZipFile(d / "ewok_filtered_babylm2025.zip", "w") as z:
    z.writestr("ewok_filtered/dom.jsonl", json.dumps(rec) + "\n{broken\n")
  with pytest.raises(DataError, match=r"ewok_filtered_babylm2025\.zip!ewok_filtered/dom\.jsonl:2"):
    tasks.load("ewok")
  assert not list(data_dir.rglob("*.jsonl"))


# ---------------------------------------------------------------------------- reading

def test_ols_matches_closed_form():
  rng = np.random.default_rng(0)
  x = np.column_stack([np.ones(200), rng.normal(size=200)])
  y = 2 + 3 * x[:, 1] + rng.normal(size=200)
  r = reading.ols(y, x)
  slope, intercept = np.polyfit(x[:, 1], y, 1)
  assert r["coef"] == pytest.approx(slope)
  assert r["r2"] == pytest.approx(np.corrcoef(x[:, 1], y)[0, 1] ** 2)
  resid = y - (intercept + slope * x[:, 1])
  llf = -100 * (np.log(2 * np.pi) + np.log(resid @ resid / 200) + 1)
  assert r["aic"] == pytest.approx(-2 * llf + 4)


@needs_data
def test_reading_frame_as_the_pipeline_reads_it():
  df, _ = reading.load_frame()
  assert len(df) == 1_726
  assert (df["item"] == "None").sum() == 1          # the word "None", lost to NaN parsing, restored
  assert df["prev_item"].isna().sum() >= 205
