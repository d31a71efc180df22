"""DIR/REPORT.md, DIR/results.json and DIR/figures/ of a study run, from what its stages wrote.

The table is the study's (STUDY.md §7): our number beside each published one and the
difference, then the fine-tuning effects (model − its base), ours beside the study's, since
a CPU-sized base sits lower than the study's 135M model. Figures: the learning trajectory,
DPO loss / reward accuracy and PPO reward curves, each beside the study's logged curves.
A stage that has not run is reported as such; nothing here is invented.
"""

import json
import pathlib
import platform
import time

import numpy as np

from evaluation import report as eval_report
from study import run as study_run

ROWS = {  # study stage -> the study's row (STUDY.md §7)
    "pretrain": "llamalogue", "dpo_natural": "+ DPO naturalistic", "dpo_synthetic": "+ DPO synthetic",
    "ppo_bleu": "+ PPO BLEU", "ppo_semsim": "+ PPO semantic similarity", "ppo_llm_score": "+ PPO LLM score",
    "ppo_confidence": "+ PPO confidence"}
STUDY_COLUMNS = ("zorro", "dialogue_word", "dialogue_token", "lexical_decision")
LABELS = {"zorro": "Zorro", "dialogue_word": "dialogue MP (word)", "dialogue_token": "dialogue MP (token)",
          "lexical_decision": "lexical decision", "blimp_filtered": "BLiMP-filtered", "blimp": "BLiMP",
          "supplement": "supplement", "ewok": "EWoK", "entity_tracking": "entity tracking", "wug": "wug",
          "reading": "reading", "dialogue_heldout": "dialogue MP (held-out)"}
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers", "tokenizers", "ml-collections",
            "numpy", "pylangacq")


def _read_json(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def _metrics(run_dir: pathlib.Path) -> list[dict]:
  try:
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines() if l.strip()]
  except (OSError, ValueError):
    return []


def model_results(root: pathlib.Path, stages: list[str]) -> dict[str, dict]:
  """stage -> {task: value} from DIR/evaluate (the same settings for every model)."""
  out = {}
  for s in stages:
    res = _read_json(root / "evaluate" / "eval" / s / "results.json")
    if res:
      out[s] = {n: eval_report.task_value(r) for n, r in res["tasks"].items()}
  return out


def results_table(values: dict[str, dict]) -> list[dict]:
  """One row per model: ours, the study's, their difference, and both fine-tuning effects."""
  base_ours = values.get("pretrain", {})
  base_study = eval_report.STUDY_TABLE["llamalogue"]
  rows = []
  for stage, ours in values.items():
    study = eval_report.STUDY_TABLE.get(ROWS.get(stage, ""), {})
    row = {"stage": stage, "model": ROWS.get(stage, stage), "ours": ours, "study": study, "diff": {},
           "effect_ours": {}, "effect_study": {}}
    for t, v in ours.items():
      if v is None:
        continue
      if t in study:
        row["diff"][t] = v - study[t]
      if stage != "pretrain" and base_ours.get(t) is not None:
        row["effect_ours"][t] = v - base_ours[t]
        if t in study and t in base_study:
          row["effect_study"][t] = study[t] - base_study[t]
    rows.append(row)
  return rows


def _f(x, sign=False) -> str:
  if x is None:
    return "–"
  return f"{x:+.1f}" if sign else f"{x:.1f}"


def table_markdown(rows: list[dict], tasks: list[str]) -> str:
  study_cols = [t for t in STUDY_COLUMNS if t in tasks or any(t in r["study"] for r in rows)]
  extra = [t for t in tasks if t not in STUDY_COLUMNS]
  head = ["model"] + [f"{LABELS.get(t, t)}: ours / study / Δ" for t in study_cols] + [LABELS.get(t, t) for t in extra]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [r["model"]]
    for t in study_cols:
      ours = r["ours"].get(t)
      cells.append(f"{_f(ours)} / {_f(r['study'].get(t))} / {_f(r['diff'].get(t), True)}"
                   if t in r["ours"] else f"not run / {_f(r['study'].get(t))} / –")
    cells += [_f(r["ours"].get(t)) for t in extra]
    lines.append("| " + " | ".join(cells) + " |")
  effects = [r for r in rows if r["stage"] != "pretrain"]
  if effects:
    cols = [t for t in study_cols if any(t in r["effect_ours"] for r in effects)] + \
           [t for t in extra if any(t in r["effect_ours"] for r in effects)]
    lines += ["", "Fine-tuning effect (model − its base), ours / the study's:", "",
              "| model | " + " | ".join(LABELS.get(t, t) for t in cols) + " |", "|" + "---|" * (1 + len(cols))]
    for r in effects:
      lines.append("| " + r["model"] + " | " + " | ".join(
          f"{_f(r['effect_ours'].get(t), True)} / {_f(r['effect_study'].get(t), True)}" for t in cols) + " |")
  return "\n".join(lines)


