"""DIR/REPORT.md, DIR/results.json and DIR/figures/ of a study run, from what its stages wrote.

The table is the study's (STUDY.md §7): our number beside each published one and the
difference, then the fine-tuning effects (model − its base), ours beside the study's, since
a CPU-sized base sits lower than the study's 135M model. Every accuracy has its item count
and 95% interval; every effect of ours a paired test on the items both models scored (exact
McNemar, paired bootstrap; evaluation/stats.py); the study's numbers the intervals their item
counts imply (evaluation/report.py STUDY_ITEMS), and its effects an unpaired interval (it
released no per-item predictions). A stage run with several seeds (`config.seeds`) is one row:
mean ± sd over seeds, its intervals and tests pooled over seeds, and each seed's effect in its
own table. Figures: the learning trajectory, DPO loss / reward accuracy and PPO reward curves,
each beside the study's logged curves. A stage that has not run is reported as such; nothing
here is invented.
"""

import json
import pathlib
import platform
import time

import numpy as np

from evaluation import report as eval_report
from evaluation import stats
from evaluation import uncertainty
from llamalogue.checkpoint import checkpoint_name
from study import books

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
UNPAIRED_NOTE = ("the study's effects and ours − the study's: " + stats.MOVER + "; the study released no per-item "
                 "predictions, so no paired test is possible for its numbers")


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


def is_model_stage(stage: str) -> bool:
  g = books.group_of(stage)
  return g in ("pretrain", "pretrain_mixed") or g.startswith(("ppo_", "dpo_"))


class Evaluated:
  """The results.json and predictions.jsonl the evaluation wrote for each model in one eval dir."""

  def __init__(self, eval_dir: pathlib.Path):
    self.eval_dir = eval_dir
    self._preds: dict[str, list[dict] | None] = {}

  def folder(self, model_dir: pathlib.Path) -> pathlib.Path:
    return self.eval_dir / checkpoint_name(str(model_dir))

  def results(self, model_dir: pathlib.Path) -> dict | None:
    res = _read_json(self.folder(model_dir) / "results.json")
    if res and uncertainty.needs_intervals(res) and self.predictions(model_dir) is not None:
      uncertainty.attach_all(res, self.predictions(model_dir))  # results written before intervals existed
    return res

  def predictions(self, model_dir: pathlib.Path) -> list[dict] | None:
    key = str(model_dir)
    if key not in self._preds:
      self._preds[key] = uncertainty.read_predictions(self.folder(model_dir) / "predictions.jsonl")
    return self._preds[key]


def _pct(x):
  return None if x is None else 100 * x


def _scaled_effect(e: dict | None) -> dict | None:
  """A paired test as stored in results.json: stats.paired_effect with the difference in points too."""
  if not e:
    return None
  return {**e, "difference_points": _pct(e["difference"]), "interval_points": [100 * x for x in e["interval"]]}


