"""Seed runs made apart from the study (`main.py --config=configs/dpo_natural.py --config.seed=K ...`),
pooled into one table beside the study's numbers: per seed, accuracy and its effect against the base;
over seeds, mean ± sd of the effect and the paired test on the pooled predictions (stats.paired_effect).

  python -m evaluation.pool --base=runs/base --out=runs/pool \
      --group="+ DPO naturalistic=runs/dpo_natural_s0,runs/dpo_natural_s1,runs/dpo_natural_s2" \
      --group="+ DPO synthetic=runs/dpo_synthetic_s0,..."

Each run directory holds the evaluation its `eval` settings wrote (`<run>/eval/<run name>/predictions.jsonl`)
and the base's, scored on the same items (`<run>/eval/<base name>/`); `--base` names the base run (its
predictions are read from the first run that holds them, or from `<base>/eval/<base name>/`). A group's
label that is a row of the study's table (evaluation/report.py `STUDY_TABLE`: "+ DPO naturalistic",
"+ PPO BLEU", ...) gets the study's numbers beside ours, with the Wilson intervals their item counts imply.
Writes `pool.json` and `pool.md` in `--out`. (configs/study.py with `--config.seeds=N` does all of this
inside the study; this is for runs made by hand.)
"""

import argparse
import pathlib
import sys

import numpy as np

from evaluation import report, stats, uncertainty
from llamalogue.errors import DataError, LlamalogueError

STUDY_BASE = "llamalogue"


def _predictions(run: pathlib.Path, name: str) -> list[dict]:
  path = run / "eval" / name / "predictions.jsonl"
  preds = uncertainty.read_predictions(path)
  if preds is None:
    raise DataError(f"{path}: no predictions (evaluate {run} with its eval settings first)")
  return preds


def _base_predictions(base: pathlib.Path, runs: list[pathlib.Path]) -> list[dict]:
  for where in [*runs, base]:
    preds = uncertainty.read_predictions(where / "eval" / base.name / "predictions.jsonl")
    if preds is not None:
      return preds
  raise DataError(f"no predictions of the base {base.name} in any run's eval/ or in {base / 'eval'}")


def _accuracy(preds: list[dict], task: str) -> dict | None:
  acc = uncertainty.pooled_accuracy([preds], task)
  return acc if acc and acc["score"] is not None else None


def pool(base: pathlib.Path, groups: dict[str, list[pathlib.Path]], tasks: list[str] | None = None) -> dict:
  """{"base": ..., "groups": [...]} with every number in points (%)."""
  all_runs = [r for rs in groups.values() for r in rs]
  base_preds = _base_predictions(base, all_runs)
  tasks = tasks or list(dict.fromkeys(p["task"] for p in base_preds if "correct" in p))
  base_acc = {t: _accuracy(base_preds, t) for t in tasks}
  study_base = report.STUDY_TABLE[STUDY_BASE]
  out = {"base": {"run": str(base), "tasks": {t: _points(a) for t, a in base_acc.items()},
                  "study": {t: _study(t, study_base.get(t)) for t in tasks}},
         "groups": [], "tasks": tasks, "bootstrap": {"reps": stats.REPS, "seed": stats.SEED}}
  for label, runs in groups.items():
    preds = [_predictions(r, r.name) for r in runs]
    seeds = []
    for r, p in zip(runs, preds):
      seeds.append({"run": str(r), "tasks": {t: _points(_accuracy(p, t)) for t in tasks},
                    "effects": {t: _effect(uncertainty.effect([p], base_preds, t)) for t in tasks}})
    pooled = {t: _effect(uncertainty.effect(preds, base_preds, t)) for t in tasks}
    spread = {}
    for t in tasks:
      d = [s["effects"][t]["difference"] for s in seeds if s["effects"][t]]
      spread[t] = {"mean": float(np.mean(d)), "sd": float(np.std(d, ddof=1)) if len(d) > 1 else None,
                   "n": len(d)} if d else None
    study_row = report.STUDY_TABLE.get(label, {})
    study = {t: _study(t, study_row.get(t)) for t in tasks}
    study_effect = {t: (study_row[t] - study_base[t]) if t in study_row and t in study_base else None
                    for t in tasks}
    out["groups"].append({"label": label, "seeds": seeds, "pooled_effect": pooled, "effect_over_seeds": spread,
                          "pooled_accuracy": {t: _points(uncertainty.pooled_accuracy(preds, t)) for t in tasks},
                          "study": study, "study_effect": study_effect})
  return out


def _points(acc: dict | None) -> dict | None:
  if not acc or acc.get("score") is None:
    return None
  return {"value": 100 * acc["score"], "interval": [100 * x for x in acc["interval"]], "items": acc["items"],
          "method": acc["interval_method"]}


