"""DPO end to end: `main.py --config=configs/dpo_natural.py:tiny` on a tiny base of ours, the
first step's loss is ln 2, the effective batch is the same whatever the accumulation, a killed
run resumes bit-exactly, bad pair files stop with one line naming file and row."""

import json
import math

import jax
import ml_collections
import numpy as np
import pytest

from llamalogue import paths
from tests.helpers import kill_after_checkpoint, run_main as _run
from llamalogue.metrics import read_scalars

RELEASED = "data:communicative_baby/dpo_dataset/huggingface_dpo_format.json"
MODEL = ["--config.model.hidden_size=64", "--config.model.intermediate_size=128", "--config.model.num_layers=2",
         "--config.model.num_heads=4", "--config.model.num_kv_heads=2"]
DPO = ["--config.pairs_limit=40", "--config.train.batch_size=8", "--config.train.log_every=1",
       "--config.train.checkpoint_every=2", "--config.optimizer.lr=1e-3"]

pytestmark = pytest.mark.skipif(not (paths.data_root() / "communicative_baby").exists()
                                or not (paths.data_root() / "childes").exists(), reason="no study data")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """A tiny base pre-trained by this project (tiny CHILDES data, a few steps)."""
  wd = tmp_path_factory.mktemp("base")
  proc = _run("configs/pretrain.py:tiny", wd, "--config.train.max_steps=4", "--config.train.eval_every=0",
              "--config.train.batch_size=8", *MODEL)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return wd


def _dpo(base, wd, *extra, wait=True):
  return _run("configs/dpo_natural.py:tiny", wd, f"--config.init_from={base}", *DPO, *extra, wait=wait)


def _final_params(wd):
  from llamalogue import checkpoint as ckpt_lib, step
  model, _ = ckpt_lib.load_model(wd)
  return jax.device_get(step.split_model(model)[1])


@pytest.fixture(scope="module")
def uninterrupted(base, tmp_path_factory):
  wd = tmp_path_factory.mktemp("dpo") / "run"
  proc = _dpo(base, wd, "--config.eval.tasks=dialogue_word,zorro", "--config.eval.max_items_per_task=16")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return wd


def test_tiny_dpo_run_outputs(uninterrupted):
  wd = uninterrupted
  summary = json.loads((wd / "summary.json").read_text())
  assert summary["steps"] == 5 and summary["pairs"]["encoded"] == 40   # ceil(40 / 8) steps, one epoch
  rows = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  first = rows[0]
  assert first["step"] == 1 and abs(first["train/loss"] - math.log(2)) < 1e-5   # policy = reference
  assert abs(first["rewards/margins"]) < 1e-5
  scalars = read_scalars(wd / "tb")
  for tag in ("train/loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
              "logps/chosen", "logps/rejected", "train/learning_rate", "perf/tokens_per_s"):
    assert tag in scalars, tag
  assert rows[-1]["train/loss"] < math.log(2), "DPO loss did not go below ln 2"
  assert rows[-1]["train/learning_rate"] < rows[0]["train/learning_rate"]          # linear decay to 0
  assert (wd / "reference_logps.npz").exists() and (wd / "dpo_curves.png").stat().st_size > 0
  cfg = json.loads((wd / "run_config.json").read_text())
  assert cfg["tokenization"] == "benchmark"
  # the base and the result, scored on the same tasks and items (evaluation/run.py), and the comparison of both
  results = [json.loads(p.read_text()) for p in sorted((wd / "eval").glob("*/results.json"))]
  assert len(results) == 2 and {r["init_from"] for r in results} == {cfg["init_from"], str(wd.resolve())}
  assert [list(r["tasks"]) for r in results] == [cfg["eval"]["tasks"].split(",")] * 2
  assert [[t["items"] for t in r["tasks"].values()] for r in results][0] == \
      [[t["items"] for t in r["tasks"].values()] for r in results][1]
  assert wd.name in (wd / "eval" / "comparison.md").read_text()


def test_rerun_reuses_cached_reference_and_finished_run(base, uninterrupted):
  stamp = (uninterrupted / "reference_logps.npz").stat().st_mtime_ns
  proc = _dpo(base, uninterrupted, "--config.eval.tasks=")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (uninterrupted / "reference_logps.npz").stat().st_mtime_ns == stamp


