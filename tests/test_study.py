"""The study orchestrator: its plan and wiring, the books (skip / resume / refuse a changed stage), the
report from results, and `configs/study.py:tiny` end to end, killed once and resumed."""

import json
import os
import pathlib
import shutil
import time

import numpy as np
import pytest

from configs import study as study_config
from evaluation import stats
from llamalogue import paths
from llamalogue.errors import ConfigError
from study import report, run as study_run
from tests.helpers import run_main

HAS_DATA = (paths.data_root() / "communicative_baby").exists() and (paths.data_root() / "childes").exists()


def test_plan_orders_and_wires_the_stages(tmp_path):
  c = study_config.get_config("tiny")
  stages = study_run.plan(c, tmp_path)
  names = list(stages)
  assert names[:3] == ["prepare", "pretrain", "trajectory"] and names[-1] == "evaluate"
  for later, earlier in (("dpo_synthetic", "synthetic_pairs"), ("ppo_bleu", "teacher_replies"),
                         ("pretrain_mixed", "prepare_mixed"), ("dpo_natural", "pretrain")):
    assert names.index(earlier) < names.index(later)
  assert {"ppo_curriculum", "sweep_bleu_lr1.41e-05_kl0.2", "sweep_bleu_lr0.0001_kl0.2"} <= set(names)
  assert stages["ppo_llm_score"].needs == ("pretrain",)  # the judge needs no teacher replies
  dpo = stages["dpo_natural"].build()
  assert dpo.init_from == str(tmp_path / "pretrain") and dpo.eval.tasks == "" and dpo.mode == "dpo"
  assert stages["pretrain"].build().data.prepared == str(tmp_path / "prepare" / "data")
  c.pretrain.data.prepared = "/elsewhere/data"  # a data dir prepared earlier: every stage reads it
  again = study_run.plan(c, tmp_path)
  assert again["pretrain"].build().data.prepared == "/elsewhere/data"
  assert again["dpo_natural"].build().pairs_data_dir == "/elsewhere/data"
  assert again["prepare_mixed"].build().data.prepared == ""
  mixed = stages["pretrain_mixed"].build()
  assert mixed.data.require_child is False and mixed.data.adult_share == c.beyond.adult_share
  released = study_config.get_config("tiny")
  released.synthetic = "released"
  plan = study_run.plan(released, tmp_path)
  assert "synthetic_pairs" not in plan and plan["dpo_synthetic"].build().pairs == c.dpo_synthetic.pairs


def test_cpu_variant_is_the_full_data_run_cut_down(tmp_path):
  c = study_config.get_config("cpu")
  stages = study_run.plan(c, tmp_path)
  assert "ppo_curriculum" not in stages and "synthetic_pairs" not in stages
  pre = stages["pretrain"].build()
  assert pre.model.preset == "tiny" and pre.train.max_steps == 1000 and pre.data.childes == "data:childes"
  assert stages["dpo_natural"].build().train.max_steps == 150


def test_per_stage_overrides_reach_the_stage(tmp_path):
  c = study_config.get_config("tiny")
  c.dpo_natural.dpo.beta = 0.25
  c.ppo_semsim.ppo.learning_rate = 3e-6
  stages = study_run.plan(c, tmp_path)
  assert stages["dpo_natural"].build().dpo.beta == 0.25
  assert stages["ppo_semsim"].needs == ("pretrain", "teacher_replies")
  (tmp_path / "teacher_replies").mkdir()
  with pytest.raises(ConfigError, match="stage teacher_replies: no reply cache"):
    stages["ppo_semsim"].build()  # its reply cache is read from the finished teacher_replies stage
  c.ppo_bleu.reward.replies = "pairs:data:communicative_baby/dpo_dataset/synthetic_dpo_format.json"
  sweep = study_run.plan(c, tmp_path)["sweep_bleu_lr0.0001_kl0.2"].build()
  assert (sweep.ppo.learning_rate, sweep.ppo.init_kl_coef, sweep.train.max_steps) == (1e-4, 0.2, 2)
  assert sweep.reward.replies.startswith("pairs:") and sweep.eval.tasks == c.beyond.sweep.eval_tasks


def test_bad_settings_are_one_line_errors(tmp_path):
  c = study_config.get_config("tiny")
  c.stages = "pretrain,bogus"
  with pytest.raises(ConfigError, match="config.stages: unknown stage 'bogus'"):
    study_run.selected(c, study_run.plan(c, tmp_path))
  for key, value, match in (("synthetic", "maybe", "config.synthetic"),):
    c = study_config.get_config("tiny")
    c[key] = value
    with pytest.raises(ConfigError, match=match):
      study_run.validate(c)
  c = study_config.get_config("tiny")
  c.beyond.sweep.rewards = "bleu,length"
  with pytest.raises(ConfigError, match="beyond.sweep.rewards: unknown reward 'length'"):
    study_run.validate(c)
  c = study_config.get_config("tiny")
  c.beyond.sweep.learning_rates = "1e-5,fast"
  with pytest.raises(ConfigError, match="beyond.sweep.learning_rates"):
    study_run.plan(c, tmp_path)


