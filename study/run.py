"""The whole study from one command: the `study` mode of configs/study.py.

  python main.py --config=configs/study.py --workdir=DIR

Each stage runs in DIR/<stage> exactly as `python main.py --config=configs/<its config>.py`
would (llamalogue/modes.py), with the settings of its own config file, held in the study
config under the stage's name (`--config.dpo_natural.dpo.beta=0.2` overrides one). This
module only wires the stages together (the prepared data, the base every fine-tuning starts
from, the teacher replies, the synthetic pairs) and keeps the books:

* A run stage (data, pre-training, teacher, DPO, PPO) records DIR/<stage>/STAGE.json with a
  fingerprint of its wired settings and those of the stages it reads. Finished with the
  same fingerprint: skipped. Started with the same fingerprint: run again, which resumes
  from its last checkpoint (every mode resumes). Another fingerprint: a one-line error
  naming the setting that changed; nothing is deleted.
* An evaluation stage (trajectory, evaluate) always runs: evaluation reuses each model's
  results written with the same settings, and results older than the model they score
  are dropped first, so a retrained model is scored again.
* The report (study/report.py) is rebuilt at the end of every invocation from what exists.
* `config.seeds=N > 1`: every fine-tuning stage (dpo_*, ppo_*; not pre-training, not the sweep)
  runs once per seed k = 0..N-1 as the stage `<stage>/seed_<k>` in DIR/<stage>/seed_<k>, with
  that stage's config `seed` + k (DPO: data order; PPO: prompt order, sampling, value-head
  init and dropout), each with its own STAGE.json: fingerprinted, skipped and resumed alone.
  `config.stages=dpo_natural` selects all its seeds, `dpo_natural/seed_1` one. N = 1 is the
  layout without seeds (DIR/<stage>).

Imports run one way: study/run.py -> study/report.py -> study/books.py (the STAGE.json books).
"""

import dataclasses
import hashlib
import json
import pathlib
import shutil
import time
from typing import Callable

import ml_collections

from llamalogue import distributed, faults
from llamalogue.errors import ConfigError, LlamalogueError
from rl import rewards
from study import books
from study import report
from study.books import STAGE_FILE, is_done, read_record, write_record  # noqa: F401  (the books' API here too)

PPO_REWARDS = rewards.NAMES             # a PPO stage ppo_<reward> each (configs/ppo_<reward>.py)
REPLY_REWARDS = rewards.READS_REPLIES   # rewards that read the teacher's replies


@dataclasses.dataclass
class Stage:
  name: str
  needs: tuple[str, ...]                        # stages whose outputs this one reads
  build: Callable[[], ml_collections.ConfigDict]  # its wired config (called when it runs: reads earlier outputs)
  kind: str = "run"                             # run: fingerprinted, resumable | eval: always runs, reuses results
  models: Callable[[], list[str]] | None = None  # eval: the model dirs it scores (staleness check)


def _copy(section) -> ml_collections.ConfigDict:
  c = section.copy_and_resolve_references()
  c.unlock()
  return c


def _split(spec: str) -> list[str]:
  return [s.strip() for s in str(spec).split(",") if s.strip()]


def _floats(spec: str, key: str) -> list[float]:
  try:
    return [float(x) for x in _split(spec)]
  except ValueError:
    raise ConfigError(f"config.{key}: {spec!r} is not a comma-separated list of numbers") from None


def sweep_name(reward: str, lr: float, kl: float) -> str:
  return f"sweep_{reward}_lr{lr:g}_kl{kl:g}"


# ---------------------------------------------------------------------------- the plan

