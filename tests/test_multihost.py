"""Multi-host for real: every mode as 2 JAX processes x 2 CPU devices (jax.distributed, gloo collectives) on
this machine, against the same command as 1 process x 4 devices; a killed process; a wrong coordinator.

The 1-process run and the 2-process run see the same 4-device mesh, the same global batches and the same
random draws (the sampler keys each row), so their final parameters agree to float32 rounding of the
reductions (the gradient all-reduce runs over processes in another order): 1e-6 is asked.
"""

import json
import pathlib
import signal
import time

import jax
import numpy as np
import pytest

from llamalogue import paths
from tests.helpers import close_after_adam, launch, run_main, together

MODEL = ["--config.model.hidden_size=64", "--config.model.intermediate_size=128", "--config.model.num_layers=2",
         "--config.model.num_heads=4", "--config.model.num_kv_heads=2"]
PRETRAIN = ["--config.train.max_steps=6", "--config.train.checkpoint_every=3", "--config.train.log_every=1",
            "--config.train.eval_every=3", "--config.train.eval_batches=1", "--config.train.batch_size=8",
            "--config.train.eval_batch_size=8", "--config.train.milestones=3000,1e9", *MODEL]

# Adam divides by sqrt(v): a weight whose gradients are ~0 (a rare token's embedding) moves by up to lr per
# step whatever their last bits, so the reduction order across processes can move it by a fraction of lr
# (seen: 1.4e-6 after 4 DPO steps, 1.7e-5 after 48 PPO mini-batch steps, lr 1e-3, one weight of 65,536).
# Asked: every weight within lr/10, and all but one in a thousand within 1e-6. A wrong collective (jax#40830)
# moves most weights by O(lr).
LR = 1e-3

pytestmark = pytest.mark.skipif(not (paths.data_root() / "childes").exists()
                                or not (paths.data_root() / "communicative_baby").exists(), reason="no study data")


_TELLING = ("error", "Error", "FATAL", "Fatal", "Check failed", "Aborted", "Terminating", "signal", "Traceback")


def _ok(proc):
  """`proc` succeeded; else the lines that say why first (a native abort's stderr ends in faulthandler's
  list of extension modules, which would fill the message), then the tail."""
  if proc.returncode != 0:
    err = proc.stderr.splitlines()
    telling = [l for l in err if any(t in l for t in _TELLING) and "Extension modules" not in l]
    raise AssertionError(f"exit {proc.returncode}\n" + "\n".join(telling[-40:]) + "\n--- stdout tail:\n"
                         + proc.stdout[-1500:] + "\n--- stderr tail:\n" + "\n".join(err[-30:])[-3000:])
  return proc


def _one_and_two(config, one, two, *args):
  """`config` run as 1 process x 4 devices in `one` and, at the same time, as 2 processes x 2 devices in `two`;
  both must succeed. Returns (the 1-process run, the 2-process launch)."""
  return tuple(map(_ok, together(run_main(config, one, *args, devices=4, wait=False),
                                 launch(config, two, *args, wait=False))))


def _params(workdir):
  from llamalogue import checkpoint as ckpt_lib, step
  model, _ = ckpt_lib.load_model(workdir)
  return jax.device_get(step.split_model(model)[1])


def _close(a, b, tol=1e-6):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=tol, atol=tol, err_msg=jax.tree_util.keystr(path))


