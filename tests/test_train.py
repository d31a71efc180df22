"""Pre-training: a tiny run end to end, SIGKILL + rerun = uninterrupted (bit-exact), restore
onto another device count, milestones, TensorBoard, NaN stop."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from llamalogue import checkpoint as ckpt_lib
from llamalogue import model as M
from llamalogue import paths, sharding, step
from llamalogue.metrics import read_scalars
from tests.helpers import kill_after_checkpoint

ROOT = pathlib.Path(__file__).resolve().parent.parent
STEPS = 12
COMMON = [f"--config.train.max_steps={STEPS}", "--config.train.checkpoint_every=3", "--config.train.log_every=2",
          "--config.train.eval_every=6", "--config.train.eval_batches=2", "--config.train.batch_size=8",
          "--config.model.hidden_size=64", "--config.model.intermediate_size=128", "--config.model.num_layers=2",
          "--config.model.num_heads=4", "--config.model.num_kv_heads=2",
          "--config.train.milestones=1000,2000,1e9"]

pytestmark = pytest.mark.skipif(not (paths.data_root() / "childes").exists(), reason="no CHILDES data")


def _main(workdir, *extra, wait=True):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONUNBUFFERED="1")
  cmd = [sys.executable, str(ROOT / "main.py"), "--config=configs/pretrain.py:tiny", f"--workdir={workdir}",
         *COMMON, *extra]
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """One data preparation shared by every run of this module (copied into each workdir)."""
  root = tmp_path_factory.mktemp("prep")
  proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "--config=configs/prepare.py:tiny",
                         f"--workdir={root}"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""))
  assert proc.returncode == 0, proc.stderr[-2000:]
  return root / "data"


def _workdir(tmp_path, prepared, name):
  wd = tmp_path / name
  wd.mkdir()
  shutil.copytree(prepared, wd / "data")
  return wd


def _final_params(workdir):
  model, _ = ckpt_lib.load_model(workdir)
  from flax import nnx
  return jax.device_get(M.pure_dict(nnx.state(model, nnx.Param)))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, prepared):
  wd = _workdir(tmp_path_factory.mktemp("full"), prepared, "run")
  proc = _main(wd)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return wd


def test_tiny_run_outputs(uninterrupted):
  wd = uninterrupted
  summary = json.loads((wd / "summary.json").read_text())
  assert summary["steps"] == STEPS and summary["words_seen"] > 0
  assert np.isfinite(summary["final_eval_loss"])
  marks = ckpt_lib.find_milestones(str(wd))
  assert [w for w, _ in marks] == [1000, 2000], marks
  assert [w for w, _ in marks] == sorted(w for w, _ in marks)
  meta = ckpt_lib.read_meta(marks[0][1])
  assert meta["words"] >= marks[0][0] and {"step", "data", "rng"} <= set(meta)
  scalars = read_scalars(wd / "tb")
  for tag in ("train/loss", "train/learning_rate", "train/grad_norm", "perf/tokens_per_s", "train/words_seen",
              "eval/loss", "eval/perplexity"):
    assert tag in scalars, tag
  losses = [v for _, v in scalars["train/loss"]]
  assert losses[-1] < losses[0], "loss did not go down"
  # The exported model loads in transformers with its tokenizer.
  from transformers import AutoModelForCausalLM, AutoTokenizer
  from llamalogue import hf
  model, tok = hf.load(str(wd))  # a run directory is not mistaken for a HF directory
  assert tok is not None
  hf.export(model, wd / "hf", wd / "checkpoints" / "tokenizer")
  AutoModelForCausalLM.from_pretrained(wd / "hf")
  assert AutoTokenizer.from_pretrained(wd / "hf").eos_token == "<|endoftext|>"


def test_sigkill_and_rerun_is_bit_identical(tmp_path, prepared, uninterrupted):
  wd = _workdir(tmp_path, prepared, "killed")
  proc = _main(wd, wait=False)
  kill_after_checkpoint(proc, wd, 6, timeout=300)  # right after the second checkpoint lands
  assert not (wd / "summary.json").exists()
  rerun = _main(wd)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "resuming from step" in rerun.stdout + rerun.stderr
  # the kernel choice, one line at start-up
  assert [l for l in rerun.stdout.splitlines() if l.startswith("pretrain: kernels cpu (cpu): ")], rerun.stdout[:2000]
  a, b = _final_params(uninterrupted), _final_params(wd)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_restore_onto_another_device_count(tmp_path):
  from llamalogue import model as M
  cfg = M.LlamaConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, intermediate_size=48)
  opt = ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=1, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1,
                                       grad_clip=1.0))
  tx, _ = step.make_optimizer(opt, 10)
  state = step.init_state(step.init_params(cfg, 0)[1], tx)
  host = jax.device_get(state)

  def target(mesh):
    shardings = sharding.tree_shardings(state, mesh)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=s), state, shardings), shardings

  mesh8, mesh1 = sharding.make_mesh(1, 8), sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  _, sh8 = target(mesh8)
  ck = ckpt_lib.RunCheckpoints(tmp_path / "a")
  ck.save(sharding.shard(state, sh8), {"step": 1, "words": 10})
  restored, meta = ck.restore_latest(target(mesh1)[0])
  assert meta["words"] == 10
  assert restored["params"]["embed_tokens"].sharding.num_devices == 1
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), host)
  ck2 = ckpt_lib.RunCheckpoints(tmp_path / "b")
  ck2.save(restored, {"step": 2, "words": 20})
  back, _ = ck2.restore_latest(target(mesh8)[0])
  assert back["params"]["embed_tokens"].sharding.num_devices == 8
  assert back["params"]["embed_tokens"].addressable_shards[0].data.shape[0] == 64 // 8
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(back), host)


def test_nan_loss_stops_with_one_line_and_keeps_last_checkpoint(tmp_path, prepared):
  wd = _workdir(tmp_path, prepared, "nan")
  proc = _main(wd, "--config.optimizer.lr=1e12", "--config.optimizer.grad_clip=0.0",
               "--config.optimizer.warmup_steps=0")
  assert proc.returncode != 0
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "non-finite loss" in errors[0], proc.stderr[-2000:]
  # Whatever checkpoint exists holds finite parameters and restores.
  if (wd / "checkpoints" / "latest").exists() and list((wd / "checkpoints" / "latest").glob("step_*")):
    params = _final_params(wd)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_milestone_schedule():
  from llamalogue.train import milestones
  assert milestones(10_000_000, 10) == [i * 1_000_000 for i in range(1, 11)] + [i * 10_000_000 for i in range(2, 11)]
  assert milestones(1000, 2) == [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 2000]
