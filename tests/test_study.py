"""The study orchestrator: its plan and wiring, the books (skip / resume / refuse a changed stage), the
report from results, and `configs/study.py:tiny` end to end, killed once and resumed."""

import json
import time

import pytest

from configs import study as study_config
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
  third = run_main("configs/study.py:tiny", tmp_path, "--config.stages=pretrain,dpo_natural", timeout=600)
  assert third.returncode == 0 and "pretrain: done, skipped" in third.stdout