def test_a_stage_needs_its_inputs_finished(tmp_path):
  c = study_config.get_config("tiny")
  stages = study_run.plan(c, tmp_path)
  with pytest.raises(ConfigError, match="stage dpo_natural needs pretrain, which is not finished"):
    study_run.run_stage(stages["dpo_natural"], tmp_path, "[1/1]")


def test_finished_stage_is_skipped_and_a_changed_one_refused(tmp_path, capsys):
  c = study_config.get_config("tiny")
  stage = study_run.plan(c, tmp_path)["prepare"]
  cfg_json = study_run.config_json(stage.build(), tmp_path)
  study_run.write_record(tmp_path / "prepare", {"status": "done", "config": cfg_json,
                                                "fingerprint": study_run.fingerprint(cfg_json, {})})
  study_run.run_stage(stage, tmp_path, "[1/1]")  # would fail on a missing corpus if it ran
  assert "prepare: done, skipped" in capsys.readouterr().out
  c.pretrain.data.max_words = 5_000
  stage = study_run.plan(c, tmp_path)["prepare"]
  with pytest.raises(ConfigError, match=r"stage prepare: .* other settings \(data.max_words: 100000 -> 5000\)"):
    study_run.run_stage(stage, tmp_path, "[1/1]")
  assert json.loads((tmp_path / "prepare" / "STAGE.json").read_text())["status"] == "done"  # nothing touched


def test_fingerprint_ignores_where_the_study_lives(tmp_path):
  c = study_config.get_config("tiny")
  a = study_run.config_json(study_run.plan(c, tmp_path / "a")["dpo_natural"].build(), tmp_path / "a")
  b = study_run.config_json(study_run.plan(c, tmp_path / "b")["dpo_natural"].build(), tmp_path / "b")
  assert a == b and a["init_from"] == "$DIR/pretrain"


def test_stale_evaluation_results_are_dropped(tmp_path):
  model = tmp_path / "dpo_natural"
  old = tmp_path / "evaluate" / "eval" / "dpo_natural" / "results.json"
  keep = tmp_path / "evaluate" / "eval" / "pretrain" / "results.json"
  for f in (old, keep):
    f.parent.mkdir(parents=True)
    f.write_text("{}")
  study_run.write_record(model, {"status": "done", "finished_unix": time.time() + 5})
  study_run.write_record(tmp_path / "pretrain", {"status": "done", "finished_unix": time.time() - 100})
  study_run.drop_stale_results(tmp_path / "evaluate" / "eval", [str(tmp_path / "pretrain"), str(model)])
  assert not old.exists() and keep.exists()


def _results(tasks: dict[str, float]) -> dict:
  return {"settings": {"tasks": list(tasks), "convention": "study", "max_items_per_task": 0},
          "tasks": {t: {"score": v / 100, "kind": "choice"} for t, v in tasks.items()}}


def test_report_table_beside_the_study(tmp_path):
  ours = {"pretrain": {"zorro": 64.0, "dialogue_word": 57.0, "dialogue_token": 56.0, "blimp_filtered": 56.5},
          "dpo_natural": {"zorro": 63.0, "dialogue_word": 60.0, "dialogue_token": 58.0, "blimp_filtered": 56.0}}
  for stage, values in ours.items():
    out = tmp_path / "evaluate" / "eval" / stage / "results.json"
    out.parent.mkdir(parents=True)
    out.write_text(json.dumps(_results(values)))
    study_run.write_record(tmp_path / stage, {"status": "done", "wall_s": 61.0, "attempts": 1})
  c = study_config.get_config("tiny")
  path = report.write(tmp_path, c, ["pretrain", "dpo_natural", "ppo_bleu", "evaluate"])
  res = json.loads((tmp_path / "results.json").read_text())
  rows = {r["stage"]: r for r in res["table"]}
  assert rows["pretrain"]["diff"]["zorro"] == pytest.approx(64.0 - 65.5)
  assert rows["dpo_natural"]["effect_ours"]["dialogue_word"] == pytest.approx(3.0)
  assert rows["dpo_natural"]["effect_study"]["dialogue_word"] == pytest.approx(68.4 - 64.3)
  assert "ppo_bleu" not in rows
  text = path.read_text()
  assert "| + DPO naturalistic | 63.0 / 64.8 / -1.8 | 60.0 / 68.4 / -8.4 |" in text
  assert "+3.0 / +4.1" in text and "| ppo_bleu | not run |" in text and "1m01s" in text
  assert res["versions"]["jax"] and res["stages"]["pretrain"]["status"] == "done"


