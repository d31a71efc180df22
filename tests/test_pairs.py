"""rl/pairs.py: loading the released and our own pairs, encoding (benchmark = the scorer's span,
trl = trl's own tokenize_row), and building pairs from a held-out split (no overlap, length match,
disjoint benchmark, seeded), end to end through main.py."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from evaluation import scoring, tasks, testing
from llamalogue import hf, paths
from llamalogue.errors import ConfigError, DataError
from rl import pairs as P

ROOT = pathlib.Path(__file__).resolve().parent.parent
RELEASE = "data:communicative_baby/dpo_dataset/"

ADULT = ["what is that ?", "do you want some milk ?", "shall we read a book now ?", "where did the cat go ?",
         "are you tired today ?", "look at the big truck !", "can you find the blue one ?", "put it in the box ."]
CHILD = ["I want red ball .", "my dog is sleeping .", "no no no !", "me do it !", "can I have juice ?",
         "the cat went outside .", "I found a big one .", "daddy is home now .", "want more please !",
         "a yellow duck swims .", "I am not tired .", "where is mommy ?", "that one is mine !"]


def lexical(text: str) -> int:
  return sum(any(ch.isalnum() for ch in w) for w in text.split())


def utt(i, text, tag, role, child):
  return {"i": i, "speaker": tag, "tag": tag, "role": role, "child": child, "text": text, "words": lexical(text)}


def transcript(k: int, rng: np.random.Generator, n: int = 40) -> dict:
  """A random dialogue: mother, father, a sibling and the target child, with an occasional dropped line."""
  utts, i = [], 0
  for _ in range(n):
    i += 1 + int(rng.random() < 0.1)          # a gap: an utterance the cleaning dropped
    who = rng.choice(["MOT", "FAT", "BRO", "CHI", "CHI"])
    if who == "CHI":
      utts.append(utt(i, str(rng.choice(CHILD)), "CHI", "Target_Child", True))
    else:
      role = {"MOT": "Mother", "FAT": "Father", "BRO": "Brother"}[who]
      utts.append(utt(i, str(rng.choice(ADULT)), who, role, False))
  return {"transcript": f"t{k}.cha", "split": "heldout_a", "participants": {}, "child": ["CHI"], "utterances": utts}


# A transcript whose exchanges are known by hand.
KNOWN = {"transcript": "known.cha", "split": "heldout_a", "participants": {}, "child": ["CHI"], "utterances": [
    utt(0, "what is that thing ?", "MOT", "Mother", False),
    utt(1, "it looks like a gun .", "CHI", "Target_Child", True),        # kept
    utt(2, "do you like that ?", "MOT", "Mother", False),
    utt(3, "I like that .", "CHI", "Target_Child", True),               # overlap: "that"
    utt(4, "shall we go out ?", "FAT", "Father", False),
    utt(6, "yes please go .", "CHI", "Target_Child", True),             # utterance between (i 5 dropped)
    utt(7, "where are the keys ?", "BRO", "Brother", False),
    utt(8, "on the table over there .", "CHI", "Target_Child", True),   # a brother is no adult
    utt(9, "hello .", "FAT", "Father", False),
    utt(10, "the car is red .", "CHI", "Target_Child", True),           # short adult turn
    utt(11, "are you hungry now ?", "FAT", "Father", False),
    utt(12, "cookie !", "CHI", "Target_Child", True),                   # short reply
    utt(13, "what do we see ?", "FAT", "Father", False),
    utt(14, "a big yellow duck .", "CHI", "Target_Child", True),        # kept, tag FAT
]}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> pathlib.Path:
  """A prepared data dir: heldout_a_dialogues.jsonl plus a byte-level BPE tokenizer like ours."""
  d = tmp_path_factory.mktemp("prepared") / "data"
  rng = np.random.default_rng(0)
  dialogues = [KNOWN] + [transcript(k, rng) for k in range(12)]
  d.mkdir()
  (d / "heldout_a_dialogues.jsonl").write_text("".join(json.dumps(x) + "\n" for x in dialogues))
  texts = testing.SAMPLE_TEXTS + [f"*MOT: {a} *CHI: {c}" for a in ADULT for c in CHILD]
  testing.make_tokenizer(d, texts, vocab_size=400)
  return d


@pytest.fixture(scope="module")
def tok(prepared):
  return hf.load_tokenizer(prepared)


def write(path: pathlib.Path, lines) -> pathlib.Path:
  path.write_text("".join(l + "\n" for l in lines))
  return path


GOOD = json.dumps({"prompt": "*MOT: what is that ?", "chosen": "*CHI: a ball .", "rejected": "*CHI: no ."})


# ---------------------------------------------------------------------------- loading

needs_release = pytest.mark.skipif(not (paths.data_root() / "communicative_baby").exists(), reason="no study data")


@needs_release
def test_released_json_and_csv_rows_agree():
  """huggingface_dpo_format_eval.json is rows 18,000- of len_pairs_no_overlap_1.csv (data README)."""
  ev = P.load_pairs(RELEASE + "huggingface_dpo_format_eval.json")
  assert len(ev) == 7_548 and not ev.skipped and not ev.tagged
  csv_rows = P.load_pairs(RELEASE + "len_pairs_no_overlap_1.csv", offset=18_000, limit=50)
  assert csv_rows == ev[:50]
  train = P.load_pairs(RELEASE + "huggingface_dpo_format.json", limit=2)
  assert train[0] == P.Pair("*MOT: what is that ?", "*CHI: it looks like a gun .", "*CHI: you do it like that .")
  assert train[0].where.endswith("huggingface_dpo_format.json: entry 1")


@needs_release
def test_token_csv_is_the_benchmark_and_synthetic_gets_tags():
  tok_pairs = P.load_pairs(RELEASE + "tok_pairs_no_overlap_1.csv", offset=18_000)
  items = tasks.load_dialogue_token().items
  assert len(tok_pairs) == len(items) == 7_520
  for p, item in zip(tok_pairs[:100], items):
    assert item.texts == (tasks.dialogue_text(p.prompt, p.chosen), tasks.dialogue_text(p.prompt, p.rejected))
  syn = P.load_pairs(RELEASE + "synthetic_dpo_format.json", limit=3)
  assert syn[0] == P.Pair("*MOT: what is that ?", "*CHI: it is a ball.", "*CHI: you do it like that .")
  assert syn.tagged == {"prompt": 3, "chosen": 3, "rejected": 3}


def test_own_jsonl_equals_json_array(tmp_path):
  recs = [{"prompt": "*FAT: look here .", "chosen": "I see it .", "rejected": "*CHI: no ."}, json.loads(GOOD)]
  a = P.load_pairs(str(write(tmp_path / "a.jsonl", [json.dumps(r) for r in recs] + [""])))
  b = P.load_pairs(str(write(tmp_path / "b.json", [json.dumps(recs)])))
  assert a == b and len(a) == 2
  assert a[0] == P.Pair("*FAT: look here .", "*CHI: I see it .", "*CHI: no .")
  assert a.tagged == {"chosen": 1} and a[1].where == f"{tmp_path / 'a.jsonl'}:2"


@pytest.mark.parametrize("line,expect", [
    ('{"prompt": "*MOT: hi .", "chosen": "*CHI: yes ."}', "missing field 'rejected'"),
    ('{"prompt": "*MOT: hi .", "chosen": "*CHI: ", "rejected": "*CHI: no ."}', "empty chosen reply"),
    ('{"prompt": "*MOT: hi .", "chosen": "*CHI: ok", "rejected": "  "}', "empty rejected reply"),
    ('{"prompt": "*MOT: hi .", "chosen": 3, "rejected": "*CHI: no ."}', "field 'chosen' should be str"),
    ('{"prompt": "*MOT: hi .", "chosen": "*CHI: ok",', "malformed JSON line"),
    ('["a", "b", "c"]', "expected an object"),
])
def test_bad_row_is_one_line_naming_file_and_line(tmp_path, line, expect):
  path = write(tmp_path / "p.jsonl", [GOOD, line, GOOD])
  with pytest.raises(DataError, match=expect) as e:
    P.load_pairs(str(path))
  assert str(e.value).startswith(f"{path}:2: ") and "\n" not in str(e.value)


def test_bad_csv_row_and_missing_file(tmp_path):
  path = write(tmp_path / "p.csv", [",pospair,negpair", "0,*MOT: a b c .\t*CHI: d e f .,*MOT: a b c .\t*CHI: g h .",
                                    "1,*MOT: a b c .\t*CHI: d e f .,*MOT: x y .\t*CHI: g h ."])
  with pytest.raises(DataError, match=f"{path}:3: the prompt differs"):
    P.load_pairs(str(path))
  assert len(P.load_pairs(str(path), limit=1)) == 1        # the bad row lies past the limit
  with pytest.raises(DataError, match="pairs file: path does not exist: .*nope.jsonl"):
    P.load_pairs(str(tmp_path / "nope.jsonl"))
  with pytest.raises(DataError, match="data root"):
    P.load_pairs("data:no/such/pairs.json")


def test_skip_counts_and_reports(tmp_path, capsys):
  bad = ['{"prompt": "*MOT: hi .", "chosen": "*CHI: "', '{"prompt": "*MOT: hi ."}', '{"prompt": "*MOT: hi ."}']
  path = write(tmp_path / "p.jsonl", [GOOD, bad[0], GOOD, bad[1], bad[2], GOOD])
  got = P.load_pairs(str(path), on_error="skip")
  assert len(got) == 3 and [p.where for p in got] == [f"{path}:{n}" for n in (1, 3, 6)]
  assert got.skipped == {"malformed JSON line": 1, "missing field 'chosen'": 2}
  err = capsys.readouterr().err
  assert "skipped 3 of 6 rows" in err and f"{path}:2: malformed JSON line" in err
  window = P.load_pairs(str(path), offset=2, limit=2, on_error="skip")
  assert len(window) == 1 and sum(window.skipped.values()) == 1
  with pytest.raises(ConfigError, match="on_error"):
    P.load_pairs(str(path), on_error="ignore")


def test_hub_dataset_offline_is_one_clear_line():
  assert os.environ.get("HF_HUB_OFFLINE") == "1"
  with pytest.raises(DataError) as e:
    P.load_pairs("hf:nobody/no-such-pairs")
  assert str(e.value).startswith("hf:nobody/no-such-pairs: cannot load") and "\n" not in str(e.value)


# ---------------------------------------------------------------------------- encoding

SMALL = [P.Pair("*MOT: what is that ?", "*CHI: it looks like a gun .", "*CHI: you do it like that ."),
         P.Pair("*MOT: pull the string .", "*CHI: and where do they hook it ?", "*CHI: no ."),
         P.Pair("*FAT: do you want to watch the football with Daddy ?", "*CHI: I want to .",
                "*CHI: where is the big red ball that I had this morning ?")]


def test_benchmark_style_scores_what_the_benchmark_scores(tok):
  """The scorer's ids for prompt + " " + reply, and masked sums equal to its span sum (scoring.span_scores)."""
  enc = P.encode_pairs(SMALL, tok)
  rng = np.random.default_rng(0)
  for side, key in ((enc.chosen, "chosen"), (enc.rejected, "rejected")):
    texts = [tasks.dialogue_text(p.prompt, getattr(p, key)) for p in SMALL]
    ids, first = scoring.encode(tok, texts, [len(p.prompt) + 1 for p in SMALL])
    lengths = np.array([len(r) for r in ids])
    for i, row in enumerate(ids):
      np.testing.assert_array_equal(side.inputs[i, :len(row) - 1], row[:-1])
      np.testing.assert_array_equal(side.targets[i, :len(row) - 1], row[1:])
    # tok_lp[:, k] = log p(t_k | t_<k), as the scorer lays it out; target j of ours is token j + 1.
    tok_lp = -rng.random((len(SMALL), side.inputs.shape[1] + 1))
    want = scoring.span_scores(tok_lp, np.zeros_like(tok_lp), np.zeros(tok_lp.shape, bool), lengths, first, False)
    np.testing.assert_allclose((tok_lp[:, 1:] * side.loss_mask).sum(1), want, rtol=1e-12)
    # The reply's tokens: the tag `*CHI:` (its first token carries the joining space) and the words.
    assert tok.decode(side.targets[0][side.loss_mask[0] > 0]) == " " + getattr(SMALL[0], key)
  assert enc.style == "benchmark" and enc.counts["encoded"] == 3


