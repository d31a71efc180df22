"""`evaluate` mode: one checkpoint, or every milestone of a pre-training run.

  python main.py --config=configs/evaluate.py --config.init_from=X --workdir=DIR

writes DIR/eval/<checkpoint-name>/{results.json, predictions.jsonl, results.md};
with `config.trajectory=True` (X = a pre-training workdir) one such folder per
milestone checkpoint plus DIR/eval/<run-name>/trajectory.{json,md,png}. Every accuracy
carries its item count and 95% interval, every comparison (`config.compare_to`) a paired
test per task (evaluation/uncertainty.py).
"""

import json
import pathlib
import shutil
import time

import jax
import ml_collections
import numpy as np

from evaluation import reading as reading_lib
from evaluation import report
from evaluation import resume
from evaluation import scoring
from evaluation import tasks as tasks_lib
from evaluation import uncertainty
from llamalogue import distributed, faults, hf, paths, progress
from llamalogue.checkpoint import checkpoint_name, find_milestones, run_root
from llamalogue.errors import ConfigError

SETTINGS_KEYS = ("convention", "tasks", "max_items_per_task", "lowercase", "heldout_pairs", "reference_model")


def default_config() -> ml_collections.ConfigDict:
  """The `evaluate` mode's settings (configs/evaluate.py; a fine-tuning run's base-vs-result evaluation)."""
  c = ml_collections.ConfigDict()
  c.mode = "evaluate"
  c.init_from = ""
  c.tokenizer = ""               # "": the tokenizer saved beside the model
  c.dtype = "float32"
  # "all" or comma-separated: dialogue_word, dialogue_token, dialogue_heldout, zorro, blimp,
  # blimp_filtered, supplement, ewok, entity_tracking, wug, reading, lexical_decision.
  c.tasks = "all"
  c.max_items_per_task = 0       # 0 = every item; else spread over sub-tasks (reading: >= 200 rows)
  c.convention = "study"         # study (minicons sum + BOW correction) | babylm2025 (plain span sum)
  c.lowercase = "auto"           # auto: lower-case BLiMP and Zorro under `study`, as its scripts did | yes | no
  c.heldout_pairs = ""           # JSONL of {prompt, chosen, rejected} for task dialogue_heldout (`data:` allowed)
  c.reference_model = "llamalogue"  # the study's row (STUDY.md §7) to print beside ours
  c.trajectory = False
  c.compare_to = ""
  c.reuse = True                 # skip a checkpoint whose results.json has the same settings
  c.batch_tokens = 2048          # padded tokens per forward pass (2 CPU cores: 1-4k is best)
  c.pad_multiple = 8             # pad lengths to a multiple of this (one compile per length bucket)
  c.min_shared_prefix = 48       # candidates sharing this many prefix tokens run the prefix once
  return c


# ---------------------------------------------------------------------------- settings

def settings_from(config) -> dict:
  s = {k: config.get(k) for k in SETTINGS_KEYS}
  s["tasks"] = tasks_lib.parse_task_names(config.get("tasks", "all"), config.get("heldout_pairs", ""))
  if s["convention"] not in scoring.CONVENTIONS:
    raise ConfigError(f"config.convention: {s['convention']!r} is not one of {scoring.CONVENTIONS}")
  if not isinstance(s["max_items_per_task"], int) or s["max_items_per_task"] < 0:
    raise ConfigError(f"config.max_items_per_task: expected an integer >= 0, got {s['max_items_per_task']!r}")
  tasks_lib.lowercase_for("zorro", s["lowercase"], s["convention"])
  if s["reference_model"] not in report.STUDY_TABLE:
    raise ConfigError(f"config.reference_model: {s['reference_model']!r}; choose one of {list(report.STUDY_TABLE)}")
  return s


def skipped_tasks(settings: dict) -> dict[str, str]:
  """Tasks of the study that "all" could not run, and why."""
  if "lexical_decision" in settings["tasks"]:
    return {}
  return {"lexical_decision": f"the study's lexical-decision data is not in {tasks_lib.paths.data_root()} "
                              f"({tasks_lib.SOURCES['lexical_decision']}); published numbers only"}


def load_tasks(settings: dict) -> list[tasks_lib.Task]:
  """Every requested item task, subsampled; fails before any model is loaded if a file is missing."""
  out = []
  for name in settings["tasks"]:
    if name == "reading":
      reading_lib.load_frame(1)
      continue
    task = tasks_lib.load(name, settings["convention"], settings["lowercase"], settings["heldout_pairs"] or "")
    task.items = tasks_lib.subsample(task.items, settings["max_items_per_task"])
    out.append(task)
  return out