@pytest.mark.skipif(not HAS_DATA, reason="no study data")
def test_study_tiny_end_to_end_killed_and_resumed(tmp_path):
  """`configs/study.py:tiny`: every stage, killed during a fine-tuning stage, then rerun to the report."""
  proc = run_main("configs/study.py:tiny", tmp_path, wait=False)
  deadline = time.time() + 1200
  while not study_run.is_done(tmp_path / "dpo_natural") and time.time() < deadline:
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    time.sleep(0.5)
  proc.kill()
  proc.wait()
  done_before = {s for s in ("prepare", "pretrain", "dpo_natural") if study_run.is_done(tmp_path / s)}
  assert done_before == {"prepare", "pretrain", "dpo_natural"}
  again = run_main("configs/study.py:tiny", tmp_path, timeout=1800)
  assert again.returncode == 0, again.stderr[-3000:]
  for s in done_before:
    assert f"{s}: done, skipped" in again.stdout
  res = json.loads((tmp_path / "results.json").read_text())
  assert {r["stage"] for r in res["table"]} >= {"pretrain", "dpo_natural", "dpo_synthetic", "ppo_bleu", "ppo_semsim",
                                               "ppo_llm_score", "ppo_confidence", "ppo_curriculum", "pretrain_mixed"}
  assert all(r["status"] == "done" for r in res["stages"].values()), res["stages"]
  assert len(res["sweep"]) == 2 and all(r.get("steps") == 2 for r in res["sweep"])
  assert res["adult_mix"]["share"] > 0
  assert len(res["trajectory"]) == 3
  for fig in ("trajectory", "dpo_natural", "dpo_synthetic", "ppo"):
    assert (tmp_path / res["figures"][fig]).stat().st_size > 1000
  text = (tmp_path / "REPORT.md").read_text()
  assert "## Results beside the study's" in text and "PPO hyper-parameter sweep" in text


# ---------------------------------------------------------------------------- intervals, paired tests, seeds

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "study_report"


def _fixture_report(tmp_path, monkeypatch, stages: list[str], seeds: int) -> tuple[dict, str]:
  """The report of the fixed predictions in tests/fixtures/study_report, its moving parts pinned."""
  monkeypatch.setenv("LLAMALOGUE_DATA", str(tmp_path / "no_data"))   # no study files: no reference curves
  root = tmp_path / "study"
  shutil.copytree(FIXTURE, root)
  c = study_config.get_config("tiny")
  c.seeds = seeds
  res = report.collect(root, c, stages)
  res.update(written="2025-01-01 00:00:00", study_dir="$DIR", versions={"python": "3", "numpy": "2"})
  return res, report.markdown(res, ["dialogue_word", "zorro", "blimp_filtered"])


def _golden(name: str, text: str) -> None:
  golden = FIXTURE / name
  if os.environ.get("LLAMALOGUE_UPDATE_GOLDEN"):
    golden.write_text(text)
  assert text == golden.read_text(), f"{golden} differs (LLAMALOGUE_UPDATE_GOLDEN=1 rewrites it)"


def test_report_from_fixed_predictions_matches_the_golden_file(tmp_path, monkeypatch):
  res, text = _fixture_report(tmp_path, monkeypatch, ["pretrain", "dpo_natural", "ppo_bleu", "evaluate"], 1)
  _golden("REPORT_seeds_1.md", text)
  rows = {r["stage"]: r for r in res["table"]}
  dpo = rows["dpo_natural"]["effect_test"]["dialogue_word"]
  assert dpo["excludes_zero"] and dpo["p_mcnemar"] < 0.01 and dpo["items"] == 200
  assert dpo["difference_points"] == pytest.approx(rows["dpo_natural"]["effect_ours"]["dialogue_word"])
  assert rows["pretrain"]["items"]["zorro"] == 100 and rows["pretrain"]["study_items"]["zorro"] == 46_000
  assert rows["pretrain"]["interval_method"]["dialogue_word"] == stats.WILSON
  assert rows["dpo_natural"]["effect_study_interval"]["dialogue_word"][0] > 0   # the study's +4.1, unpaired
  assert "| 95% CI |" in text and "| paired test |" in text and "✱" in text


