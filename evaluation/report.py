"""The study's published numbers (with the intervals their item counts imply), Markdown tables and
learning-curve plots. Intervals and tests come from evaluation/stats.py via evaluation/uncertainty.py."""

import csv
import json
import math
import os
import pathlib
import re

from evaluation import stats
from llamalogue import paths

# STUDY.md §7 (accuracy, %): final models of the study.
STUDY_TABLE = {
    "llamalogue": {"zorro": 65.5, "dialogue_word": 64.3, "dialogue_token": 63.8, "lexical_decision": 40.3},
    "+ DPO naturalistic": {"zorro": 64.8, "dialogue_word": 68.4, "dialogue_token": 67.6, "lexical_decision": 40.5},
    "+ DPO synthetic": {"zorro": 62.7, "dialogue_word": 64.9, "dialogue_token": 64.3, "lexical_decision": 41.3},
    "+ PPO BLEU": {"zorro": 62.5, "dialogue_word": 62.0, "dialogue_token": 61.0, "lexical_decision": 40.7},
    "+ PPO semantic similarity": {"zorro": 64.7, "dialogue_word": 61.1, "dialogue_token": 60.6,
                                  "lexical_decision": 39.7},
    "+ PPO LLM score": {"zorro": 65.2, "dialogue_word": 63.6, "dialogue_token": 62.5, "lexical_decision": 40.2},
    "+ PPO confidence": {"zorro": 63.7, "dialogue_word": 63.7, "dialogue_token": 62.4, "lexical_decision": 40.8},
}
# STUDY.md §7: the study's own BLiMP script, and BabyLM 2025 strict-small GPT-2 baselines (orientation only).
OTHER_REFERENCES = {
    "blimp": (56.0, "study's BLiMP script, llamalogue"),
    "blimp_filtered": (67.3, "BabyLM 2025 GPT-2 small baseline"),
    "supplement": (59.1, "BabyLM 2025 GPT-2 small baseline"),
    "ewok": (49.8, "BabyLM 2025 GPT-2 small baseline"),
    "entity_tracking": (18.9, "BabyLM 2025 GPT-2 small baseline"),
}
REFERENCE_DIR = "communicative_baby/reference_results"

# Item counts behind the study's numbers, for their intervals (Wilson at k = round(value × n); the
# published values are rounded to 0.1, which moves k by at most n/2000).
STUDY_ITEMS = {"dialogue_word": 7_548, "dialogue_token": 7_520, "zorro": 46_000, "lexical_decision": 4_311}
STUDY_ITEMS_NOTE = (
    "the study's numbers: Wilson intervals at the item counts of its sets: dialogue MP 7,548 word- and 7,520 "
    "token-matched pairs (the released evaluation pairs); Zorro 46,000 (23 paradigms × 2,000; equal sub-tasks, so "
    "the sub-task mean is the item mean, and Wilson over all items is slightly wider than a stratified interval); "
    "lexical decision 4,311, inferred (the study does not state it): every lexical-decision accuracy in its "
    "reference_results/ppo_lexical_decision_results.csv is an exact multiple of 1/4,311. Other published numbers "
    "(the study's BLiMP script, BabyLM baselines): item counts not published, no interval")


# ---------------------------------------------------------------------------- reference files

def _rows(name: str) -> list[dict]:
  p = paths.data_root() / REFERENCE_DIR / name
  if not p.exists():
    return []
  with p.open(encoding="utf-8", newline="") as f:
    return list(csv.DictReader(f))


def words_of(label: str) -> int | None:
  """`llamalogue-chck_30M` -> 30_000_000; None for other labels."""
  m = re.search(r"chck_(\d+)M$", label)
  return int(m.group(1)) * 1_000_000 if m else None


def reference_trajectory() -> dict[int, dict[str, float]]:
  """words -> {dialogue_word, dialogue_token, zorro, lexical_decision} (%) of the study's checkpoints."""
  traj: dict[int, dict[str, float]] = {}
  for r in _rows("ppo_dialogue_min_pairs_llamalogue.csv"):
    w = words_of(r["Model"])
    if w:
      key = "dialogue_word" if r["Dataset"] == "Words" else "dialogue_token"
      traj.setdefault(w, {})[key] = 100 * float(r["Accuracy"])
  for r in _rows("ppo_zorro_results.csv"):
    w = words_of(r["Model"])
    if w:
      traj.setdefault(w, {})["zorro"] = 100 * float(r["OverallAccuracy"])
  for r in _rows("ppo_lexical_decision_results.csv"):
    w = words_of(r["Model"])
    if w:
      traj.setdefault(w, {})["lexical_decision"] = 100 * float(r["Accuracy"])
  return dict(sorted(traj.items()))