def ppo_summary(rows: list[dict]) -> dict:
  """Mean reward over the first and last quarter of a PPO run, its last KL, steps."""
  pts = [(r["step"], r["env/reward_mean"], r.get("objective/kl")) for r in rows if "env/reward_mean" in r]
  if not pts:
    return {}
  q = max(1, len(pts) // 4)
  return {"steps": pts[-1][0], "reward_first": float(np.mean([p[1] for p in pts[:q]])),
          "reward_last": float(np.mean([p[1] for p in pts[-q:]])), "kl_last": pts[-1][2]}


def sweep_rows(root: pathlib.Path, stages: list[str]) -> list[dict]:
  from evaluation.run import checkpoint_name
  out = []
  for s in stages:
    if not s.startswith("sweep_"):
      continue
    rec = study_run.read_record(root / s) or {}
    cfg = rec.get("config", {})
    row = {"stage": s, "status": rec.get("status", "not run"), "reward": cfg.get("reward", {}).get("name"),
           "learning_rate": cfg.get("ppo", {}).get("learning_rate"),
           "init_kl_coef": cfg.get("ppo", {}).get("init_kl_coef"), **ppo_summary(_metrics(root / s))}
    mine = _read_json(root / s / "eval" / s / "results.json")
    base = _read_json(root / s / "eval" / checkpoint_name(str(root / "pretrain")) / "results.json")
    if mine and base:
      row["effect"] = {t: eval_report.task_value(r) - eval_report.task_value(base["tasks"][t])
                       for t, r in mine["tasks"].items() if t in base["tasks"]
                       and eval_report.task_value(r) is not None and eval_report.task_value(base["tasks"][t]) is not None}
    out.append(row)
  return out


def versions() -> dict:
  from importlib import metadata
  out = {"python": platform.python_version()}
  for p in PACKAGES:
    try:
      out[p] = metadata.version(p)
    except metadata.PackageNotFoundError:
      out[p] = None
  return out


def figures(root: pathlib.Path, stages: list[str], traj: dict | None) -> dict[str, str]:
  from rl import curves
  fig_dir = root / "figures"
  fig_dir.mkdir(exist_ok=True)
  out = {}
  if traj and traj.get("rows"):
    tasks = [t for t in eval_report.TRAJ_TASKS if t in traj["settings"]["tasks"]]
    eval_report.plot_trajectory(traj["rows"], tasks, fig_dir / "trajectory.png")
    out["trajectory"] = "figures/trajectory.png"
  for s, ref in (("dpo_natural", "natural"), ("dpo_synthetic", "synthetic")):
    rows = _metrics(root / s)
    if rows:
      curves.plot_dpo(rows, fig_dir / f"{s}.png", references={ref: curves.DPO_REFERENCE[ref]})
      out[s] = f"figures/{s}.png"
  ppo = {s[len("ppo_"):]: _metrics(root / s) for s in stages if s.startswith("ppo_") and _metrics(root / s)}
  if ppo:
    curves.plot_ppo(ppo, fig_dir / "ppo_rewards.png")
    out["ppo"] = "figures/ppo_rewards.png"
  return out


def write(root: pathlib.Path, config, stages: list[str]) -> pathlib.Path:
  """Writes DIR/results.json, DIR/REPORT.md and DIR/figures/*.png; returns the report's path."""
  root = pathlib.Path(root)
  records = {s: study_run.read_record(root / s) for s in stages}
  values = model_results(root, [s for s in stages if s in ("pretrain", "pretrain_mixed")
                                or s.startswith(("ppo_", "dpo_"))])
  ev = _read_json(root / "evaluate" / "eval" / "pretrain" / "results.json")
  tasks = list(ev["settings"]["tasks"]) if ev else []
  table = results_table(values)
  traj = _read_json(root / "trajectory" / "eval" / "pretrain" / "trajectory.json")
  figs = figures(root, stages, traj)
  ppo = {s: ppo_summary(_metrics(root / s)) for s in stages if s.startswith("ppo_")}
  sweep = sweep_rows(root, stages)
  mixed = _read_json(root / "prepare_mixed" / "data" / "stats.json")
  results = {
      "written": time.strftime("%Y-%m-%d %H:%M:%S"), "study_dir": str(root), "table": table,
      "evaluation_settings": ev["settings"] if ev else None,
      "trajectory": traj["rows"] if traj else None, "trajectory_study": eval_report.reference_trajectory(),
      "ppo": ppo, "sweep": sweep, "adult_mix": mixed.get("adult_only") if mixed else None,
      "stages": {s: {k: (r or {}).get(k) for k in ("status", "wall_s", "attempts", "finished", "hardware",
                                                   "fingerprint")} for s, r in records.items()},
      "configs": {s: (r or {}).get("config") for s, r in records.items()},
      "versions": versions(), "figures": figs, "study_config": json.loads(config.to_json_best_effort())}
  eval_report.write_json(root / "results.json", results)
  eval_report.atomic_write(root / "REPORT.md", markdown(results, tasks))
  return root / "REPORT.md"


def markdown(res: dict, tasks: list[str]) -> str:
  L = ["# llamalogue study report", "",
       f"Written {res['written']} from `{res['study_dir']}` (everything below is in `results.json`).", ""]
  L += ["## Results beside the study's (STUDY.md §7, accuracy %)", ""]
  if res["table"]:
    s = res["evaluation_settings"] or {}
    L += [f"Evaluation: {', '.join(s.get('tasks', []))}; convention `{s.get('convention')}`; "
          f"{'every item' if not s.get('max_items_per_task') else str(s['max_items_per_task']) + ' items per task'}."
          " Lexical decision: the study's data is not released, so only its numbers are shown.", "",
          table_markdown(res["table"], tasks)]
  else:
    L += ["The `evaluate` stage has not run yet."]
  L += ["", "## Learning trajectory", ""]
  if res["trajectory"]:
    L += [f"![trajectory]({res['figures'].get('trajectory', '')})", "",
          "| checkpoint | words | " + " | ".join(eval_report.TRAJ_TASKS) + " |", "|---|---|" + "---|" * 3]
    for r in res["trajectory"]:
      L.append(f"| {r['checkpoint']} | {r['words']:,} | " +
               " | ".join(_f(r["values"].get(t)) for t in eval_report.TRAJ_TASKS) + " |")
    L += ["", "The study (dialogue MP word / Zorro): " + ", ".join(
        f"{w / 1e6:g} M {_f(v.get('dialogue_word'))} / {_f(v.get('zorro'))}"
        for w, v in res["trajectory_study"].items())]
  else:
    L += ["The `trajectory` stage has not run yet."]
  L += ["", "## Fine-tuning curves", ""]
  for key, title in (("dpo_natural", "DPO naturalistic"), ("dpo_synthetic", "DPO synthetic"),
                     ("ppo", "PPO rewards")):
    if key in res["figures"]:
      L += [f"**{title}** (dashed: the study's logged curve)", "", f"![{title}]({res['figures'][key]})", ""]
  if res["ppo"]:
    L += ["| PPO run | steps | mean reward, first quarter | last quarter | KL at the end |", "|---|---|---|---|---|"]
    for s, p in res["ppo"].items():
      L.append(f"| {s} | {p.get('steps', '–')} | {_f3(p.get('reward_first'))} | {_f3(p.get('reward_last'))} | "
               f"{_f3(p.get('kl_last'))} |")
  L += ["", "## Beyond the paper", ""]
  if res["adult_mix"]:
    a = res["adult_mix"]
    L += [f"Adult–adult dialogue mixed into pre-training (`pretrain_mixed`): asked {a.get('share_asked')}, reached "
          f"{a.get('share')} of the pre-training words ({a.get('words', 0):,} words in {a.get('units_used', 0):,} "
          "units without the child). Its row in the table is the same evaluation as the child-dialogue base's.", ""]
  if res["sweep"]:
    L += ["PPO hyper-parameter sweep (learning rate × initial KL coefficient):", "",
          "| reward | lr | KL init | status | reward first → last quarter | KL at the end | effect on dialogue MP "
          "(word / token) |", "|---|---|---|---|---|---|---|"]
    for r in res["sweep"]:
      e = r.get("effect", {})
      L.append(f"| {r['reward']} | {r['learning_rate']} | {r['init_kl_coef']} | {r['status']} | "
               f"{_f3(r.get('reward_first'))} → {_f3(r.get('reward_last'))} | {_f3(r.get('kl_last'))} | "
               f"{_f(e.get('dialogue_word'), True)} / {_f(e.get('dialogue_token'), True)} |")
    L.append("")
  if not res["adult_mix"] and not res["sweep"] and "ppo_curriculum" not in res["ppo"]:
    L += ["No beyond-the-paper switch was on (configs/study.py `beyond`).", ""]
  L += ["## Stages", "", "| stage | status | wall time | attempts | finished | device |", "|---|---|---|---|---|---|"]
  for s, r in res["stages"].items():
    hw = r.get("hardware") or {}
    L.append(f"| {s} | {r.get('status') or 'not run'} | {_dur(r.get('wall_s'))} | {r.get('attempts') or 0} | "
             f"{r.get('finished') or '–'} | {hw.get('device_kind', '–')} ×{hw.get('devices', '–')} "
             f"({hw.get('cpu_cores', '?')} CPU cores) |")
  total = sum(r.get("wall_s") or 0 for r in res["stages"].values())
  L += ["", f"Total wall time: {_dur(total)}.", "", "## Versions", "",
        ", ".join(f"{k} {v}" for k, v in res["versions"].items() if v), "",
        "## Configs", "", "Each stage's config as it ran (its own config file's settings, the overrides, and the "
        "study's wiring; `$DIR` is this directory). Also in `DIR/<stage>/STAGE.json` and `results.json`.", ""]
  for s, cfg in res["configs"].items():
    if cfg:
      L += [f"<details><summary>{s}</summary>", "", "```json", json.dumps(cfg, indent=1), "```", "", "</details>", ""]
  return "\n".join(L)


def _f3(x) -> str:
  return "–" if x is None else f"{x:.3f}"


def _dur(s) -> str:
  if not s:
    return "–"
  s = int(s)
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