# ---------------------------------------------------------------------------- evaluation

def _bar(total: int, desc: str):
  return progress.bar(total, f"{desc:>16}", "text")


def evaluate_task(scorer: scoring.Scorer, task: tasks_lib.Task) -> tuple[dict, list[dict]]:
  """Scores every candidate once; per-sub-task accuracy (or rho) and per-item predictions.

  With several processes each scores its share of the items (`distributed.my_rows`) and the scores are
  gathered, so every process holds the whole task's results."""
  groups = [list(zip(it.texts, it.spans)) for it in task.items]
  distinct = len(set(k for g in groups for k in g))
  mine = [groups[i] for i in distributed.my_rows(len(groups))]
  start = time.time()
  with _bar(len(set(k for g in mine for k in g)), task.name) as bar:
    per_item = scorer.score_groups(mine, bar.update)
  if jax.process_count() > 1:
    per_item = [np.asarray(s, np.float64) for part in distributed.allgather_json(
        f"evaluate {task.name}", [s.tolist() for s in per_item]) for s in part]
  seconds = time.time() - start
  result = {"name": task.name, "benchmark": task.benchmark, "kind": task.kind, "source": task.source,
            "items": len(task.items), "texts_scored": distinct, "seconds": round(seconds, 2),
            "notes": task.notes}
  preds = []
  if task.kind == "correlation":
    from scipy.stats import spearmanr
    probs = scoring.softmax_first(np.stack(per_item))
    ratios = np.array([it.ratio for it in task.items])
    rho = float(spearmanr(probs, ratios)[0]) if len(ratios) > 1 else float("nan")
    result.update(subtasks={task.items[0].subtask: rho} if task.items else {}, score=rho,
                  metric="Spearman rho of P(first) with the human ratio")
    for it, sc, p in zip(task.items, per_item, probs):
      preds.append({"task": task.name, "uid": it.uid, "subtask": it.subtask, "scores": sc.tolist(),
                    "prob_first": float(p), "ratio": it.ratio})
    return uncertainty.attach(result, preds), preds
  subs: dict[str, list[bool]] = {}
  for it, sc in zip(task.items, per_item):
    ok = bool(scoring.choice_correct(sc[None, :], it.label)[0])
    subs.setdefault(it.subtask, []).append(ok)
    preds.append({"task": task.name, "uid": it.uid, "subtask": it.subtask, "scores": sc.tolist(),
                  "label": it.label, "correct": ok})
  result["subtasks"] = {k: {"accuracy": float(np.mean(v)), "items": len(v)} for k, v in subs.items()}
  result["score"] = float(np.mean([v["accuracy"] for v in result["subtasks"].values()])) if subs else None
  result["accuracy_over_items"] = float(np.mean([p["correct"] for p in preds])) if preds else None
  result["metric"] = "accuracy, unweighted mean over sub-tasks"
  return uncertainty.attach(result, preds), preds


def evaluate_reading(scorer: scoring.Scorer, max_rows: int) -> tuple[dict, list[dict]]:
  """The reading task (a regression over all its rows): process 0 computes it, every process gets it."""
  if jax.process_count() > 1:
    return tuple(distributed.broadcast_json("evaluate reading", _reading(scorer, max_rows) if distributed.is_lead()
                                            else None))
  return _reading(scorer, max_rows)


def _reading(scorer: scoring.Scorer, max_rows: int) -> tuple[dict, list[dict]]:
  bar = _bar(0, "reading")
  def progress(n):
    if bar.total == 0:
      bar.total = None
    bar.update(n)
  try:
    res = reading_lib.evaluate(scorer, max_rows, progress)
  finally:
    bar.close()
  preds = [{"task": "reading", **p} for p in res.pop("predictions")]
  return uncertainty.attach(res, preds), preds


def load_scorer(init_from: str, config) -> tuple[scoring.Scorer, dict]:
  model, tokenizer = hf.load(init_from, config.get("dtype", "float32"))
  if config.get("tokenizer"):
    tokenizer = hf.load_tokenizer(tokenizer_path(config.tokenizer), model.cfg.vocab_size)
  if tokenizer is None:
    raise ConfigError(f"{init_from}: no tokenizer beside the checkpoint; set config.tokenizer to its directory")
  scorer = scoring.Scorer.from_model(model, tokenizer, convention=config.convention,
                                     batch_tokens=config.get("batch_tokens", 2048),
                                     pad_multiple=config.get("pad_multiple", 8),
                                     min_shared=config.get("min_shared_prefix", 48))
  info = {"vocab_size": model.cfg.vocab_size, "layers": model.cfg.num_layers, "hidden": model.cfg.hidden_size,
          "dtype": model.cfg.dtype, "tokenizer_size": len(tokenizer)}
  return scorer, info