def plan(config, root: pathlib.Path) -> dict[str, Stage]:
  """Every stage of the study in order, each with its wired config (built lazily)."""
  d = lambda name: str(root / name)  # noqa: E731
  # `pretrain.data.prepared` (a data dir made earlier, maybe elsewhere) is used as it is; else DIR/prepare/data
  data_dir = config.pretrain.data.prepared or str(root / "prepare" / "data")
  stages: dict[str, Stage] = {}

  def add(stage: Stage):
    if config.get("seeds", 1) == 1 or not stage.name.startswith(books.SEEDED):
      stages[stage.name] = stage
      return
    for k in range(config.seeds):
      name = books.seed_stage(stage.name, k)
      stages[name] = dataclasses.replace(stage, name=name, build=lambda b=stage.build, k=k: with_seed(b(), k))

  def prepare_cfg(**data_overrides):
    c = ml_collections.ConfigDict({"mode": "prepare", "seed": config.pretrain.seed})
    c.data = _copy(config.pretrain.data)
    c.data.update(data_overrides)
    return c

  def pretrain_cfg(prepared: str, **data_overrides):
    c = _copy(config.pretrain)
    c.data.update(data_overrides)
    c.data.prepared = prepared
    return c

  add(Stage("prepare", (), lambda: prepare_cfg()))
  add(Stage("pretrain", ("prepare",), lambda: pretrain_cfg(data_dir)))

  def trajectory_cfg():
    c = _copy(config.trajectory)
    c.init_from, c.trajectory = d("pretrain"), True
    return c
  add(Stage("trajectory", ("pretrain",), trajectory_cfg, kind="eval", models=lambda: [d("pretrain")]))

  if config.synthetic == "teacher":
    add(Stage("synthetic_pairs", (), lambda: _copy(config.synthetic_pairs)))

  def dpo_cfg(name):
    c = _copy(config[name])
    c.init_from, c.pairs_data_dir, c.eval.tasks = d("pretrain"), data_dir, ""
    if name == "dpo_synthetic" and config.synthetic == "teacher":
      c.pairs = str(synthetic_pairs_file(root / "synthetic_pairs"))
    return c
  add(Stage("dpo_natural", ("pretrain",), lambda: dpo_cfg("dpo_natural")))
  add(Stage("dpo_synthetic", ("pretrain",) + (("synthetic_pairs",) if config.synthetic == "teacher" else ()),
            lambda: dpo_cfg("dpo_synthetic")))

  prompts = config.ppo_prompts or data_dir
  ppo_sections = [f"ppo_{r}" for r in PPO_REWARDS] + (["ppo_curriculum"] if config.beyond.curriculum else [])

  def teacher_cfg():
    c = _copy(config.teacher_replies)
    c.prompts = prompts
    limits = [config[s].max_prompts for s in ppo_sections]
    c.max_prompts = 0 if 0 in limits else max(limits)
    return c

  def needs(section):
    c = config[section].reward
    uses = {c.name, *(p.split(":")[0].strip() for p in _split(c.get("curriculum", "")))}
    wired = not c.replies and c.teacher == config.teacher_replies.teacher and uses & set(REPLY_REWARDS)
    return ("pretrain", "teacher_replies") if wired else ("pretrain",)
  if any("teacher_replies" in needs(s) for s in ppo_sections):
    add(Stage("teacher_replies", ("prepare",), teacher_cfg))

  def ppo_cfg(section, **ppo_overrides):
    c = _copy(config[section])
    c.init_from, c.prompts, c.eval.tasks = d("pretrain"), prompts, ""
    c.ppo.update(ppo_overrides)
    if "teacher_replies" in needs(section):
      c.reward.replies = str(reply_cache(root / "teacher_replies", teacher_cfg()))
    return c
  for section in ppo_sections:
    add(Stage(section, needs(section), lambda s=section: ppo_cfg(s)))

  sweep = config.beyond.sweep
  for reward in _split(sweep.rewards):
    for lr in _floats(sweep.learning_rates, "beyond.sweep.learning_rates"):
      for kl in _floats(sweep.init_kl_coefs, "beyond.sweep.init_kl_coefs"):
        def sweep_cfg(r=reward, lr=lr, kl=kl):
          c = ppo_cfg(f"ppo_{r}", learning_rate=lr, init_kl_coef=kl)
          c.train.max_steps = sweep.max_steps or c.train.max_steps
          c.eval.tasks, c.eval.max_items_per_task = sweep.eval_tasks, config.evaluate.max_items_per_task
          return c
        add(Stage(sweep_name(reward, lr, kl), needs(f"ppo_{reward}"), sweep_cfg))

  if config.beyond.adult_share >= 0:
    mixed = dict(require_child=False, adult_share=config.beyond.adult_share)
    add(Stage("prepare_mixed", (), lambda: prepare_cfg(**mixed, prepared="")))
    add(Stage("pretrain_mixed", ("prepare_mixed",),
              lambda: pretrain_cfg(str(root / "prepare_mixed" / "data"), **mixed)))

  compared = [s for s in stages if s.startswith(("dpo_", "ppo_")) or s == "pretrain_mixed"]

  def evaluate_cfg():
    c = _copy(config.evaluate)
    c.init_from = d("pretrain")
    c.compare_to = ",".join(d(s) for s in compared if is_done(root / s))
    return c
  add(Stage("evaluate", ("pretrain",), evaluate_cfg, kind="eval",
            models=lambda: [d("pretrain")] + [d(s) for s in compared if is_done(root / s)]))
  return stages


