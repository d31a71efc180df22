"""The study's published numbers, Markdown tables and learning-curve plots."""

import csv
import json
import math
import os
import pathlib
import re

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


def task_value(res: dict) -> float | None:
  """The headline number of a task result: accuracy in %, rho, or the reading score."""
  if res.get("score") is None:
    return None
  return 100 * res["score"] if res["kind"] == "choice" else res["score"]


def results_markdown(results: dict) -> str:
  """results.md: one row per benchmark beside the published numbers, then sub-tasks."""
  s = results["scoring"]
  ref_model = results.get("reference_model", "llamalogue")
  lines = [f"# Evaluation of `{results['checkpoint']}`", "",
           f"- model: `{results['init_from']}`",
           f"- convention: **{s['convention']}** (sum of log-probabilities, bow_correction={s['bow_correction']}, "
           f"first token unscored, BOS added: {s['bos_added']}; pair correct iff strictly higher)",
           f"- max items per task: {results['max_items_per_task'] or 'all'}; lower-case: {results['lowercase']}",
           f"- wall time: {results['seconds']:.0f} s", "",
           f"| task | benchmark | items | ours | published | published by |",
           "|---|---|---|---|---|---|"]
  for name, res in results["tasks"].items():
    ref, by = reference_for(name, ref_model)
    metric = {"choice": "%", "correlation": "ρ", "regression": "ΔR² %"}[res["kind"]]
    lines.append(f"| {name} | {res['benchmark']} ({metric}) | {res.get('items', res.get('rows'))} | "
                 f"{fmt(task_value(res), 1 if res['kind'] != 'correlation' else 3)} | {fmt(ref)} | {by} |")
  for name in results.get("skipped", {}):
    ref, by = reference_for(name, ref_model)
    lines.append(f"| {name} | not run (see below) | – | – | {fmt(ref)} | {by} |")
  if results.get("skipped"):
    lines += ["", "Not run: " + "; ".join(f"{k}: {v}" for k, v in results["skipped"].items())]
  for name, res in results["tasks"].items():
    subs = res.get("subtasks", {})
    if len(subs) <= 1:
      continue
    ref_subs = reference_zorro_paradigms() if name == "zorro" and ref_model == "llamalogue" else {}
    lines += ["", f"## {res['benchmark']} per sub-task", "",
              "| sub-task | items | ours | published |" if ref_subs else "| sub-task | items | ours |",
              "|---|---|---|---|" if ref_subs else "|---|---|---|"]
    for sub, v in subs.items():
      val = fmt(100 * v["accuracy"]) if isinstance(v, dict) else fmt(v, 2)
      n = v["items"] if isinstance(v, dict) else ""
      row = f"| {sub} | {n} | {val} |"
      lines.append(row + (f" {fmt(ref_subs.get(sub))} |" if ref_subs else ""))
  return "\n".join(lines) + "\n"


TRAJ_TASKS = ("dialogue_word", "dialogue_token", "zorro")


def trajectory_markdown(rows: list[dict], task_names: list[str], compare: list[dict] = ()) -> str:
  """Accuracy per milestone beside the study's trajectory; fine-tuned runs with Δ to the base."""
  ref = reference_trajectory()
  head = ["checkpoint", "words"]
  for t in task_names:
    head += [t] + (["study"] if any(t in r for r in ref.values()) else [])
  lines = ["# Learning trajectory", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [r["checkpoint"], f"{r['words']:,}" if r.get("words") else "–"]
    for t in task_names:
      cells.append(fmt(r["values"].get(t), 1 if t != "wug" else 3))
      if any(t in x for x in ref.values()):
        cells.append(fmt(ref.get(r.get("words") or -1, {}).get(t)))
    lines.append("| " + " | ".join(cells) + " |")
  if compare:
    base = rows[-1] if rows else None
    lines += ["", "## Fine-tuned runs against their base", "",
              "| run | " + " | ".join(f"{t} | Δ" for t in task_names) + " |",
              "|" + "---|" * (1 + 2 * len(task_names))]
    for c in [base, *compare] if base else compare:
      cells = [c["checkpoint"]]
      for t in task_names:
        v = c["values"].get(t)
        b = base["values"].get(t) if base else None
        d = None if v is None or b is None or c is base else v - b
        cells += [fmt(v, 1 if t != "wug" else 3), fmt(d, 1 if t != "wug" else 3)]
      lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot_trajectory(rows: list[dict], task_names: list[str], out: pathlib.Path) -> None:
  """Accuracy against words seen (log x), ours solid, the study's dashed, like the study's curves."""
  import matplotlib  # matplotlib: only when a figure is drawn
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  ref = reference_trajectory()
  names = [t for t in task_names if any(t in r["values"] for r in rows)] or list(task_names)
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for i, t in enumerate(names):
    color = f"C{i}"
    pts = [(r["words"], r["values"][t]) for r in rows if r.get("words") and r["values"].get(t) is not None]
    if pts:
      ax.plot(*zip(*pts), "o-", color=color, label=f"{t} (ours)")
    rpts = [(w, v[t]) for w, v in ref.items() if t in v]
    if rpts:
      ax.plot(*zip(*rpts), "s--", color=color, alpha=0.6, label=f"{t} (study)")
  ax.set_xscale("log")
  ax.set_xlabel("words seen")
  ax.set_ylabel("accuracy (%)")
  ax.axhline(50, color="grey", lw=0.8, ls=":")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  tmp = out.with_name(f".{out.name}.tmp.png")
  fig.savefig(tmp, dpi=120)
  plt.close(fig)
  os.replace(tmp, out)