def results_table(root: pathlib.Path, stages: list[str]) -> list[dict]:
  """One row per model (a stage, its seeds pooled): ours with items and 95% interval, the study's with
  its interval, their difference, and both fine-tuning effects with ours' paired test."""
  ev = Evaluated(root / "evaluate" / "eval")
  base_dir = root / "pretrain"
  base_res = ev.results(base_dir)
  base_preds = ev.predictions(base_dir)
  base_ours = {n: eval_report.task_value(r) for n, r in base_res["tasks"].items()} if base_res else {}
  base_study = eval_report.STUDY_TABLE["llamalogue"]
  rows = []
  for group, members in books.groups([s for s in stages if is_model_stage(s)]).items():
    runs = [(s, ev.results(root / s)) for s in members]
    runs = [(s, r) for s, r in runs if r]
    if not runs:
      continue
    preds = [ev.predictions(root / s) for s, _ in runs]
    preds = preds if all(p is not None for p in preds) else None
    study = eval_report.STUDY_TABLE.get(ROWS.get(group, ""), {})
    row = {"stage": group, "model": ROWS.get(group, group), "seeds": len(runs), "runs": [s for s, _ in runs],
           "ours": {}, "sd": {}, "items": {}, "interval": {}, "interval_method": {}, "study": study,
           "study_items": {t: eval_report.STUDY_ITEMS[t] for t in study if t in eval_report.STUDY_ITEMS},
           "study_interval": {t: eval_report.published_interval(t, v) for t, v in study.items()
                              if eval_report.published_interval(t, v)},
           "diff": {}, "diff_interval": {}, "effect_ours": {}, "effect_test": {}, "effect_study": {},
           "effect_study_interval": {}}
    tasks = [t for t in runs[0][1]["tasks"] if all(t in r["tasks"] for _, r in runs)]
    for t in tasks:
      vals = [eval_report.task_value(r["tasks"][t]) for _, r in runs]
      if any(v is None for v in vals):
        continue
      res0 = runs[0][1]["tasks"][t]
      v = float(np.mean(vals))
      row["ours"][t] = v
      row["items"][t] = res0.get("items", res0.get("rows"))
      if len(runs) > 1:
        row["sd"][t] = float(np.std(vals, ddof=1))
        pooled = uncertainty.pooled_accuracy(preds, t) if preds and res0["kind"] == "choice" else None
        if pooled:
          row["interval"][t], row["interval_method"][t] = [100 * x for x in pooled["interval"]], \
              pooled["interval_method"]
      elif eval_report.task_interval(res0):
        row["interval"][t], row["interval_method"][t] = eval_report.task_interval(res0), res0["interval_method"]
      if t in study:
        row["diff"][t] = v - study[t]
        if t in row["interval"] and t in row["study_interval"]:
          row["diff_interval"][t] = list(stats.mover_difference(v, row["interval"][t], study[t],
                                                                row["study_interval"][t]))
      if group != "pretrain" and base_ours.get(t) is not None:
        row["effect_ours"][t] = v - base_ours[t]
        if preds and base_preds is not None:
          e = _scaled_effect(uncertainty.effect(preds, base_preds, t))
          if e:
            row["effect_test"][t] = e
        if t in study and t in base_study:
          row["effect_study"][t] = study[t] - base_study[t]
          ci = (eval_report.published_interval(t, study[t]), eval_report.published_interval(t, base_study[t]))
          if all(ci):
            row["effect_study_interval"][t] = list(stats.mover_difference(study[t], ci[0], base_study[t], ci[1]))
    if len(runs) > 1:
      row["per_seed"] = seed_rows(root, row, runs, preds, base_ours, base_preds)
    rows.append(row)
  return rows


def seed_rows(root: pathlib.Path, row: dict, runs: list[tuple[str, dict]], preds: list | None, base_ours: dict,
              base_preds: list | None) -> list[dict]:
  """Each seed run of a row: its config seed, accuracy and effect with its own paired test."""
  out = []
  for (s, r), p in zip(runs, preds or [None] * len(runs)):
    one = {"stage": s, "seed": ((books.read_record(root / s) or {}).get("config") or {}).get("seed"),
           "ours": {t: eval_report.task_value(r["tasks"][t]) for t in row["ours"]},
           "effect_ours": {t: eval_report.task_value(r["tasks"][t]) - base_ours[t] for t in row["effect_ours"]},
           "effect_test": {}}
    for t in row["effect_ours"]:
      e = _scaled_effect(uncertainty.effect([p], base_preds, t)) if p is not None and base_preds else None
      if e:
        one["effect_test"][t] = e
    out.append(one)
  return out


def _f(x, sign=False) -> str:
  if x is None:
    return "–"
  return f"{x:+.1f}" if sign else f"{x:.1f}"


def _ci(ci, sign=False) -> str:
  return eval_report.fmt_ci(ci, 1, sign)


def _star(ci) -> str:
  return " ✱" if ci and (ci[0] > 0 or ci[1] < 0) else ""


def _n(x) -> str:
  return "–" if x is None else f"{x:,}"


def _value(r: dict, t: str, key: str = "ours", sign: bool = False) -> str:
  """`63.0`, or `63.0 ± 0.4` (sd over seeds) for a row with several seeds."""
  v = r[key].get(t)
  sd = r["sd"].get(t) if r.get("seeds", 1) > 1 else None
  return _f(v, sign) + (f" ± {sd:.1f}" if v is not None and sd is not None else "")