def reference_zorro_paradigms(model: str = "llamalogue-main") -> dict[str, float]:
  """Zorro per-paradigm accuracy (%) of a study model (ppo_zorro_results.csv)."""
  for r in _rows("ppo_zorro_results.csv"):
    if r["Model"] == model:
      return {k[len("Paradigm_"):-len(".txt")]: 100 * float(v) for k, v in r.items()
              if k.startswith("Paradigm_")}
  return {}


def published_interval(task: str, value: float | None) -> list[float] | None:
  """95% Wilson interval (%) of one of the study's accuracies (%) at the item count of its set."""
  n = STUDY_ITEMS.get(task)
  if value is None or n is None:
    return None
  return [100 * x for x in stats.wilson(round(value / 100 * n), n)]


def reference_for(task: str, model: str = "llamalogue") -> tuple[float | None, str]:
  """The published number (%) to put beside our result for `task`, and where it comes from."""
  if task in STUDY_TABLE.get(model, {}):
    return STUDY_TABLE[model][task], f"study §7, {model}"
  if task in OTHER_REFERENCES:
    return OTHER_REFERENCES[task]
  return None, ""


# ---------------------------------------------------------------------------- writing

def atomic_write(path: pathlib.Path, data: str | bytes) -> None:
  """Temporary file beside `path`, then os.replace (llamalogue.paths.atomic_write)."""
  paths.atomic_write(path, data)


def write_json(path: pathlib.Path, obj) -> None:
  atomic_write(path, json.dumps(obj, indent=1, sort_keys=False, default=_json_default) + "\n")


def write_jsonl(path: pathlib.Path, rows) -> None:
  atomic_write(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in rows))


def _json_default(x):
  if hasattr(x, "item"):
    return x.item()
  if hasattr(x, "tolist"):
    return x.tolist()
  raise TypeError(type(x))


def fmt(x, digits: int = 1) -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "–"
  return f"{x:.{digits}f}"


def fmt_ci(ci, digits: int = 1, sign: bool = False) -> str:
  """`[56.3, 58.5]` (values already in the unit shown); `–` for no interval."""
  if not ci or any(x is None or math.isnan(x) for x in ci):
    return "–"
  f = f"{{:+.{digits}f}}" if sign else f"{{:.{digits}f}}"
  return f"[{f.format(ci[0])}, {f.format(ci[1])}]"


def fmt_p(p) -> str:
  """A p-value: three decimals, or two significant digits below 0.001."""
  if p is None:
    return "–"
  return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def effect_cell(e: dict | None, fallback: float | None = None, digits: int = 1) -> str:
  """`+2.0 [+0.9, +3.1] p 0.001 ✱` from a paired test (stats.paired_effect, proportions); ✱ marks an
  interval that excludes 0. Without a test, the bare difference `fallback` (points)."""
  if not e or e.get("difference") is None:
    return "–" if fallback is None else f"{fallback:+.{digits}f}"
  ci = [100 * x for x in e["interval"]]
  return (f"{100 * e['difference']:+.{digits}f} {fmt_ci(ci, digits, True)} p {fmt_p(e['p_mcnemar'])}"
          + (" ✱" if e["excludes_zero"] else ""))


EFFECT_NOTE = ("Δ: model − base on the same items, with the paired-bootstrap 95% interval of the difference "
               "(items resampled within sub-tasks, or across them when one has fewer than "
               f"{stats.MIN_STRATUM}) and the exact McNemar p-value; ✱: the interval excludes 0.")


def task_value(res: dict) -> float | None:
  """The headline number of a task result: accuracy in %, rho, or the reading score."""
  if res.get("score") is None:
    return None
  return 100 * res["score"] if res["kind"] == "choice" else res["score"]