def tokenizer_path(spec: str) -> str:
  return str(paths.resolve(spec, "config.tokenizer"))


def evaluate_checkpoint(init_from: str, out_dir: pathlib.Path, config, settings: dict,
                        words: int | None = None) -> dict:
  """Evaluates one model and writes results.json, predictions.jsonl and results.md in `out_dir`."""
  out_dir = pathlib.Path(out_dir)
  previous = out_dir / "results.json"
  if config.get("reuse", True) and previous.exists():
    old = json.loads(previous.read_text())
    if old.get("settings") == settings and old.get("init_from") == str(init_from):
      print(f"evaluate: {out_dir.name}: reusing {previous} (same settings)")
      return _with_intervals(old, out_dir)
  task_list = load_tasks(settings)
  start = time.time()
  scorer, model_info = load_scorer(str(init_from), config)
  results = {"checkpoint": out_dir.name, "init_from": str(init_from), "words": words,
             "settings": settings, "scoring": scorer.describe(), "model": model_info,
             "max_items_per_task": settings["max_items_per_task"], "lowercase": settings["lowercase"],
             "reference_model": settings["reference_model"], "tasks": {}, "skipped": skipped_tasks(settings)}
  predictions = []
  done = resume.TaskResults(out_dir, init_from, settings)  # finished tasks of a stopped evaluation
  try:
    for task in task_list:
      res, preds = done.get(task.name) or done.put(task.name, *evaluate_task(scorer, task))
      results["tasks"][task.name] = res
      predictions += preds
    if "reading" in settings["tasks"]:
      res, preds = done.get("reading") or done.put("reading", *evaluate_reading(scorer, settings["max_items_per_task"]))
      results["tasks"] = {**results["tasks"], "reading": res}
      predictions += preds
  except faults.Preempted as e:  # SIGTERM/SIGINT: the finished tasks are kept; a rerun resumes at this one
    raise e.within(f"{out_dir}: {done.count()} finished tasks kept in {done.dir}") from None
  results["tasks"] = {n: results["tasks"][n] for n in settings["tasks"] if n in results["tasks"]}
  results["benchmarks"] = {r["benchmark"]: r["score"] for r in results["tasks"].values()}
  results["seconds"] = time.time() - start
  if distributed.is_lead():  # one writer; the others wait, then read what it wrote when they reuse it
    report.write_jsonl(out_dir / "predictions.jsonl", predictions)
    report.atomic_write(out_dir / "results.md", report.results_markdown(results))
    report.write_json(out_dir / "results.json", results)
    done.clear()
  distributed.barrier(f"evaluate {out_dir.name}")
  print(f"evaluate: {out_dir.name}: " + ", ".join(
      f"{n} {report.fmt(report.task_value(r), 1 if r['kind'] != 'correlation' else 3)}"
      for n, r in results["tasks"].items()) + f" ({results['seconds']:.0f} s) -> {out_dir}")
  return results


def _with_intervals(results: dict, out_dir: pathlib.Path) -> dict:
  """Results written before intervals existed get them from their predictions.jsonl (rewritten in place)."""
  if not uncertainty.needs_intervals(results):
    return results
  preds = uncertainty.read_predictions(out_dir / "predictions.jsonl")
  if preds is None:
    return results
  uncertainty.attach_all(results, preds)
  report.atomic_write(out_dir / "results.md", report.results_markdown(results))
  report.write_json(out_dir / "results.json", results)
  return results


def summary_row(results: dict) -> dict:
  """A checkpoint's headline numbers with their item counts and 95% intervals (trajectory / comparison rows)."""
  tasks = results["tasks"].items()
  return {"checkpoint": results["checkpoint"], "words": results.get("words"),
          "values": {n: report.task_value(r) for n, r in tasks},
          "intervals": {n: report.task_interval(r) for n, r in tasks if report.task_interval(r)},
          "items": {n: r.get("items", r.get("rows")) for n, r in tasks},
          "interval_methods": {n: r.get("interval_method") for n, r in tasks}}


def paired_effects(model_dir: pathlib.Path, base_dir: pathlib.Path, tasks) -> dict[str, dict]:
  """task -> paired test of the model in `model_dir` against the base in `base_dir` (their predictions)."""
  model, base = (uncertainty.read_predictions(d / "predictions.jsonl") for d in (model_dir, base_dir))
  if model is None or base is None:
    return {}
  return uncertainty.effects([model], base, tasks)


# ---------------------------------------------------------------------------- modes