@needs_release
def test_trl_style_equals_trl_tokenize_row(tok):
  from benchmarks.dpo_throughput import import_trl
  trainer = import_trl().DPOTrainer
  released = P.load_pairs(RELEASE + "huggingface_dpo_format.json", limit=300)
  assert P.trl_tokenize(released, tok) == [trainer.tokenize_row(p.record(), tok, None, None, False) for p in released]
  enc = P.encode_pairs(SMALL, tok, style="trl")
  for i, (p, ours) in enumerate(zip(SMALL, P.trl_tokenize(SMALL, tok))):
    ref = trainer.tokenize_row(p.record(), tok, max_prompt_length=None, max_completion_length=None,
                               add_special_tokens=False)
    assert ref == ours
    for side, key in ((enc.chosen, "chosen_input_ids"), (enc.rejected, "rejected_input_ids")):
      seq = ref["prompt_input_ids"] + ref[key]
      # trl's concatenated_forward: loss_mask = [0]*prompt + [1]*completion, labels and mask rolled by -1.
      mask = np.roll(np.array([0] * len(ref["prompt_input_ids"]) + [1] * len(ref[key]), np.float32), -1)[:-1]
      n = len(seq) - 1
      np.testing.assert_array_equal(side.inputs[i, :n], seq[:-1])
      np.testing.assert_array_equal(side.targets[i, :n], seq[1:])
      np.testing.assert_array_equal(side.loss_mask[i, :n], mask)
      assert side.loss_mask[i, n:].sum() == 0 and (side.inputs[i, n:] == tok.eos_token_id).all()
      assert seq[-1] == tok.eos_token_id