def task_interval(res: dict) -> list[float] | None:
  """The 95% interval of a task result in the unit of task_value (None if it has none)."""
  ci = res.get("interval")
  if not ci:
    return None
  return [100 * x for x in ci] if res["kind"] == "choice" else list(ci)


def interval_methods(results: dict) -> list[str]:
  """`task, task: method` lines, one per distinct interval method of a results.json."""
  by: dict[str, list[str]] = {}
  for name, res in results["tasks"].items():
    by.setdefault(res.get("interval_method") or "no interval recorded", []).append(name)
  return [f"{', '.join(names)}: {method}" for method, names in by.items()]


def results_markdown(results: dict) -> str:
  """results.md: one row per benchmark with its items and 95% interval, beside the published numbers
  (with theirs), then sub-tasks."""
  s = results["scoring"]
  ref_model = results.get("reference_model", "llamalogue")
  lines = [f"# Evaluation of `{results['checkpoint']}`", "",
           f"- model: `{results['init_from']}`",
           f"- convention: **{s['convention']}** (sum of log-probabilities, bow_correction={s['bow_correction']}, "
           f"first token unscored, BOS added: {s['bos_added']}; pair correct iff strictly higher)",
           f"- max items per task: {results['max_items_per_task'] or 'all'}; lower-case: {results['lowercase']}",
           f"- wall time: {results['seconds']:.0f} s",
           "- 95% intervals: " + "; ".join(interval_methods(results)),
           f"- published: {STUDY_ITEMS_NOTE}", "",
           "| task | benchmark | items | ours | 95% interval | published | published 95% interval | published by |",
           "|---|---|---|---|---|---|---|---|"]
  for name, res in results["tasks"].items():
    ref, by = reference_for(name, ref_model)
    metric = {"choice": "%", "correlation": "ρ", "regression": "ΔR² %"}[res["kind"]]
    digits = 1 if res["kind"] != "correlation" else 3
    lines.append(f"| {name} | {res['benchmark']} ({metric}) | {res.get('items', res.get('rows'))} | "
                 f"{fmt(task_value(res), digits)} | {fmt_ci(task_interval(res), digits)} | {fmt(ref)} | "
                 f"{fmt_ci(published_interval(name, ref))} | {by} |")
  for name in results.get("skipped", {}):
    ref, by = reference_for(name, ref_model)
    lines.append(f"| {name} | not run (see below) | – | – | – | {fmt(ref)} | {fmt_ci(published_interval(name, ref))} "
                 f"| {by} |")
  if results.get("skipped"):
    lines += ["", "Not run: " + "; ".join(f"{k}: {v}" for k, v in results["skipped"].items())]
  for name, res in results["tasks"].items():
    subs = res.get("subtasks", {})
    if len(subs) <= 1:
      continue
    ref_subs = reference_zorro_paradigms() if name == "zorro" and ref_model == "llamalogue" else {}
    head = "| sub-task | items | ours | 95% interval (Wilson) |"
    lines += ["", f"## {res['benchmark']} per sub-task", "",
              head + (" published |" if ref_subs else ""), "|---|---|---|---|" + ("---|" if ref_subs else "")]
    for sub, v in subs.items():
      if isinstance(v, dict):
        val, n = fmt(100 * v["accuracy"]), v["items"]
        ci = fmt_ci([100 * x for x in v["interval"]]) if v.get("interval") else "–"
      else:
        val, n, ci = fmt(v, 2), "", "–"
      row = f"| {sub} | {n} | {val} | {ci} |"
      lines.append(row + (f" {fmt(ref_subs.get(sub))} |" if ref_subs else ""))
  return "\n".join(lines) + "\n"


TRAJ_TASKS = ("dialogue_word", "dialogue_token", "zorro")


def _digits(task: str) -> int:
  return 3 if task == "wug" else 1


def value_cell(value, interval, digits: int = 1) -> str:
  """`57.4 [56.3, 58.5]`, or the value alone without an interval."""
  if value is None:
    return "–"
  return fmt(value, digits) + (f" {fmt_ci(interval, digits)}" if interval else "")


