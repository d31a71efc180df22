"""Intervals and paired tests from per-item predictions (`predictions.jsonl`), via evaluation/stats.py.

A task result of kind "choice" gets `correct`, `interval` ([lo, hi] of its score, on [0, 1])
and `interval_method`, and each sub-task its Wilson interval; "correlation" (wug) a bootstrap
interval of rho; "regression" (reading) none, said in `interval_method`. An effect is model −
base on the items both scored, matched by `uid` within each sub-task.
"""

import json
import pathlib

import numpy as np

from evaluation import stats
from llamalogue.errors import DataError

NO_INTERVAL = "none: a regression's R² gain, no interval computed"


def subtask_of(pred: dict) -> str:
  """A prediction's sub-task: its `subtask` field, else the middle of `<task>/<subtask>/<index>`."""
  return pred.get("subtask") or pred["uid"].split("/")[1]


def read_predictions(path: pathlib.Path) -> list[dict] | None:
  """The rows of a predictions.jsonl, or None if there is none; a malformed line is a DataError naming it."""
  try:
    text = pathlib.Path(path).read_text(encoding="utf-8")
  except OSError:
    return None
  rows = []
  for n, line in enumerate(text.splitlines(), 1):
    if line.strip():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{n}: malformed predictions line ({e.msg})") from None
  return rows


def correct_by_subtask(preds: list[dict], task: str) -> dict[str, dict[str, bool]]:
  """sub-task -> {uid: correct} of one task's choice predictions, in file order."""
  out: dict[str, dict[str, bool]] = {}
  for p in preds:
    if p.get("task") == task and "correct" in p:
      out.setdefault(subtask_of(p), {})[p["uid"]] = bool(p["correct"])
  return out


def attach(result: dict, preds: list[dict]) -> dict:
  """Adds the interval fields to one task result (in place) from that task's predictions."""
  name, kind = result["name"], result["kind"]
  if kind == "choice":
    by_sub = correct_by_subtask(preds, name)
    acc = stats.accuracy({k: np.fromiter(v.values(), bool, len(v)) for k, v in by_sub.items()})
    result.update(correct=acc.get("correct"), interval=acc["interval"], interval_method=acc["interval_method"])
    for k, v in by_sub.items():
      sub = result.get("subtasks", {}).get(k)
      if isinstance(sub, dict):
        n, c = len(v), sum(v.values())
        sub.update(correct=c, interval=list(stats.wilson(c, n)))
    if len(by_sub) > 1:
      result["subtask_interval_method"] = stats.WILSON
  elif kind == "correlation":
    rows = [p for p in preds if p.get("task") == name and "prob_first" in p]
    lo, hi = stats.bootstrap_spearman([p["prob_first"] for p in rows], [p["ratio"] for p in rows])
    result.update(interval=None if np.isnan(lo) else [lo, hi], interval_method=stats.SPEARMAN)
  else:
    result.update(interval=None, interval_method=NO_INTERVAL)
  return result


def needs_intervals(results: dict) -> bool:
  """True if a task result was written before intervals existed."""
  return any("interval_method" not in r for r in results.get("tasks", {}).values())


def attach_all(results: dict, preds: list[dict]) -> dict:
  for r in results["tasks"].values():
    if "interval_method" not in r:
      attach(r, preds)
  return results


# ---------------------------------------------------------------------------- effects

def aligned(model_preds: list[list[dict]], base_preds: list[dict], task: str):
  """(model sub-task -> (seeds, items) array, base sub-task -> (items,) array) on the items every
  prediction set scored, in the base's order; None if the task has no choice predictions."""
  base = correct_by_subtask(base_preds, task)
  models = [correct_by_subtask(m, task) for m in model_preds]
  if not base or not models or not all(models):
    return None
  m_out, b_out = {}, {}
  for k, items in base.items():
    uids = [u for u in items if all(u in m.get(k, {}) for m in models)]
    if uids:
      b_out[k] = np.array([items[u] for u in uids], dtype=np.float64)
      m_out[k] = np.array([[m[k][u] for u in uids] for m in models], dtype=np.float64)
  return (m_out, b_out) if b_out else None


def effect(model_preds: list[list[dict]], base_preds: list[dict], task: str) -> dict | None:
  """The paired test of model − base on `task` (stats.paired_effect); `model_preds` holds one
  prediction list per seed. None where the task has no per-item correctness (wug, reading)."""
  pair = aligned(model_preds, base_preds, task)
  return None if pair is None else stats.paired_effect(*pair)


def effects(model_preds: list[list[dict]], base_preds: list[dict], tasks) -> dict[str, dict]:
  """task -> paired test, for every task with per-item correctness in both."""
  out = {}
  for t in tasks:
    e = effect(model_preds, base_preds, t)
    if e is not None:
      out[t] = e
  return out


def pooled_accuracy(model_preds: list[list[dict]], task: str) -> dict | None:
  """Accuracy over seeds (mean over seeds and sub-tasks) with its interval over items, on the items
  every seed scored."""
  pair = aligned(model_preds, model_preds[0], task) if model_preds else None
  return None if pair is None else stats.accuracy(pair[0])