def compare_list(config) -> list[str]:
  return [c.strip() for c in (config.get("compare_to") or "").split(",") if c.strip()]


def run(config, workdir: str) -> None:
  """Entry point of `python main.py --config=configs/evaluate.py ...`."""
  if not config.get("init_from"):
    raise ConfigError("config.init_from: give a checkpoint, a HF model directory, or (trajectory) a run workdir")
  settings = settings_from(config)
  eval_root = pathlib.Path(workdir) / "eval"
  compare = [evaluate_checkpoint(c, eval_root / checkpoint_name(c), config, settings)
             for c in compare_list(config)]
  if not config.get("trajectory", False):
    base_dir = eval_root / checkpoint_name(config.init_from)
    base = evaluate_checkpoint(config.init_from, base_dir, config, settings)
    if compare and distributed.is_lead():
      effects = {c["checkpoint"]: paired_effects(eval_root / c["checkpoint"], base_dir, settings["tasks"])
                 for c in compare}
      md = report.trajectory_markdown([summary_row(base)], settings["tasks"], [summary_row(c) for c in compare],
                                      effects)
      report.atomic_write(eval_root / "comparison.md", md.replace("# Learning trajectory", "# Comparison"))
      report.write_json(eval_root / "comparison.json", {"settings": settings, "base": summary_row(base),
                                                        "compare": [summary_row(c) for c in compare],
                                                        "effects": effects})
    return
  run_dir = run_root(pathlib.Path(config.init_from))
  out = eval_root / run_dir.name
  rows, last = [], None
  for words, ckpt in find_milestones(str(run_dir)):
    res = evaluate_checkpoint(str(ckpt), out / ckpt.name, config, settings, words)
    rows.append(summary_row(res))
    last = out / ckpt.name
  compare_rows = [summary_row(c) for c in compare]
  if not distributed.is_lead():
    return
  effects = {c["checkpoint"]: paired_effects(eval_root / c["checkpoint"], last, settings["tasks"])
             for c in compare} if last else {}
  report.write_json(out / "trajectory.json", {"settings": settings, "rows": rows, "compare": compare_rows,
                                              "effects": effects, "reference": report.reference_trajectory()})
  report.atomic_write(out / "trajectory.md",
                      report.trajectory_markdown(rows, settings["tasks"], compare_rows, effects))
  plot_tasks = [t for t in report.TRAJ_TASKS if t in settings["tasks"]] or settings["tasks"][:3]
  report.plot_trajectory(rows, plot_tasks, out / "trajectory.png")
  print(f"evaluate: trajectory of {len(rows)} checkpoints -> {out / 'trajectory.md'}")


def evaluate_against_base(base: str, run_dir, eval_cfg, heldout_pairs: str = "") -> dict:
  """A fine-tuning run's end: evaluate the base and the run (`eval_cfg`: tasks, max_items_per_task,
  convention) and write RUN/eval/comparison.md; `heldout_pairs` adds our held-out dialogue pairs."""
  ec = default_config()
  ec.init_from = base
  ec.compare_to = str(pathlib.Path(run_dir).resolve())
  tasks = eval_cfg.tasks
  if heldout_pairs:
    ec.heldout_pairs = heldout_pairs
    tasks = tasks if "dialogue_heldout" in tasks else tasks + ",dialogue_heldout"
  ec.tasks = tasks
  ec.max_items_per_task = eval_cfg.max_items_per_task
  ec.convention = eval_cfg.convention
  if distributed.is_lead():
    _reuse_base_results(base, pathlib.Path(run_dir) / "eval" / checkpoint_name(base), settings_from(ec))
  distributed.barrier("evaluate: reuse base results")
  run(ec, str(run_dir))
  return {"comparison": str(pathlib.Path(run_dir) / "eval" / "comparison.md"), "tasks": tasks}


def _reuse_base_results(base: str, out_dir: pathlib.Path, settings: dict) -> None:
  """Copies the base's results from an earlier run of the same evaluation (another fine-tuning run of the
  same base, or the base's own run dir) into `out_dir`, so that evaluate_checkpoint reuses them."""
  if (out_dir / "results.json").exists() or base.startswith("hf:"):
    return
  root = run_root(pathlib.Path(base))
  candidates = [root / "eval" / checkpoint_name(base)]
  candidates += [d / "eval" / checkpoint_name(base) for d in root.parent.iterdir() if d.is_dir()] \
      if root.parent.exists() else []
  for d in candidates:
    try:
      old = json.loads((d / "results.json").read_text())
    except (OSError, ValueError):
      continue
    if old.get("settings") == settings and old.get("init_from") == str(base):
      shutil.copytree(d, out_dir, dirs_exist_ok=True)
      return