def with_seed(cfg: ml_collections.ConfigDict, k: int) -> ml_collections.ConfigDict:
  """Seed run k of a stage: its config's `seed` + k."""
  cfg.seed = cfg.seed + k
  return cfg


def synthetic_pairs_file(stage_dir: pathlib.Path) -> pathlib.Path:
  found = sorted(stage_dir.glob("synthetic_pairs.json*"))
  if not found:
    raise ConfigError(f"stage synthetic_pairs: no synthetic_pairs.json(l) in {stage_dir}; run that stage first")
  return found[0]


def reply_cache(stage_dir: pathlib.Path, teacher_cfg) -> pathlib.Path:
  """The reply cache the teacher_replies stage wrote with these settings (its <name>.json names them)."""
  from rl import teacher as teacher_lib
  settings = json.loads(json.dumps(teacher_lib.reply_settings(teacher_cfg)))
  for meta in sorted((stage_dir / "teacher_replies").glob("*.json")):
    try:
      if json.loads(meta.read_text()).get("settings") == settings:
        return meta.with_suffix(".jsonl")
    except (OSError, ValueError):
      continue
  raise ConfigError(f"stage teacher_replies: no reply cache with the configured settings in "
                    f"{stage_dir / 'teacher_replies'}; run that stage first")


# ---------------------------------------------------------------------------- the books

def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_json(cfg, root: pathlib.Path) -> dict:
  """The wired config as plain JSON, the study directory written `$DIR` (a moved DIR stays valid)."""
  return json.loads(cfg.to_json_best_effort().replace(str(root), "$DIR"))