def _metrics(workdir, *names):
  """[[step, value] of every logged `name`, names in order] from DIR/metrics.jsonl."""
  rows = [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return [[r["step"], r[n]] for n in names for r in rows if n in r]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  wd = tmp_path_factory.mktemp("prep")
  _ok(run_main("configs/prepare.py:tiny", wd))
  return wd / "data"


@pytest.fixture(scope="module")
def pretrained(prepared, tmp_path_factory):
  """The same pre-training as 1 process x 4 devices and as 2 processes x 2 devices."""
  root = tmp_path_factory.mktemp("pretrain")
  args = (f"--config.data.prepared={prepared}", *PRETRAIN)
  one, two = root / "one", root / "two"
  _one_and_two("configs/pretrain.py:tiny", one, two, *args)
  return one, two


def test_pretraining_on_two_processes_equals_one(pretrained):
  one, two = pretrained
  _close(_params(one), _params(two))
  np.testing.assert_allclose(_metrics(two, "train/loss", "eval/loss"), _metrics(one, "train/loss", "eval/loss"),
                             rtol=1e-6)
  s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
  assert (s2["steps"], s2["words_seen"], s2["tokens_seen"], s2["milestones"]) == \
      (s1["steps"], s1["words_seen"], s1["tokens_seen"], s1["milestones"])   # global words, not 2x one shard's
  assert sorted(p.name for p in (two / "checkpoints" / "milestones").iterdir()) == \
      sorted(p.name for p in (one / "checkpoints" / "milestones").iterdir())


def test_a_two_process_checkpoint_resumes_on_one_process(pretrained, tmp_path, prepared):
  """Restore onto another process count: 2 processes trained 6 steps; 1 process x 4 devices continues to 8."""
  import shutil
  _, two = pretrained
  wd = tmp_path / "more"
  shutil.copytree(two, wd)
  args = [a for a in PRETRAIN if not a.startswith("--config.train.max_steps")]
  proc = _ok(run_main("configs/pretrain.py:tiny", wd, f"--config.data.prepared={prepared}", *args,
                      "--config.train.max_steps=8", devices=4))
  assert "resuming from step 6" in proc.stdout + proc.stderr
  assert json.loads((wd / "summary.json").read_text())["steps"] == 8


def test_evaluation_on_two_processes_writes_the_same_results(pretrained, tmp_path):
  one, _ = pretrained
  args = (f"--config.init_from={one}", "--config.tasks=dialogue_word,zorro", "--config.max_items_per_task=24")
  _, proc = _one_and_two("configs/evaluate.py", tmp_path / "e1", tmp_path / "e2", *args)

  def load(d):
    (path,) = (d / "eval").glob("*/results.json")
    res = json.loads(path.read_text())
    res.pop("seconds")
    for t in res["tasks"].values():
      t.pop("seconds")
    return res, [json.loads(l) for l in (path.parent / "predictions.jsonl").read_text().splitlines()]
  (r1, p1), (r2, p2) = load(tmp_path / "e1"), load(tmp_path / "e2")
  assert r1 == r2 and p1 == p2
  assert proc.stdout.count("-> ") >= 1 and "[1] evaluate" not in proc.stdout    # process 0 alone reports


def test_dpo_on_two_processes_equals_one(pretrained, tmp_path):
  one, _ = pretrained
  args = (f"--config.init_from={one}", "--config.pairs_limit=32", "--config.train.batch_size=8",
          "--config.train.log_every=1", "--config.train.checkpoint_every=2", "--config.optimizer.lr=1e-3",
          "--config.eval.tasks=")
  _one_and_two("configs/dpo_natural.py:tiny", tmp_path / "d1", tmp_path / "d2", *args)
  close_after_adam(_params(tmp_path / "d1"), _params(tmp_path / "d2"), LR)
  names = ("train/loss", "rewards/accuracies", "rewards/margins")
  np.testing.assert_allclose(_metrics(tmp_path / "d2", *names), _metrics(tmp_path / "d1", *names), rtol=1e-5,
                             atol=1e-6)
  with np.load(tmp_path / "d1" / "reference_logps.npz") as a, np.load(tmp_path / "d2" / "reference_logps.npz") as b:
    np.testing.assert_array_equal(a["chosen"], b["chosen"])     # each process computed half, process 0 wrote it


def _ppo_setup(root: pathlib.Path):
  mothers = ["what is that over there ?", "do you want some juice ?", "where did the ball go ?",
             "can you say thank you ?", "is that your teddy bear ?", "what does the cow say ?",
             "shall we read a book now ?", "where is your other shoe ?"]
  mothers += [m.replace("?", "now ?") for m in mothers]
  (root / "prompts.txt").write_text("".join(m + "\n" for m in mothers))
  rows = [{"prompt": m, "replies": ["a big dog .", "yes please ."]} for m in mothers]
  (root / "replies.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_ppo_on_two_processes_equals_one(pretrained, tmp_path):
  one, _ = pretrained
  _ppo_setup(tmp_path)
  args = (f"--config.init_from={one}", f"--config.prompts={tmp_path / 'prompts.txt'}",
          f"--config.reward.replies={tmp_path / 'replies.jsonl'}", "--config.ppo.learning_rate=1e-3",
          "--config.train.max_steps=3", "--config.eval.tasks=")
  _one_and_two("configs/ppo_bleu.py:tiny", tmp_path / "p1", tmp_path / "p2", *args)
  close_after_adam(_params(tmp_path / "p1"), _params(tmp_path / "p2"), LR)
  np.testing.assert_array_equal(_metrics(tmp_path / "p2", "env/reward_mean"), _metrics(tmp_path / "p1", "env/reward_mean"))
  names = ("objective/kl", "ppo/loss/total")   # functions of the params: as close as they are (see LR)
  np.testing.assert_allclose(_metrics(tmp_path / "p2", *names), _metrics(tmp_path / "p1", *names), rtol=1e-4,
                             atol=1e-5)
  s1, s2 = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("p1", "p2"))
  assert s2["reward"] == s1["reward"]                   # counters summed over the processes
  samples = [(tmp_path / d / "samples.jsonl").read_text().splitlines() for d in ("p1", "p2")]
  assert samples[0] == samples[1]                        # the same replies, written once


def test_a_killed_process_stops_the_other_and_the_job_resumes(prepared, pretrained, tmp_path):
  """SIGKILL process 1 mid-run: process 0 stops with one clear line within its heartbeat timeout; rerunning
  both resumes from the last checkpoint to the params of an uninterrupted run."""
  one, _ = pretrained
  wd = tmp_path / "run"
  args = (f"--config.data.prepared={prepared}", *PRETRAIN)
  proc = launch("configs/pretrain.py:tiny", wd, *args, wait=False, heartbeat_s=10)
  latest = wd / "checkpoints" / "latest"
  deadline = time.time() + 400
  while time.time() < deadline and not any((d / "commit_success.txt").exists() for d in latest.glob("step_3")):
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    time.sleep(0.05)
  import psutil
  workers = [c for c in psutil.Process(proc.pid).children() if "main.py" in " ".join(c.cmdline())]
  victim = next(c for c in workers if "process_id=1" in " ".join(c.cmdline()))
  t0 = time.time()
  victim.send_signal(signal.SIGKILL)
  out, err = proc.communicate(timeout=180)
  assert proc.returncode != 0 and time.time() - t0 < 120, err[-3000:]
  survivors = [l for l in err.splitlines() if l.startswith("[0] error:")]
  # Our watchdog's line, or, when process 0's main thread holds the GIL while it waits in a collective
  # (the watchdog thread cannot run then), the runtime's own report of the lost task (its heartbeat
  # timeout, or its "detected fatal errors ... another task died" abort): never a hang.
  # (A kill that lands inside a collective checkpoint write adds that write's own one-line error first.)
  lost = [l for l in survivors if "stopped answering" in l or "exited before the job ended" in l]
  runtime_abort = "Task 1 heartbeat timeout" in err or "the JAX distributed service detected fatal errors" in err
  assert (len(lost) == 1 and len(survivors) <= 2) or runtime_abort, err[-3000:]
  again = _ok(launch("configs/pretrain.py:tiny", wd, *args))
  assert "resuming from step" in again.stdout + again.stderr, again.stderr[-3000:]   # step_3 was committed: kept
  _close(_params(one), _params(wd))


def test_sigterm_to_one_process_stops_the_job_at_one_agreed_step(prepared, pretrained, tmp_path):
  """A preemption notice reaches one host: every process agrees on the step (JAX's preemption sync point),
  the checkpoint is written collectively, every process exits 143; rerunning resumes to the same params."""
  one, _ = pretrained
  wd = tmp_path / "run"
  args = (f"--config.data.prepared={prepared}", *PRETRAIN)
  proc = launch("configs/pretrain.py:tiny", wd, *args, wait=False)
  deadline = time.time() + 400
  while time.time() < deadline and not (wd / "metrics.jsonl").exists():
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    time.sleep(0.05)
  import psutil
  workers = [c for c in psutil.Process(proc.pid).children() if "main.py" in " ".join(c.cmdline())]
  next(c for c in workers if "process_id=1" in " ".join(c.cmdline())).send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  stopped = [l for l in (out + err).splitlines() if "SIGTERM at step" in l]
  assert proc.returncode == 143 and stopped, err[-3000:]
  step = int(stopped[0].split("SIGTERM at step ")[1].split(":")[0])
  assert (wd / "checkpoints" / "latest" / f"step_{step}" / "commit_success.txt").exists()
  _ok(launch("configs/pretrain.py:tiny", wd, *args))
  _close(_params(one), _params(wd))


def test_a_wrong_coordinator_is_one_line_not_a_hang(tmp_path):
  t0 = time.time()
  proc = run_main("configs/pretrain.py:tiny", tmp_path / "wd", "--config.distributed.coordinator=127.0.0.1:1",
                  "--config.distributed.num_processes=2", "--config.distributed.process_id=1",
                  "--config.distributed.timeout_s=5", timeout=120)
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert proc.returncode == 2 and len(errors) == 1 and time.time() - t0 < 100, proc.stderr[-2000:]
  assert "config.distributed: could not join the job at 127.0.0.1:1" in errors[0]
  bad = run_main("configs/pretrain.py:tiny", tmp_path / "wd", "--config.distributed.coordinator=127.0.0.1:9",
                 "--config.distributed.num_processes=2", "--config.distributed.process_id=2")
  assert bad.returncode == 2 and "error: config.distributed: process_id=2 with num_processes=2" in bad.stderr