def test_sigkill_and_rerun_is_bit_identical(base, uninterrupted, tmp_path):
  wd = tmp_path / "killed"
  kill_after_checkpoint(_dpo(base, wd, "--config.eval.tasks=", wait=False), wd, 2, timeout=300)
  assert not (wd / "summary.json").exists()
  rerun = _dpo(base, wd, "--config.eval.tasks=")
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "resuming from step" in rerun.stdout + rerun.stderr
  jax.tree.map(np.testing.assert_array_equal, _final_params(uninterrupted), _final_params(wd))


def test_sigterm_checkpoints_stops_and_rerun_is_bit_identical(base, uninterrupted, tmp_path):
  """SIGTERM (a preemption): the step finishes, a checkpoint is written, exit 143; the rerun ends where an
  uninterrupted run does, bit for bit."""
  import re
  import signal
  wd = tmp_path / "preempted"
  proc = _dpo(base, wd, "--config.eval.tasks=", "--config.train.checkpoint_every=1", wait=False)  # the signal lands mid-run
  kill_after_checkpoint(proc, wd, 2, timeout=300, sig=signal.SIGTERM)
  err = proc.stderr.read()
  assert proc.returncode == 143, err[-3000:]
  assert re.search(r"^dpo: SIGTERM at step \d+: checkpoint saved in \S+; rerun the same command to resume$", err, re.M), \
      err[-3000:]
  assert "Traceback" not in err
  rerun = _dpo(base, wd, "--config.eval.tasks=")
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "resuming from step" in rerun.stdout + rerun.stderr
  jax.tree.map(np.testing.assert_array_equal, _final_params(uninterrupted), _final_params(wd))


def test_bad_pair_file_one_line(base, tmp_path):
  bad = tmp_path / "pairs.jsonl"
  good = {"prompt": "*MOT: what is that ?", "chosen": "*CHI: a ball .", "rejected": "*CHI: no more ."}
  bad.write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "*MOT: hi there .", "chosen": "*CHI: hi ."}) + "\n")
  proc = _dpo(base, tmp_path / "wd", f"--config.pairs={bad}", "--config.eval.tasks=")
  assert proc.returncode == 2
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and str(bad) in errors[0] and "2" in errors[0] and "rejected" in errors[0], proc.stderr[-2000:]
  missing = _dpo(base, tmp_path / "wd2", "--config.init_from=", "--config.eval.tasks=")
  assert missing.returncode == 2 and "config.init_from" in missing.stderr


def test_accumulation_equals_one_big_batch(base):
  """The same 8 pairs as one micro-batch of 8 (in one packed row) or 4 micro-batches of 2 (a row a pair):
  the same step."""
  from llamalogue import hf, step
  from rl import dpo, pairs as pairs_lib
  model, tok = hf.load(str(base))
  graphdef, params = step.split_model(model)
  enc = pairs_lib.encode_pairs(pairs_lib.load_pairs(RELEASED, limit=8), tok)
  arrays = dpo.pair_arrays(enc)
  c, r = dpo.jit_reference_logps(graphdef, False)(params, dpo.batch_rows(arrays, np.arange(8), 1))
  arrays.update(ref_chosen=np.asarray(c) - 0.3, ref_rejected=np.asarray(r) + 0.2)
  opt = ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=0, schedule="constant", b1=0.9, b2=0.999, eps=1e-8,
                                       weight_decay=0.0, grad_clip=1.0))
  tx, _ = step.make_optimizer(opt, 10)
  loss_fn = dpo.make_loss_fn(graphdef, beta=0.1, loss_type="sigmoid", label_smoothing=0.0)
  run = jax.jit(lambda s, b: step.train_step(loss_fn, tx, s, b))
  micro = lambda n, accum, per_row: {k: v.reshape(accum, -1, *v.shape[1:])     # as PairBatches lays them out
                                     for k, v in dpo.batch_rows(arrays, np.arange(n) % 8, per_row).items()}
  one = run(step.init_state(params, tx), micro(8, 1, 8))         # 8 pairs in one row
  four = run(step.init_state(params, tx), micro(8, 4, 1))        # 4 micro-batches of 2 rows of one pair
  for key in ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen"):
    np.testing.assert_allclose(one[1][key], four[1][key], rtol=2e-5, atol=1e-6)
  # Adam normalises each coordinate: float rounding of near-zero gradients shows at ~1e-5 of an lr of 1e-3.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5), one[0]["params"], four[0]["params"])
  # A padding pair (valid = 0) changes nothing.
  padded = micro(9, 1, 3)
  padded["valid"][0, -1] = 0.0
  nine = run(step.init_state(params, tx), padded)
  np.testing.assert_allclose(one[1]["loss"], nine[1]["loss"], rtol=1e-6)
