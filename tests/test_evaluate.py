"""End-to-end `evaluate` mode: files written, conventions recorded, trajectories, bad input."""

import json
import os
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from scipy.stats import binomtest

from configs import evaluate as evaluate_config
from evaluation import run as run_lib
from evaluation import stats
from evaluation import testing
from llamalogue import paths
from llamalogue.errors import ConfigError, DataError

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = paths.data_root()
needs_data = pytest.mark.skipif(not (DATA / "eval").is_dir() or not (DATA / "communicative_baby").is_dir(),
                                reason="../shared/data not present")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  d = tmp_path_factory.mktemp("eval_hf") / "tiny_hf"
  testing.make_exported(d, testing.SAMPLE_TEXTS * 3, tokenizer_vocab=350)
  return d


def config(**overrides):
  c = evaluate_config.get_config("tiny")
  for k, v in overrides.items():
    c[k] = v
  return c


def env():
  e = dict(os.environ, TOKENIZERS_PARALLELISM="false", JAX_PLATFORMS="cpu")
  e.pop("XLA_FLAGS", None)
  return e


@needs_data
def test_cli_writes_results_predictions_and_table(exported, tmp_path):
  out = subprocess.run(
      [sys.executable, "main.py", "--config=configs/evaluate.py:tiny", "--config.max_items_per_task=6",
       f"--config.init_from={exported}", f"--workdir={tmp_path}"],
      cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  folder = tmp_path / "eval" / "tiny_hf"
  results = json.loads((folder / "results.json").read_text())
  assert results["scoring"]["convention"] == "study" and results["scoring"]["bow_correction"] is True
  assert set(results["tasks"]) == set(run_lib.tasks_lib.DEFAULT_TASKS)
  assert results["tasks"]["zorro"]["items"] == 6 and len(results["tasks"]["zorro"]["subtasks"]) == 6
  assert results["tasks"]["blimp"]["notes"].startswith("lower-cased")
  assert "reading" in results["tasks"] and "eye_tracking" in results["tasks"]["reading"]["subtasks"]
  preds = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
  assert sum(p["task"] == "dialogue_word" for p in preds) == 6
  md = (folder / "results.md").read_text()
  assert "| dialogue_word | Dialogue MP (word) (%) | 6 |" in md and "64.3" in md
  assert "dialogue_word" in out.stderr              # the tqdm bar
  # EWoK never leaves the ZIP in plain text.
  with zipfile.ZipFile(DATA / "eval/ewok/ewok_filtered_babylm2025.zip") as z:
    z.setpassword(b"ewok")
    name = next(n for n in z.namelist() if n.endswith(".jsonl"))
    target = json.loads(z.read(name).decode().splitlines()[0])["Target1"]
  for f in folder.iterdir():
    assert target not in f.read_text()


@needs_data
def test_babylm2025_convention_is_recorded(exported, tmp_path):
  run_lib.run(config(init_from=str(exported), convention="babylm2025", tasks="dialogue_word,zorro,wug",
                     max_items_per_task=8), str(tmp_path))
  results = json.loads((tmp_path / "eval/tiny_hf/results.json").read_text())
  assert results["scoring"]["convention"] == "babylm2025" and results["scoring"]["bow_correction"] is False
  assert results["tasks"]["zorro"]["notes"] == ""       # no lower-casing outside the study convention
  assert results["tasks"]["wug"]["kind"] == "correlation" and -1 <= results["tasks"]["wug"]["score"] <= 1


def make_run(run_dir: pathlib.Path, tokenizer_dir: pathlib.Path, vocab: int, milestones=(1_000_000, 2_000_000)):
  """A pre-training run in llamalogue/checkpoint.py's layout with random weights."""
  from flax import nnx
  from llamalogue import checkpoint
  ck = checkpoint.RunCheckpoints(run_dir)
  for i, words in enumerate(milestones):
    model = testing.make_model(vocab, seed=i)
    if i == 0:
      ck.write_run_files(model.cfg, tokenizer_dir)
    ck.save({"params": nnx.to_pure_dict(nnx.state(model, nnx.Param))}, {"step": i + 1, "words": words},
            milestones=[words])
  ck.close()


def test_trajectory_and_compare_to(exported, tmp_path, monkeypatch):
  pairs = tmp_path / "pairs.jsonl"
  pairs.write_text("".join(json.dumps({"prompt": f"*MOT: is it {w} ?", "chosen": "*CHI: yes .",
                                       "rejected": f"*CHI: {w} {w} ."}) + "\n" for w in ("red", "big", "a")))
  run_dir = tmp_path / "pretrain_run"
  vocab = json.loads((exported / "config.json").read_text())["vocab_size"]
  make_run(run_dir, exported.parent / "tiny_hf_tokenizer", vocab)
  cfg = config(init_from=str(run_dir), trajectory=True, tasks="dialogue_heldout", heldout_pairs=str(pairs),
               compare_to=str(exported))
  run_lib.run(cfg, str(tmp_path / "w"))
  out = tmp_path / "w/eval/pretrain_run"
  md = (out / "trajectory.md").read_text()
  assert md.index("words_1000000") < md.index("words_2000000")
  assert "Fine-tuned runs against their base" in md and "tiny_hf" in md
  assert (out / "trajectory.png").stat().st_size > 1000
  traj = json.loads((out / "trajectory.json").read_text())
  assert [r["words"] for r in traj["rows"]] == [1_000_000, 2_000_000]
  assert (out / "words_1000000/results.json").exists()
  # A second run reuses the results written with the same settings.
  calls = []
  monkeypatch.setattr(run_lib, "load_scorer", lambda *a: calls.append(a))
  run_lib.run(cfg, str(tmp_path / "w"))
  assert not calls


def test_milestone_discovery(tmp_path):
  for name in ("words_2M", "words_1000000", "step_7", "words_x"):
    (tmp_path / "run/checkpoints/milestones" / name / "state").mkdir(parents=True)
  found = run_lib.find_milestones(str(tmp_path / "run"))
  assert [w for w, _ in found] == [1_000_000, 2_000_000]
  assert run_lib.checkpoint_name(str(found[0][1])) == "run-words_1000000"
  with pytest.raises(DataError, match="no milestone checkpoints"):
    run_lib.find_milestones(str(tmp_path / "elsewhere"))


def test_vocabulary_mismatch_is_a_clear_error(exported, tmp_path):
  bad = tmp_path / "bad_hf"
  testing.make_exported(bad, testing.SAMPLE_TEXTS, tokenizer_vocab=350)
  varied = testing.SAMPLE_TEXTS + [f"zq{i} xv{i * 7} kw{i * 13}" for i in range(400)]
  big = testing.make_tokenizer(tmp_path / "big_tok", varied, vocab_size=600)
  assert len(big) > json.loads((bad / "config.json").read_text())["vocab_size"]
  big.save_pretrained(str(bad))
  pairs = tmp_path / "p.jsonl"
  pairs.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
  with pytest.raises(ConfigError, match="vocabulary"):
    run_lib.run(config(init_from=str(bad), tasks="dialogue_heldout", heldout_pairs=str(pairs)), str(tmp_path))


def test_missing_benchmark_file_fails_before_loading_the_model(exported, tmp_path, monkeypatch):
  monkeypatch.setenv("LLAMALOGUE_DATA", str(tmp_path / "empty"))
  monkeypatch.setattr(run_lib, "load_scorer", lambda *a: pytest.fail("model loaded before the data check"))
  with pytest.raises(DataError, match="missing benchmark file .*huggingface_dpo_format_eval.json"):
    run_lib.run(config(init_from=str(exported)), str(tmp_path))


def test_cli_error_is_one_line(exported, tmp_path):
  out = subprocess.run(
      [sys.executable, "main.py", "--config=configs/evaluate.py", "--config.tasks=zorro,nope",
       f"--config.init_from={exported}", f"--workdir={tmp_path}"],
      cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith("error: config.tasks: unknown task(s) ['nope']")


def _old_results(name: str, init_from: str, settings: dict, correct: list[bool]) -> tuple[dict, list[dict]]:
  """A results.json as written before intervals existed, and its predictions (dialogue_heldout)."""
  preds = [{"task": "dialogue_heldout", "uid": f"dialogue_heldout/heldout/{i}", "label": 0, "correct": ok}
           for i, ok in enumerate(correct)]
  acc = sum(correct) / len(correct)
  task = {"name": "dialogue_heldout", "benchmark": "Dialogue MP (held-out)", "kind": "choice", "source": "x",
          "items": len(correct), "subtasks": {"heldout": {"accuracy": acc, "items": len(correct)}}, "score": acc,
          "notes": ""}
  return {"checkpoint": name, "init_from": init_from, "words": None, "settings": settings,
          "scoring": {"convention": "study", "bow_correction": True, "bos_added": False},
          "max_items_per_task": 0, "lowercase": "auto", "reference_model": "llamalogue",
          "tasks": {"dialogue_heldout": task}, "skipped": {}, "seconds": 1.0}, preds


def test_comparison_has_intervals_and_paired_tests_from_predictions(tmp_path, monkeypatch):
  """Results written before intervals existed get them from their predictions on reuse (no model is loaded),
  and comparison.md / comparison.json carry the paired test of each fine-tuned model against the base."""
  pairs = tmp_path / "pairs.jsonl"
  pairs.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
  base, tuned = str(tmp_path / "base"), str(tmp_path / "tuned")
  cfg = config(init_from=base, compare_to=tuned, tasks="dialogue_heldout", heldout_pairs=str(pairs))
  settings = run_lib.settings_from(cfg)
  base_ok = [True] * 20 + [False] * 20
  tuned_ok = [True] * 20 + [True] * 14 + [False] * 6        # 14 items won, none lost
  for name, path, ok in (("base", base, base_ok), ("tuned", tuned, tuned_ok)):
    res, preds = _old_results(name, path, settings, ok)
    folder = tmp_path / "w" / "eval" / name
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(res))
    (folder / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
  monkeypatch.setattr(run_lib, "load_scorer", lambda *a: pytest.fail("a model was loaded"))
  run_lib.run(cfg, str(tmp_path / "w"))
  res = json.loads((tmp_path / "w/eval/tuned/results.json").read_text())
  task = res["tasks"]["dialogue_heldout"]
  assert task["interval_method"] == stats.WILSON and task["correct"] == 34
  assert task["interval"] == pytest.approx(stats.wilson(34, 40))
  md = (tmp_path / "w/eval/tuned/results.md").read_text()
  assert "| dialogue_heldout | Dialogue MP (held-out) (%) | 40 | 85.0 | [70.9, 92.9] |" in md
  assert "95% intervals: dialogue_heldout: Wilson score interval" in md
  effect = json.loads((tmp_path / "w/eval/comparison.json").read_text())["effects"]["tuned"]["dialogue_heldout"]
  assert (effect["model_only"], effect["base_only"]) == (14, 0)
  assert effect["p_mcnemar"] == pytest.approx(binomtest(14, 14).pvalue) and effect["excludes_zero"]
  comparison = (tmp_path / "w/eval/comparison.md").read_text()
  assert f"+35.0 [+{100 * effect['interval'][0]:.1f}, +{100 * effect['interval'][1]:.1f}] p 1.2e-04 ✱" in comparison
  assert "dialogue_heldout (n 40)" in comparison and "McNemar" in comparison


def test_seed_runs_of_two_stages_get_distinct_names(tmp_path):
  names = {run_lib.checkpoint_name(str(tmp_path / s / "seed_1")) for s in ("dpo_natural", "dpo_synthetic")}
  assert names == {"dpo_natural-seed_1", "dpo_synthetic-seed_1"}
  assert run_lib.checkpoint_name(str(tmp_path / "dpo_natural")) == "dpo_natural"


def _write_preds(path: pathlib.Path, correct_by_task: dict) -> None:
  path.mkdir(parents=True, exist_ok=True)
  rows = [{"task": t, "uid": f"{t}/{sub}/{i}", "subtask": sub, "correct": bool(c)}
          for t, subs in correct_by_task.items() for sub, cs in subs.items() for i, c in enumerate(cs)]
  (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_pool_seed_runs_beside_the_study(tmp_path, capsys):
  """`python -m evaluation.pool`: per-seed effects, mean ± sd over seeds, the paired test on the pooled
  predictions, and the study's row for a label it knows; a missing run directory is one line, status 2."""
  from evaluation import pool
  rs = np.random.RandomState(0)
  base = {"dialogue_word": {"word_matched": rs.rand(300) < 0.55}, "zorro": {"a": rs.rand(40) < 0.6,
                                                                            "b": rs.rand(40) < 0.6}}
  runs = []
  for k in range(2):
    run = tmp_path / f"dpo_s{k}"
    better = {t: {s: c | (rs.rand(c.size) < 0.1) for s, c in subs.items()} for t, subs in base.items()}
    _write_preds(run / "eval" / run.name, better)
    _write_preds(run / "eval" / "base", base)
    runs.append(run)
  out = tmp_path / "out"
  assert pool.main(["--base", str(tmp_path / "base"), "--out", str(out),
                    "--group", "+ DPO naturalistic=" + ",".join(map(str, runs))]) == 0
  res = json.loads((out / "pool.json").read_text())
  (g,) = res["groups"]
  singles = [s["effects"]["dialogue_word"] for s in g["seeds"]]
  pooled = g["pooled_effect"]["dialogue_word"]
  assert pooled["seeds"] == 2 and pooled["items"] == 300 and pooled["excludes_zero"]
  assert pooled["difference"] == pytest.approx(np.mean([s["difference"] for s in singles]))
  assert g["effect_over_seeds"]["dialogue_word"]["sd"] == pytest.approx(
      np.std([s["difference"] for s in singles], ddof=1))
  assert g["study"]["dialogue_word"]["value"] == 68.4 and g["study_effect"]["dialogue_word"] == pytest.approx(4.1)
  assert "+ DPO naturalistic (pooled, 2 seeds)" in (out / "pool.md").read_text()
  capsys.readouterr()
  assert pool.main(["--base", "b", "--out", str(out), "--group", f"x={tmp_path / 'nope'}"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: --group 'x':") and "is not a directory" in err[0]