def fingerprint(cfg_json: dict, upstream: dict[str, str]) -> str:
  blob = json.dumps([cfg_json, sorted(upstream.items())], sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def changed_keys(old: dict, new: dict, limit: int = 3) -> str:
  a, b = _flat(old), _flat(new)
  diff = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
  return "; ".join(diff[:limit]) + (f"; and {len(diff) - limit} more" if len(diff) > limit else "")


def hardware() -> dict:
  import os
  import platform
  import jax
  dev = jax.devices()
  return {"backend": jax.default_backend(), "devices": len(dev), "device_kind": dev[0].device_kind,
          "cpu": platform.processor() or platform.machine(), "cpu_cores": os.cpu_count(), "host": platform.node()}


def drop_stale_results(eval_dir: pathlib.Path, models: list[str]) -> None:
  """Removes evaluation results older than the run that made the model (a retrained model is scored again)."""
  from llamalogue.checkpoint import checkpoint_name
  if not eval_dir.is_dir():
    return
  finished = {}
  for m in models:
    rec = read_record(pathlib.Path(m))
    if rec and rec.get("finished_unix"):
      finished[checkpoint_name(m)] = rec["finished_unix"]
  for results in sorted(eval_dir.glob("**/results.json")):
    owner = results.relative_to(eval_dir).parts[0]  # eval/<model>/ or, for a trajectory, eval/<run>/<milestone>/
    if owner in finished and results.stat().st_mtime < finished[owner]:
      print(f"study: {results.parent} is older than {owner}: scoring it again")
      shutil.rmtree(results.parent)


# ---------------------------------------------------------------------------- running

def selected(config, stages: dict[str, Stage]) -> list[str]:
  want = config.stages.strip()
  if want in ("", "all"):
    return list(stages)
  names = _split(want)
  known = set(stages) | {books.group_of(s) for s in stages}
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ConfigError(f"config.stages: unknown stage {unknown[0]!r}; this study has "
                      f"{', '.join(dict.fromkeys(books.group_of(s) for s in stages))}")
  return [n for n in stages if n in names or books.group_of(n) in names]


def validate(config) -> None:
  if not isinstance(config.seeds, int) or isinstance(config.seeds, bool) or config.seeds < 1:
    raise ConfigError(f"config.seeds: {config.seeds!r} is not a whole number >= 1")
  if config.synthetic not in ("teacher", "released"):
    raise ConfigError(f"config.synthetic: {config.synthetic!r} is not teacher or released")
  if not (config.beyond.adult_share < 0 or 0 <= config.beyond.adult_share <= 1):
    raise ConfigError(f"config.beyond.adult_share: {config.beyond.adult_share!r} is not in [0, 1] (or < 0: off)")
  unknown = [r for r in _split(config.beyond.sweep.rewards) if r not in PPO_REWARDS]
  if unknown:
    raise ConfigError(f"config.beyond.sweep.rewards: unknown reward {unknown[0]!r}; choose from {PPO_REWARDS}")


def run_stage(stage: Stage, root: pathlib.Path, index: str) -> None:
  from llamalogue import modes
  distributed.barrier(f"study stage {stage.name}")   # lock-step: every process reads the books process 0 wrote
  stage_dir = root / stage.name
  upstream = {n: (read_record(root / n) or {}).get("fingerprint", "") for n in stage.needs}
  missing = [n for n in stage.needs if not is_done(root / n)]
  if missing:
    raise ConfigError(f"config.stages: stage {stage.name} needs {missing[0]}, which is not finished in "
                      f"{root / missing[0]}; add it to config.stages")
  cfg = stage.build()
  cfg_json = config_json(cfg, root)
  fp = fingerprint(cfg_json, upstream)
  rec = read_record(stage_dir)
  if stage.kind == "run" and rec and rec.get("fingerprint") != fp:
    what = changed_keys(rec.get("config", {}), cfg_json) or \
        f"a stage it reads changed ({', '.join(n for n in stage.needs if rec.get('upstream', {}).get(n) != upstream[n])})"
    raise ConfigError(f"stage {stage.name}: {stage_dir} holds a run with other settings ({what}); "
                      f"move it away to rerun the stage, or restore the settings")
  if stage.kind == "run" and rec and rec.get("status") == "done":
    print(f"study {index} {stage.name}: done, skipped ({stage_dir})")
    return
  if stage.kind == "eval" and distributed.is_lead():
    drop_stale_results(stage_dir / "eval", stage.models())
  rec = {"stage": stage.name, "mode": cfg.mode, "kind": stage.kind, "fingerprint": fp, "upstream": upstream,
         "config": cfg_json, "status": "running", "wall_s": (rec or {}).get("wall_s", 0.0),
         "attempts": (rec or {}).get("attempts", 0) + 1, "hardware": hardware()}
  write_record(stage_dir, rec)
  resuming = stage.kind == "run" and rec["attempts"] > 1
  print(f"study {index} {stage.name}: {'resuming' if resuming else 'running'} "
        f"({cfg.mode} in {stage_dir})", flush=True)
  start = time.time()
  try:
    modes.run_mode(cfg, str(stage_dir))
  except LlamalogueError as e:
    raise type(e)(f"stage {stage.name}: {e}") from None
  except faults.Preempted as e:  # SIGTERM/SIGINT: the stage kept what it had; rerunning resumes at this stage
    raise e.within(f"study {index} stage {stage.name}") from None
  finally:
    rec["wall_s"] += time.time() - start
    write_record(stage_dir, rec)
  rec.update(status="done", finished_unix=time.time(), finished=time.strftime("%Y-%m-%d %H:%M:%S"))
  write_record(stage_dir, rec)
  print(f"study {index} {stage.name}: done in {time.time() - start:.0f} s", flush=True)


def run(config, workdir: str) -> dict:
  """The `study` mode: every selected stage in order, then DIR/REPORT.md and DIR/results.json."""
  validate(config)
  root = pathlib.Path(workdir).expanduser().resolve()
  root.mkdir(parents=True, exist_ok=True)
  stages = plan(config, root)
  names = selected(config, stages)
  print(f"study: {len(names)} of {len(stages)} stages in {root}: {', '.join(names)}", flush=True)
  try:
    for i, name in enumerate(names):
      run_stage(stages[name], root, f"[{i + 1}/{len(names)}]")
  except BaseException:
    try:  # what finished so far is still reported; the stage's own error is the one shown
      if distributed.is_lead():
        report.write(root, config, list(stages))
    except Exception as e:  # noqa: BLE001
      print(f"warning: study report not written: {e}")
    raise
  distributed.barrier("study report")
  if distributed.is_lead():
    out = report.write(root, config, list(stages))
    print(f"study: report -> {out}")
  distributed.barrier("study report written")
  return json.loads((root / "results.json").read_text())