def _paired(e: dict | None) -> str:
  """`[+1.9, +4.1] p 3.1e-05 ✱` of a stored paired test (points)."""
  if not e:
    return "–"
  return f"{_ci(e['interval_points'], True)} p {eval_report.fmt_p(e['p_mcnemar'])}" + (" ✱" if e["excludes_zero"] else "")


def table_markdown(rows: list[dict], tasks: list[str]) -> str:
  """The study's table, ours / the study's / Δ per cell; under each model a row of the 95% intervals; then
  the fine-tuning effects, under each a row of ours' paired test and the study's unpaired interval."""
  study_cols = [t for t in STUDY_COLUMNS if t in tasks or any(t in r["study"] for r in rows)]
  extra = [t for t in tasks if t not in STUDY_COLUMNS]
  head = ["model"] + [f"{LABELS.get(t, t)}: ours / study / Δ" for t in study_cols] + [LABELS.get(t, t) for t in extra]
  items = next((r["items"] for r in rows if r["stage"] == "pretrain"), rows[0]["items"] if rows else {})
  study_items = {t: eval_report.STUDY_ITEMS.get(t) for t in study_cols}
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
           "| items | " + " | ".join([f"{_n(items.get(t))} / {_n(study_items[t])}" for t in study_cols] +
                                     [_n(items.get(t)) for t in extra]) + " |"]
  for r in rows:
    label = r["model"] + (f" ({r['seeds']} seeds)" if r.get("seeds", 1) > 1 else "")
    cells, cis = [label], ["95% CI"]
    for t in study_cols:
      cells.append(f"{_value(r, t)} / {_f(r['study'].get(t))} / {_f(r['diff'].get(t), True)}"
                   if t in r["ours"] else f"not run / {_f(r['study'].get(t))} / –")
      cis.append(f"{_ci(r['interval'].get(t))} / {_ci(r['study_interval'].get(t))} / "
                 f"{_ci(r['diff_interval'].get(t), True)}")
    cells += [_value(r, t) for t in extra]
    cis += [_ci(r["interval"].get(t)) for t in extra]
    lines += ["| " + " | ".join(cells) + " |", "| " + " | ".join(cis) + " |"]
  effects = [r for r in rows if r["stage"] != "pretrain"]
  if effects:
    cols = [t for t in study_cols if any(t in r["effect_ours"] for r in effects)] + \
           [t for t in extra if any(t in r["effect_ours"] for r in effects)]
    lines += ["", "Fine-tuning effect (model − its base, points), ours / the study's; under each, ours' paired "
              "95% interval and exact McNemar p / the study's unpaired 95% interval (✱: the interval excludes 0):", "",
              "| model | " + " | ".join(LABELS.get(t, t) for t in cols) + " |", "|" + "---|" * (1 + len(cols))]
    for r in effects:
      label = r["model"] + (f" ({r['seeds']} seeds)" if r.get("seeds", 1) > 1 else "")
      lines.append("| " + label + " | " + " | ".join(
          f"{_value(r, t, 'effect_ours', True)} / {_f(r['effect_study'].get(t), True)}" for t in cols) + " |")
      lines.append("| paired test | " + " | ".join(
          f"{_paired(r['effect_test'].get(t))} / {_ci(r['effect_study_interval'].get(t), True)}"
          f"{_star(r['effect_study_interval'].get(t))}" for t in cols) + " |")
  return "\n".join(lines)


def seeds_markdown(rows: list[dict], tasks: list[str]) -> list[str]:
  """Each seed's accuracy and effect (with its own paired test), for stages run with several seeds."""
  seeded = [r for r in rows if r.get("per_seed")]
  if not seeded:
    return []
  cols = [t for t in tasks if any(t in r["ours"] for r in seeded)]
  L = ["| model | run | seed | " + " | ".join(LABELS.get(t, t) for t in cols) + " |", "|---|---|---|" + "---|" * len(cols)]
  for r in seeded:
    for one in r["per_seed"]:
      cells = [r["model"], one["stage"], str(one.get("seed", "–"))]
      for t in cols:
        v = _f(one["ours"].get(t))
        e = one.get("effect_ours", {}).get(t)
        test = one["effect_test"].get(t)
        cells.append(v if e is None else f"{v}: {_f(e, True)}" + (f" {_paired(test)}" if test else ""))
      L.append("| " + " | ".join(cells) + " |")
  return L