def test_trl_style_logps_equal_trl_concatenated_forward(tok, tmp_path):
  """trl's own collator + concatenated_forward on a tiny torch Llama = our arrays' masked sums, same model."""
  import datasets
  import torch
  import transformers
  from benchmarks.dpo_throughput import import_trl, prepare_model
  trl = import_trl()
  torch.manual_seed(0)
  model = prepare_model(transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
      num_key_value_heads=2, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)))
  model.eval()
  args = trl.DPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, disable_tqdm=True)
  trainer = trl.DPOTrainer(model=model, args=args, processing_class=tok,
                           train_dataset=datasets.Dataset.from_list([p.record() for p in SMALL]))
  batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(SMALL))])
  with torch.no_grad():
    want = trainer.concatenated_forward(model, batch)
  enc = P.encode_pairs(SMALL, tok, style="trl")
  for side, key in ((enc.chosen, "chosen_logps"), (enc.rejected, "rejected_logps")):
    with torch.no_grad():
      logp = torch.log_softmax(model(torch.tensor(side.inputs, dtype=torch.long)).logits, -1)
    ours = (logp.gather(-1, torch.tensor(side.targets, dtype=torch.long)[..., None])[..., 0]
            * torch.tensor(side.loss_mask)).sum(1)
    np.testing.assert_allclose(ours.numpy(), want[key].numpy(), rtol=1e-5, atol=1e-4)