def _effect(e: dict | None) -> dict | None:
  if not e or e.get("difference") is None:
    return None
  return {"difference": 100 * e["difference"], "interval": [100 * x for x in e["interval"]],
          "p_mcnemar": e["p_mcnemar"], "excludes_zero": e["excludes_zero"], "items": e["items"],
          "seeds": e["seeds"]}


def _study(task: str, value: float | None) -> dict | None:
  return None if value is None else {"value": value, "interval": report.published_interval(task, value)}


def _cell(v: dict | None) -> str:
  return report.value_cell(v["value"], v.get("interval")) if v else "–"


def _effect_cell(e: dict | None) -> str:
  if not e:
    return "–"
  return (f"{e['difference']:+.1f} {report.fmt_ci(e['interval'], 1, True)} p {report.fmt_p(e['p_mcnemar'])}"
          + (" ✱" if e["excludes_zero"] else ""))


def markdown(res: dict) -> str:
  tasks = res["tasks"]
  lines = ["# Fine-tuning effects over seeds", "",
           f"Base: `{res['base']['run']}`. Every accuracy in %, with its 95% interval; Δ = model − base on the same "
           "items.", ""]
  head = "| model | " + " | ".join(f"{t} ours | {t} study" for t in tasks) + " |"
  lines += [head, "|---|" + "---|---|" * len(tasks)]
  lines.append("| base (llamalogue) | " + " | ".join(
      f"{_cell(res['base']['tasks'][t])} | {_cell(res['base']['study'][t])}" for t in tasks) + " |")
  for g in res["groups"]:
    lines.append(f"| {g['label']} (pooled, {len(g['seeds'])} seed{'' if len(g['seeds']) == 1 else 's'}) | " + " | ".join(
        f"{_cell(g['pooled_accuracy'][t])} | {_cell(g['study'][t])}" for t in tasks) + " |")
  lines += ["", "## Effects (model − base)", "",
            "| model | " + " | ".join(f"{t} Δ pooled | {t} mean ± sd over seeds | {t} study Δ" for t in tasks) + " |",
            "|---|" + "---|---|---|" * len(tasks)]
  for g in res["groups"]:
    cells = []
    for t in tasks:
      s = g["effect_over_seeds"][t]
      spread = "–" if not s else f"{s['mean']:+.2f}" + (f" ± {s['sd']:.2f}" if s["sd"] is not None else "")
      se = g["study_effect"][t]
      cells.append(f"{_effect_cell(g['pooled_effect'][t])} | {spread} | {'–' if se is None else f'{se:+.1f}'}")
    lines.append(f"| {g['label']} | " + " | ".join(cells) + " |")
  lines += ["", "## Each seed", "", "| run | " + " | ".join(f"{t} | Δ" for t in tasks) + " |",
            "|---|" + "---|---|" * len(tasks)]
  for g in res["groups"]:
    for s in g["seeds"]:
      lines.append(f"| {pathlib.Path(s['run']).name} | " + " | ".join(
          f"{_cell(s['tasks'][t])} | {_effect_cell(s['effects'][t])}" for t in tasks) + " |")
  lines += ["", report.EFFECT_NOTE + " Pooled: the seeds' mean difference, items resampled with all their seeds, "
            "McNemar over every (seed, item) pair.", "", "Study: " + report.STUDY_ITEMS_NOTE, ""]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m evaluation.pool", description=__doc__.split("\n\n")[0])
  ap.add_argument("--base", required=True, help="the base run directory")
  ap.add_argument("--group", action="append", required=True, help="LABEL=RUN,RUN,...")
  ap.add_argument("--tasks", default="", help="comma-separated tasks (default: every task the base scored)")
  ap.add_argument("--out", required=True, help="where pool.json and pool.md go")
  args = ap.parse_args(argv)
  try:
    groups = {}
    for g in args.group:
      label, sep, runs = g.partition("=")
      if not sep or not runs:
        raise LlamalogueError(f"--group {g!r}: expected LABEL=RUN,RUN,...")
      groups[label] = [pathlib.Path(r) for r in runs.split(",") if r]
      for r in groups[label]:
        if not r.is_dir():
          raise DataError(f"--group {label!r}: {r} is not a directory")
    res = pool(pathlib.Path(args.base), groups, [t for t in args.tasks.split(",") if t] or None)
  except LlamalogueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  report.write_json(out / "pool.json", res)
  report.atomic_write(out / "pool.md", markdown(res))
  print(markdown(res))
  return 0


if __name__ == "__main__":
  sys.exit(main())