def ppo_summary(rows: list[dict]) -> dict:
  """Mean reward over the first and last quarter of a PPO run, its last KL, steps."""
  pts = [(r["step"], r["env/reward_mean"], r.get("objective/kl")) for r in rows if "env/reward_mean" in r]
  if not pts:
    return {}
  q = max(1, len(pts) // 4)
  return {"steps": pts[-1][0], "reward_first": float(np.mean([p[1] for p in pts[:q]])),
          "reward_last": float(np.mean([p[1] for p in pts[-q:]])), "kl_last": pts[-1][2]}


def sweep_rows(root: pathlib.Path, stages: list[str]) -> list[dict]:
  """Each sweep run's settings, reward trend and effect on the items of its own evaluation (with its paired test)."""
  out = []
  for s in stages:
    if not s.startswith("sweep_"):
      continue
    rec = books.read_record(root / s) or {}
    cfg = rec.get("config", {})
    row = {"stage": s, "status": rec.get("status", "not run"), "reward": cfg.get("reward", {}).get("name"),
           "learning_rate": cfg.get("ppo", {}).get("learning_rate"),
           "init_kl_coef": cfg.get("ppo", {}).get("init_kl_coef"), **ppo_summary(_metrics(root / s))}
    ev = Evaluated(root / s / "eval")
    mine, base = ev.results(root / s), ev.results(root / "pretrain")
    if mine and base:
      row["effect"] = {t: eval_report.task_value(r) - eval_report.task_value(base["tasks"][t])
                       for t, r in mine["tasks"].items() if t in base["tasks"]
                       and eval_report.task_value(r) is not None and eval_report.task_value(base["tasks"][t]) is not None}
      m_preds, b_preds = ev.predictions(root / s), ev.predictions(root / "pretrain")
      if m_preds is not None and b_preds is not None:
        row["effect_test"] = {t: _scaled_effect(e) for t, e in
                              uncertainty.effects([m_preds], b_preds, list(row["effect"])).items()}
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
  runs = books.groups(stages)  # a stage with seeds: the curve of its first seed
  for s, ref in (("dpo_natural", "natural"), ("dpo_synthetic", "synthetic")):
    rows = _metrics(root / runs[s][0]) if s in runs else []
    if rows:
      curves.plot_dpo(rows, fig_dir / f"{s}.png", references={ref: curves.DPO_REFERENCE[ref]})
      out[s] = f"figures/{s}.png"
  ppo = {g[len("ppo_"):]: _metrics(root / m[0]) for g, m in runs.items()
         if g.startswith("ppo_") and _metrics(root / m[0])}
  if ppo:
    curves.plot_ppo(ppo, fig_dir / "ppo_rewards.png")
    out["ppo"] = "figures/ppo_rewards.png"
  return out


def collect(root: pathlib.Path, config, stages: list[str]) -> dict:
  """Everything the report shows, as results.json holds it."""
  root = pathlib.Path(root)
  records = {s: books.read_record(root / s) for s in stages}
  ev = _read_json(root / "evaluate" / "eval" / checkpoint_name(str(root / "pretrain")) / "results.json")
  traj = _read_json(root / "trajectory" / "eval" / "pretrain" / "trajectory.json")
  mixed = _read_json(root / "prepare_mixed" / "data" / "stats.json")
  study_traj = eval_report.reference_trajectory()
  return {
      "written": time.strftime("%Y-%m-%d %H:%M:%S"), "study_dir": str(root), "table": results_table(root, stages),
      "evaluation_settings": ev["settings"] if ev else None,
      "interval_methods": eval_report.interval_methods(ev) if ev else [],
      "seeds": config.get("seeds", 1),
      "trajectory": traj["rows"] if traj else None, "trajectory_study": study_traj,
      "trajectory_study_intervals": {w: {t: eval_report.published_interval(t, x) for t, x in v.items()}
                                     for w, v in study_traj.items()},
      "ppo": {s: ppo_summary(_metrics(root / s)) for s in stages if s.startswith("ppo_")},
      "sweep": sweep_rows(root, stages), "adult_mix": mixed.get("adult_only") if mixed else None,
      "stages": {s: {k: (r or {}).get(k) for k in ("status", "wall_s", "attempts", "finished", "hardware",
                                                   "fingerprint")} for s, r in records.items()},
      "configs": {s: (r or {}).get("config") for s, r in records.items()},
      "versions": versions(), "figures": figures(root, stages, traj),
      "study_config": json.loads(config.to_json_best_effort())}


def write(root: pathlib.Path, config, stages: list[str]) -> pathlib.Path:
  """Writes DIR/results.json, DIR/REPORT.md and DIR/figures/*.png; returns the report's path."""
  root = pathlib.Path(root)
  results = collect(root, config, stages)
  tasks = list((results["evaluation_settings"] or {}).get("tasks", []))
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
          table_markdown(res["table"], tasks), "", "Uncertainty:", "",
          "- ours: " + ("; ".join(res.get("interval_methods") or []) or "no interval recorded") + ";",
          f"- the fine-tuning effects of ours: {stats.PAIRED};",
          f"- {eval_report.STUDY_ITEMS_NOTE};",
          f"- {UNPAIRED_NOTE}.", "",
          "In the first table each row of intervals reads ours / the study's / ours − the study's."]
    if any(r.get("seeds", 1) > 1 for r in res["table"]):
      n = max(r.get("seeds", 1) for r in res["table"])
      L += ["", f"A model trained with {n} seeds (`config.seeds={n}`: DIR/<stage>/seed_<k>, the stage's `seed` + k) "
            "shows the mean ± sd over its seeds; its intervals and paired tests pool the seeds: items are "
            "resampled with all their seeds, and McNemar counts every (seed, item) pair, so its p-value treats "
            "seeds as independent and is optimistic when seeds agree item by item. Each seed alone (accuracy: "
            "effect on the base, its paired 95% interval and McNemar p):", "",
            *seeds_markdown(res["table"], tasks)]
  else:
    L += ["The `evaluate` stage has not run yet."]
  L += ["", "## Learning trajectory", ""]
  if res["trajectory"]:
    items = res["trajectory"][0].get("items", {})
    L += [f"![trajectory]({res['figures'].get('trajectory', '')}) (shaded: 95% intervals)", "",
          "| checkpoint | words | " + " | ".join(t + (f" (n {items[t]:,})" if items.get(t) else "")
                                                for t in eval_report.TRAJ_TASKS)
          + " |", "|---|---|" + "---|" * 3]
    for r in res["trajectory"]:
      L.append(f"| {r['checkpoint']} | {r['words']:,} | " + " | ".join(
          eval_report.value_cell(r["values"].get(t), r.get("intervals", {}).get(t)) for t in eval_report.TRAJ_TASKS)
          + " |")
    ci = res.get("trajectory_study_intervals", {})
    study = ", ".join(
        f"{w / 1e6:g} M {eval_report.value_cell(v.get('dialogue_word'), ci.get(w, {}).get('dialogue_word'))} / "
        f"{eval_report.value_cell(v.get('zorro'), ci.get(w, {}).get('zorro'))}"
        for w, v in res["trajectory_study"].items())
    L += ["", "Each cell with its 95% interval. The study (dialogue MP word / Zorro, n 7,548 / 46,000): " +
          (study or f"its reference results are not in the data folder ({eval_report.REFERENCE_DIR}).")]
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
          "(word) | (token) |", "|---|---|---|---|---|---|---|---|"]
    for r in res["sweep"]:
      e, test = r.get("effect", {}), r.get("effect_test", {})
      L.append(f"| {r['reward']} | {r['learning_rate']} | {r['init_kl_coef']} | {r['status']} | "
               f"{_f3(r.get('reward_first'))} → {_f3(r.get('reward_last'))} | {_f3(r.get('kl_last'))} | " +
               " | ".join(f"{_f(e.get(t), True)}" + (f" {_paired(test[t])}" if test.get(t) else "")
                          for t in ("dialogue_word", "dialogue_token")) + " |")
    L += ["", "Effects on the sweep's own evaluation items, with the paired test (" + stats.PAIRED + ")."]
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