def test_padding_lengths_and_too_long_pairs(tok, capsys):
  enc = P.encode_pairs(SMALL, tok)
  n_in = [len(tok(tasks.dialogue_text(p.prompt, r))["input_ids"]) - 1 for p in SMALL for r in (p.chosen, p.rejected)]
  assert enc.chosen.inputs.shape == enc.rejected.inputs.shape == (3, -(-max(n_in) // 16) * 16)
  assert enc.chosen.inputs.dtype == np.int32 and enc.chosen.loss_mask.dtype == np.float32
  assert (enc.chosen.inputs[0, n_in[0]:] == tok.pad_token_id).all()
  limit = max(n_in[:4])            # the third pair's rejected reply is longer
  assert max(n_in[4:]) > limit
  with pytest.raises(DataError, match=f"pair 2: {max(n_in[4:])} input tokens .*more than max_len {limit}"):
    P.encode_pairs(SMALL, tok, max_len=limit)
  enc = P.encode_pairs(SMALL, tok, max_len=limit, on_error="skip")
  assert list(enc.rows) == [0, 1] and enc.skipped == {"longer than max_len": 1}
  assert enc.chosen.inputs.shape[1] <= limit and "skipped 1 of 3 rows" in capsys.readouterr().err
  with pytest.raises(ConfigError, match="style"):
    P.encode_pairs(SMALL, tok, style="minicons")


# ---------------------------------------------------------------------------- building

def bodies(p: P.Pair) -> tuple[str, str, str]:
  return P.body(p.prompt), P.body(p.chosen), P.body(p.rejected)


def test_known_exchanges_and_drop_reasons(prepared, tmp_path):
  d = tmp_path / "data"
  d.mkdir()
  (d / "heldout_a_dialogues.jsonl").write_text(json.dumps(KNOWN) + "\n")
  built = P.build_pairs(tmp_path, P.BuildSettings(eval_fraction=0.5), tokenizer=hf.load_tokenizer(prepared))
  got = {(p.prompt, p.chosen) for key in ("train", "eval_word") for p in built[key]}
  assert got == {("*MOT: what is that thing ?", "*CHI: it looks like a gun ."),
                 ("*FAT: what do we see ?", "*CHI: a big yellow duck .")}
  assert built["stats"]["exchanges_dropped"] == {"overlap": 1, "utterance_between": 1, "short_adult_turn": 1,
                                                 "short_reply": 1}
  assert len(built["train"]) == len(built["eval_word"]) == 1       # one adult turn each way
  for p in built["train"] + built["eval_word"]:
    assert len(p.chosen.split()) == len(p.rejected.split()) and p.chosen != p.rejected


def test_built_pairs_match_lengths_share_no_word_and_are_disjoint(prepared, tok):
  built = P.build_pairs(prepared, P.BuildSettings(seed=3))
  st = built["stats"]
  assert st["pairs"]["train"] > 20 and st["pairs"]["eval_word"] > 5 and st["exchanges_dropped"]["overlap"] > 0
  for key in P.OUTPUTS:
    for p in built[key]:
      prompt, chosen, rejected = bodies(p)
      assert not set(prompt.split()) & set(chosen.split()), p
      assert chosen != rejected and lexical(prompt) >= 3 and lexical(chosen) >= 3 and lexical(rejected) >= 3
      if key == "eval_token":
        assert len(tok(" " + chosen)["input_ids"]) == len(tok(" " + rejected)["input_ids"])
      else:
        assert len(chosen.split()) == len(rejected.split())
  train_prompts = {bodies(p)[0] for p in built["train"]}
  assert not train_prompts & {bodies(p)[0] for p in built["eval_word"] + built["eval_token"]}
  for key in ("eval_word", "eval_token"):
    assert len(built[key]) + st["no_distractor"][key] == st["items"]["eval"]
  pool = {u["text"] for line in (prepared / "heldout_a_dialogues.jsonl").read_text().splitlines()
          for u in json.loads(line)["utterances"] if u["child"]}
  assert all(bodies(p)[2] in pool for key in P.OUTPUTS for p in built[key])


def test_building_is_seeded(prepared, tok):
  a = P.build_pairs(prepared, P.BuildSettings(seed=5), tokenizer=tok)
  b = P.build_pairs(prepared, P.BuildSettings(seed=5), tokenizer=tok)
  c = P.build_pairs(prepared, P.BuildSettings(seed=6), tokenizer=tok)
  assert all(a[k] == b[k] for k in P.OUTPUTS)
  assert any(a[k] != c[k] for k in P.OUTPUTS)
  token = P.build_pairs(prepared, P.BuildSettings(seed=5, match="token"), tokenizer=tok)
  assert token["eval_token"] == a["eval_token"] and token["train"] != a["train"]
  with pytest.raises(ConfigError, match="match"):
    P.build_pairs(prepared, P.BuildSettings(match="char"))


def test_pairs_mode_writes_files_the_evaluator_and_loader_read(prepared, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  proc = subprocess.run([sys.executable, "main.py", "--config=configs/pairs.py", f"--config.data_dir={prepared.parent}",
                         "--config.seed=3", f"--workdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True,
                        timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr
  built = P.build_pairs(prepared, P.BuildSettings(seed=3))
  for key, name in P.OUTPUTS.items():
    assert P.load_pairs(str(tmp_path / name)) == built[key]
  task = tasks.load_dialogue_pairs(path=str(tmp_path / "pairs_eval_word.jsonl"))
  assert [i.texts for i in task.items] == [(tasks.dialogue_text(p.prompt, p.chosen),
                                            tasks.dialogue_text(p.prompt, p.rejected)) for p in built["eval_word"]]
  stats = json.loads((tmp_path / P.STATS_FILE).read_text())
  assert stats["pairs"] == {k: len(built[k]) for k in P.OUTPUTS} and stats["settings"]["seed"] == 3
  assert not list(tmp_path.glob(".*tmp*"))


def test_pairs_mode_config_errors(tmp_path):
  from configs import pairs as pairs_config
  c = pairs_config.get_config()
  with pytest.raises(ConfigError, match="config.data_dir: empty"):
    P.run(c, str(tmp_path))
  c.data_dir = str(tmp_path)
  with pytest.raises(DataError, match="no heldout_a_dialogues.jsonl"):
    P.run(c, str(tmp_path))
  c.eval_fraction = 1.5
  with pytest.raises(ConfigError, match="config.eval_fraction"):
    P.run(c, str(tmp_path))