def trajectory_markdown(rows: list[dict], task_names: list[str], compare: list[dict] = (),
                        effects: dict[str, dict] | None = None) -> str:
  """Accuracy per milestone (95% interval, items in the header) beside the study's trajectory (its
  intervals from its item counts); fine-tuned runs with Δ to the base and its paired test
  (`effects`: checkpoint -> task -> stats.paired_effect)."""
  ref = reference_trajectory()
  effects = effects or {}
  items = {t: r.get("items", {}).get(t) for r in [*rows, *compare][:1] for t in task_names}

  def name(t):
    return f"{t} (n {items[t]:,})" if items.get(t) else t
  head = ["checkpoint", "words"]
  for t in task_names:
    head += [name(t)] + ([f"study (n {STUDY_ITEMS[t]:,})" if t in STUDY_ITEMS else "study"]
                         if any(t in r for r in ref.values()) else [])
  lines = ["# Learning trajectory", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [r["checkpoint"], f"{r['words']:,}" if r.get("words") else "–"]
    for t in task_names:
      cells.append(value_cell(r["values"].get(t), r.get("intervals", {}).get(t), _digits(t)))
      if any(t in x for x in ref.values()):
        v = ref.get(r.get("words") or -1, {}).get(t)
        cells.append(value_cell(v, published_interval(t, v)))
    lines.append("| " + " | ".join(cells) + " |")
  if compare:
    base = rows[-1] if rows else None
    lines += ["", "## Fine-tuned runs against their base", "",
              "| run | " + " | ".join(f"{name(t)} | Δ" for t in task_names) + " |",
              "|" + "---|" * (1 + 2 * len(task_names))]
    for c in [base, *compare] if base else compare:
      cells = [c["checkpoint"]]
      for t in task_names:
        v = c["values"].get(t)
        b = base["values"].get(t) if base else None
        d = None if v is None or b is None or c is base else v - b
        e = None if c is base else effects.get(c["checkpoint"], {}).get(t)
        cells += [value_cell(v, c.get("intervals", {}).get(t), _digits(t)),
                  "–" if d is None and not e else effect_cell(e, d, _digits(t))]
      lines.append("| " + " | ".join(cells) + " |")
    lines += ["", EFFECT_NOTE]
  methods = sorted({m for r in [*rows, *compare] for m in r.get("interval_methods", {}).values() if m})
  shows_study = any(t in x for t in task_names for x in ref.values())
  if methods:
    lines += ["", "95% intervals: " + "; ".join(methods) + "." + (f" Study: {STUDY_ITEMS_NOTE}." if shows_study else "")]
  return "\n".join(lines) + "\n"


def plot_trajectory(rows: list[dict], task_names: list[str], out: pathlib.Path) -> None:
  """Accuracy against words seen (log x), ours solid, the study's dashed, like the study's curves; shaded
  bands are the 95% intervals (ours from each row's `intervals`, the study's from its item counts)."""
  import matplotlib  # matplotlib: only when a figure is drawn
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  ref = reference_trajectory()
  names = [t for t in task_names if any(t in r["values"] for r in rows)] or list(task_names)
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for i, t in enumerate(names):
    color = f"C{i}"
    pts = [(r["words"], r["values"][t], r.get("intervals", {}).get(t)) for r in rows
           if r.get("words") and r["values"].get(t) is not None]
    if pts:
      ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=f"{t} (ours)")
      band = [p for p in pts if p[2]]
      if band:
        ax.fill_between([p[0] for p in band], [p[2][0] for p in band], [p[2][1] for p in band], color=color,
                        alpha=0.2, lw=0)
    rpts = [(w, v[t], published_interval(t, v[t])) for w, v in ref.items() if t in v]
    if rpts:
      ax.plot([p[0] for p in rpts], [p[1] for p in rpts], "s--", color=color, alpha=0.6, label=f"{t} (study)")
      band = [p for p in rpts if p[2]]
      if band:
        ax.fill_between([p[0] for p in band], [p[2][0] for p in band], [p[2][1] for p in band], color=color,
                        alpha=0.1, lw=0, hatch="//")
  ax.set_xscale("log")
  ax.set_xlabel("words seen")
  ax.set_ylabel("accuracy (%), 95% interval shaded")
  ax.axhline(50, color="grey", lw=0.8, ls=":")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  tmp = out.with_name(f".{out.name}.tmp.png")
  fig.savefig(tmp, dpi=120)
  plt.close(fig)
  os.replace(tmp, out)