def test_seeds_report_pools_predictions_and_shows_each_seed(tmp_path, monkeypatch):
  stages = ["pretrain", "dpo_natural/seed_0", "dpo_natural/seed_1", "evaluate"]
  res, text = _fixture_report(tmp_path, monkeypatch, stages, 2)
  _golden("REPORT_seeds_2.md", text)
  (row,) = [r for r in res["table"] if r["stage"] == "dpo_natural"]
  assert row["seeds"] == 2 and row["runs"] == ["dpo_natural/seed_0", "dpo_natural/seed_1"]
  assert [s["seed"] for s in row["per_seed"]] == [42, 43]
  pooled = row["effect_test"]["dialogue_word"]
  singles = [s["effect_test"]["dialogue_word"] for s in row["per_seed"]]
  assert pooled["seeds"] == 2 and pooled["items"] == 200
  assert pooled["model_only"] == sum(s["model_only"] for s in singles)   # every (seed, item) pair
  assert pooled["difference"] == pytest.approx(np.mean([s["difference"] for s in singles]))
  assert row["ours"]["zorro"] == pytest.approx(np.mean([s["ours"]["zorro"] for s in row["per_seed"]]))
  assert row["sd"]["zorro"] == pytest.approx(np.std([s["ours"]["zorro"] for s in row["per_seed"]], ddof=1))
  assert "+ DPO naturalistic (2 seeds)" in text and "| + DPO naturalistic | dpo_natural/seed_1 | 43 |" in text


def test_seeds_plan_one_fingerprinted_run_per_seed(tmp_path, capsys):
  c = study_config.get_config("tiny")
  c.seeds, c.synthetic = 2, "released"
  stages = study_run.plan(c, tmp_path)
  assert {"ppo_bleu/seed_1", "ppo_curriculum/seed_1"} <= set(stages) and "ppo_bleu" not in stages
  for group in ("dpo_natural", "dpo_synthetic", "ppo_llm_score"):   # (the others read the teacher's replies)
    assert group not in stages
    runs = [stages[f"{group}/seed_{k}"].build() for k in range(2)]
    assert [r.seed for r in runs] == [c[group].seed, c[group].seed + 1]
    assert runs[0].init_from == str(tmp_path / "pretrain")
  assert "pretrain" in stages and "sweep_bleu_lr0.0001_kl0.2" in stages   # pre-training and the sweep: one run
  assert study_run.selected(c.copy_and_resolve_references(), stages)[-1] == "evaluate"
  c.stages = "pretrain,dpo_natural,ppo_bleu/seed_1"
  assert study_run.selected(c, stages) == ["pretrain", "dpo_natural/seed_0", "dpo_natural/seed_1", "ppo_bleu/seed_1"]
  # Books per seed run: one finished seed is skipped, the other runs (here: fails on its missing base).
  seed0 = stages["dpo_natural/seed_0"]
  study_run.write_record(tmp_path / "pretrain", {"status": "done", "fingerprint": "p"})
  cfg_json = study_run.config_json(seed0.build(), tmp_path)
  study_run.write_record(tmp_path / "dpo_natural" / "seed_0", {
      "status": "done", "config": cfg_json, "fingerprint": study_run.fingerprint(cfg_json, {"pretrain": "p"})})
  study_run.run_stage(seed0, tmp_path, "[1/1]")
  assert "dpo_natural/seed_0: done, skipped" in capsys.readouterr().out
  other = study_run.config_json(stages["dpo_natural/seed_1"].build(), tmp_path)
  assert study_run.fingerprint(other, {"pretrain": "p"}) != study_run.fingerprint(cfg_json, {"pretrain": "p"})
  # The evaluate stage scores every finished seed, under names that do not collide.
  study_run.write_record(tmp_path / "dpo_synthetic" / "seed_0", {"status": "done"})
  compare = stages["evaluate"].build().compare_to.split(",")
  assert compare == [str(tmp_path / "dpo_natural" / "seed_0"), str(tmp_path / "dpo_synthetic" / "seed_0")]
  from llamalogue.checkpoint import checkpoint_name
  assert [checkpoint_name(m) for m in compare] == ["dpo_natural-seed_0", "dpo_synthetic-seed_0"]
  one = study_config.get_config("tiny")
  assert "dpo_natural" in study_run.plan(one, tmp_path) and one.seeds == 1   # seeds=1: the layout of old
  one.seeds = 0
  with pytest.raises(ConfigError, match="config.seeds: 0"):
    study_run.validate(one)


def test_study_modules_import_one_way():
  """study/run.py imports study/report.py, never the reverse (both read the books in study/books.py)."""
  import ast
  for module, forbidden in (("report", "run"), ("books", "run"), ("books", "report")):
    tree = ast.parse((pathlib.Path(study_run.__file__).parent / f"{module}.py").read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert forbidden not in names and f"study.{forbidden}" not in modules | names, (module, forbidden)
