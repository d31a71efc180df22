"""PPO end to end: `main.py --config=configs/ppo_bleu.py:tiny` on a tiny base of ours, trl's metric
names, sample texts, a killed run resumes bit-exactly, and the bad inputs (a NaN reward, a batch with
no parsed reply, a teacher cache that misses a prompt) give a clear error or a counted fallback.
A reward curriculum (configs/ppo_curriculum.py) switches rewards by global step, also across a resume."""

import json

import jax
import numpy as np
import pytest

from llamalogue import paths
from tests.helpers import kill_after_checkpoint, run_main as _run
from llamalogue.errors import LlamalogueError
from llamalogue.metrics import read_scalars

MODEL = ["--config.model.hidden_size=64", "--config.model.intermediate_size=128", "--config.model.num_layers=2",
         "--config.model.num_heads=4", "--config.model.num_kv_heads=2"]
MOTHERS = ["what is that over there ?", "do you want some juice ?", "where did the ball go ?",
           "can you say thank you ?", "is that your teddy bear ?", "what does the cow say ?",
           "shall we read a book now ?", "where is your other shoe ?"]
TEACHER = ["a big dog .", "yes please juice .", "it went under there .", "thank you mommy .",
           "my teddy bear .", "the cow says moo .", "read the red book .", "i do not know ."]

pytestmark = pytest.mark.skipif(not (paths.data_root() / "childes").exists(), reason="no CHILDES data")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """A tiny base of ours, 16 mother turns and a teacher-reply cache for them (BLEU's references)."""
  root = tmp_path_factory.mktemp("ppo")
  proc = _run("configs/pretrain.py:tiny", root / "base", "--config.train.max_steps=4", "--config.train.eval_every=0",
              "--config.train.batch_size=8", *MODEL)
  assert proc.returncode == 0, proc.stderr[-3000:]
  mothers = MOTHERS + [m.replace("?", "now ?") for m in MOTHERS]
  (root / "prompts.txt").write_text("".join(m + "\n" for m in mothers))
  rows = [{"prompt": m, "replies": [t, t.upper()], "raw": [t, t]} for m, t in zip(mothers, TEACHER * 2)]
  (root / "replies.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  return root


def _ppo(setup, wd, *extra, wait=True):
  return _run("configs/ppo_bleu.py:tiny", wd, f"--config.init_from={setup / 'base'}",
              f"--config.prompts={setup / 'prompts.txt'}", f"--config.reward.replies={setup / 'replies.jsonl'}",
              "--config.ppo.learning_rate=1e-3", *extra, wait=wait)


def _final_params(wd):
  from llamalogue import checkpoint as ckpt_lib, step
  model, _ = ckpt_lib.load_model(wd)
  return jax.device_get(step.split_model(model)[1])


@pytest.fixture(scope="module")
def uninterrupted(setup):
  wd = setup / "run"
  proc = _ppo(setup, wd, "--config.eval.tasks=dialogue_word", "--config.eval.max_items_per_task=16")
  assert proc.returncode == 0, proc.stderr[-3000:]
  return wd


def test_tiny_ppo_run_outputs(uninterrupted):
  wd = uninterrupted
  summary = json.loads((wd / "summary.json").read_text())
  assert summary["steps"] == 4 and summary["reward"]["name"] == "bleu" and summary["reward"]["items"] == 64
  scalars = read_scalars(wd / "tb")
  for tag in ("env/reward_mean", "env/reward_std", "objective/kl", "objective/kl_coef", "objective/entropy",
              "ppo/loss/policy", "ppo/loss/value", "ppo/policy/clipfrac", "ppo/policy/approxkl",
              "ppo/returns/mean", "ppo/val/vpred", "time/rollout_s", "time/reward_s", "time/forward_s",
              "time/update_s"):
    assert tag in scalars, tag
  kl_coef = [v for _, v in scalars["objective/kl_coef"]]
  assert kl_coef[0] == pytest.approx(0.2) and all(np.isfinite(v) for _, v in scalars["objective/kl"])
  samples = [json.loads(l) for l in (wd / "samples.jsonl").read_text().splitlines()]
  assert samples and {"mother", "reply", "score"} <= set(samples[0])
  assert all("*" not in s["reply"].split(":")[0] or ":" not in s["reply"] for s in samples)  # cut at the next tag
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  acc = EventAccumulator(str(wd / "tb"), size_guidance={"tensors": 0})
  acc.Reload()
  assert "samples/replies" in acc.Tags()["tensors"]
  assert (wd / "ppo_reward.png").stat().st_size > 0 and (wd / "eval" / "comparison.md").exists()


def test_sigkill_and_rerun_is_bit_identical(setup, uninterrupted, tmp_path):
  wd = tmp_path / "killed"
  kill_after_checkpoint(_ppo(setup, wd, "--config.eval.tasks=", wait=False), wd, 2, timeout=400)
  rerun = _ppo(setup, wd, "--config.eval.tasks=")
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "resuming from step" in rerun.stdout + rerun.stderr
  jax.tree.map(np.testing.assert_array_equal, _final_params(uninterrupted), _final_params(wd))
  # host-side state (reward counters, Rollouts.counts) is checkpointed too: the summary covers both sessions
  whole, resumed = (json.loads((d / "summary.json").read_text()) for d in (uninterrupted, wd))
  for key in ("steps", "tokens_seen", "reward"):
    assert resumed[key] == whole[key], key


def test_sigterm_checkpoints_stops_and_rerun_is_bit_identical(setup, uninterrupted, tmp_path):
  """SIGTERM (a preemption): the step finishes, a checkpoint is written, exit 143; the rerun ends where an
  uninterrupted run does, bit for bit."""
  import re
  import signal
  wd = tmp_path / "preempted"
  proc = _ppo(setup, wd, "--config.eval.tasks=", "--config.train.checkpoint_every=1", wait=False)  # the signal lands mid-run
  kill_after_checkpoint(proc, wd, 2, timeout=400, sig=signal.SIGTERM)
  err = proc.stderr.read()
  assert proc.returncode == 143, err[-3000:]
  assert re.search(r"^ppo-bleu: SIGTERM at step \d+: checkpoint saved in \S+; rerun the same command to resume$", err, re.M), \
      err[-3000:]
  assert "Traceback" not in err
  rerun = _ppo(setup, wd, "--config.eval.tasks=")
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "resuming from step" in rerun.stdout + rerun.stderr
  jax.tree.map(np.testing.assert_array_equal, _final_params(uninterrupted), _final_params(wd))


def test_teacher_cache_missing_a_prompt_is_one_line(setup, tmp_path):
  prompts = tmp_path / "prompts.txt"    # 16 turns, one batch: the uncovered turn is in the first step
  prompts.write_text("".join((setup / "prompts.txt").read_text().splitlines(keepends=True)[:15])
                     + "a turn the cache does not hold ?\n")
  proc = _ppo(setup, tmp_path / "wd", f"--config.prompts={prompts}", "--config.eval.tasks=",
              "--config.train.max_steps=1")
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert proc.returncode == 2 and len(errors) == 1 and "a turn the cache does not hold" in errors[0], proc.stderr[-2000:]


class _Reward:
  def __init__(self, value):
    self.value = value

  def __call__(self, mothers, replies):
    return np.full(len(replies), self.value, np.float32)

  def stats(self):
    return {}


def _rollouts(setup, reward, curriculum=None, **overrides):
  """The PPO step of ppo_run on the tiny base, with a given reward function (or a `rewards.Curriculum`)."""
  from configs import ppo_bleu, ppo_curriculum
  from llamalogue import hf, sharding, step
  from rl import ppo, ppo_run, rewards
  config = ppo_curriculum.get_config("tiny") if curriculum else ppo_bleu.get_config("tiny")
  reward = curriculum or rewards.Curriculum((("bleu", 1),), {"bleu": reward}, scale=False)
  config.init_from = str(setup / "base")
  for k, v in overrides.items():
    config[k] = v
  model, tok = hf.load(config.init_from)
  graphdef, params = step.split_model(model)
  cfg = ppo_run.ppo_config(config.ppo)
  mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
  tx, _ = ppo.make_optimizer(cfg)
  state = ppo.init_state(params, ppo.init_value_head(model.cfg.hidden_size, jax.random.key(0)), tx, cfg)
  shardings = sharding.tree_shardings(state, mesh)
  r = ppo_run.Rollouts(config, graphdef, params, tok, reward, cfg, tx, mesh, shardings, setup / "s.jsonl")
  return r, state


def test_nan_reward_is_an_error_or_a_counted_zero(setup):
  r, state = _rollouts(setup, _Reward(np.nan))
  with pytest.raises(LlamalogueError, match="returned nan"):
    r(state, (MOTHERS * 2)[:16])
  r, state = _rollouts(setup, _Reward(np.nan), on_nan_reward="zero")
  state, metrics = r(state, (MOTHERS * 2)[:16])
  assert metrics["counts/nan_rewards"] == 16 and bool(metrics["finite"])


def test_batch_without_a_parsed_reply_is_skipped_and_counted(setup, monkeypatch):
  from rl import ppo_run
  monkeypatch.setattr(ppo_run, "child_reply", lambda text: "")
  r, state = _rollouts(setup, _Reward(1.0))
  before = jax.device_get(state["params"])
  state, metrics = r(state, (MOTHERS * 2)[:16])
  assert metrics["counts/empty_batches"] == 1 and int(state["step"]) == 1
  jax.tree.map(np.testing.assert_array_equal, before, jax.device_get(state["params"]))
  r, state = _rollouts(setup, _Reward(1.0), on_empty_batch="error")
  with pytest.raises(LlamalogueError, match="no reply parsed"):
    r(state, (MOTHERS * 2)[:16])


def test_child_reply_is_cut_at_the_next_speaker():
  from rl.ppo_run import child_reply, pack_rows
  assert child_reply(" it is a dog . *MOT: a dog ?") == "it is a dog ."
  assert child_reply(" *MOT: hello") == ""
  assert child_reply(" my ball ! *SI1: no mine . *MOT: share") == "my ball !"     # a sibling's turn ends it too
  assert child_reply(" look *AT: what") == "look"
  tokens, masks = pack_rows([[1, 2, 3], [4]], [[5, 6], []], pad_id=0, multiple=8)
  assert tokens.tolist() == [[1, 2, 3, 5, 6, 0, 0, 0], [4, 0, 0, 0, 0, 0, 0, 0]]
  assert masks.tolist() == [[0, 0, 0, 1, 1, 0, 0, 0], [0] * 8]


# ---------------------------------------------------------------------------- reward curriculum

def test_curriculum_phase_is_a_pure_function_of_the_step():
  from rl import rewards
  phases = rewards.parse_curriculum("confidence:10, bleu:10")
  assert phases == (("confidence", 10), ("bleu", 10))
  assert [rewards.phase_at(phases, s) for s in (0, 9, 10, 19, 20, 29, 30, 10_019)] == [0, 0, 1, 1, 0, 0, 1, 1]
  phases = rewards.parse_curriculum("bleu:1,semsim:2,bleu:3")
  assert [rewards.phase_at(phases, s) for s in range(7)] == [0, 1, 1, 2, 2, 2, 0]
  c = rewards.Curriculum(phases, {"bleu": _Reward(1.0), "semsim": _Reward(0.0)}, scale=False)
  assert c.names == ("bleu", "semsim") and [c.index(s) for s in range(7)] == [0, 1, 1, 0, 0, 0, 0]
  assert c(5, ["m"], ["r"])[1] == 0 and c(7, ["m"], ["r"])[1] == 1


def test_curriculum_errors_name_the_field(setup, tmp_path):
  from configs import ppo_curriculum
  from llamalogue.errors import ConfigError
  from rl import ppo_run, rewards
  for spec, why in (("rouge:5", "'rouge' in 'rouge:5' is not a reward"), ("bleu:0", "'bleu:0' needs a positive"),
                    ("bleu:-3", "'bleu:-3' needs a positive"), ("bleu", "'bleu' is not name:steps"),
                    ("bleu:2,", "'' is not name:steps"), ("bleu:two", "'bleu:two' is not name:steps")):
    with pytest.raises(ConfigError, match=f"^config.reward.curriculum: {why}"):
      rewards.parse_curriculum(spec)
  config = ppo_curriculum.get_config("tiny")
  config.init_from = "base"
  config.reward.curriculum = ""
  with pytest.raises(ConfigError, match="^config.reward.curriculum: empty with config.reward.name=curriculum"):
    ppo_run._validate(config)
  config.reward.curriculum, config.reward.name = "bleu:2", "bleu"
  with pytest.raises(ConfigError, match="^config.reward.curriculum: set with config.reward.name='bleu'"):
    ppo_run._validate(config)
  proc = _ppo(setup, tmp_path / "wd", "--config.reward.name=curriculum", "--config.reward.curriculum=bleu:2,rouge:2")
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
  assert errors[0].startswith("error: config.reward.curriculum: 'rouge' in 'rouge:2' is not a reward")


def test_curriculum_scale_maps_each_range_to_unit():
  from rl import rewards
  assert set(rewards.RANGES) == set(rewards.NAMES)
  for name, (lo, hi) in rewards.RANGES.items():
    np.testing.assert_allclose(rewards.to_unit(name, np.array([lo, (lo + hi) / 2, hi])), [0.0, 0.5, 1.0])
  np.testing.assert_allclose(rewards.to_unit("semsim", [-0.5, 0.2]), [0.25, 0.6], rtol=1e-6)
  np.testing.assert_array_equal(rewards.to_unit("llm_score", [7.0, np.nan]), [1.0, np.nan])  # clipped; NaN kept
  phases = (("llm_score", 1), ("confidence", 1))
  scaled = rewards.Curriculum(phases, {"llm_score": _Reward(4.0), "confidence": _Reward(-0.5)})
  raw = rewards.Curriculum(phases, {"llm_score": _Reward(4.0), "confidence": _Reward(-0.5)}, scale=False)
  assert [float(scaled(s, ["m"], ["r"])[0][0]) for s in (0, 1)] == pytest.approx([0.8, 0.25])
  assert [float(raw(s, ["m"], ["r"])[0][0]) for s in (0, 1)] == pytest.approx([4.0, -0.5])


def test_prompts_from_a_model_that_is_not_our_run_is_one_line(setup, tmp_path):
  """A Hugging Face directory has no held-out split B: the error says to pass prompts."""
  from llamalogue import checkpoint as ckpt_lib, hf
  model, _ = ckpt_lib.load_model(setup / "base")
  hf.export(model, tmp_path / "hf", setup / "base" / "checkpoints" / "tokenizer")
  proc = _run("configs/ppo_bleu.py:tiny", tmp_path / "wd", f"--config.init_from={tmp_path / 'hf'}",
              f"--config.reward.replies={setup / 'replies.jsonl'}", "--config.eval.tasks=")
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
  assert errors[0].startswith("error: config.prompts: no held-out split B beside") and "--config.prompts=FILE" in errors[0]


def _curriculum(setup, wd, *extra, wait=True):
  """A tiny curriculum run with the two rewards that need no teacher model: bleu for steps 0-1, semsim for 2-3."""
  return _run("configs/ppo_curriculum.py:tiny", wd, f"--config.init_from={setup / 'base'}",
              f"--config.prompts={setup / 'prompts.txt'}", f"--config.reward.replies={setup / 'replies.jsonl'}",
              "--config.reward.curriculum=bleu:2,semsim:2", "--config.ppo.learning_rate=1e-3",
              "--config.eval.tasks=", *extra, wait=wait)


def test_tiny_curriculum_run_switches_reward_across_a_kill(setup, tmp_path):
  """Killed at the step-2 checkpoint (the phase boundary), the rerun trains steps 3-4 on semsim: the phase
  comes from the restored global step (bit-exact resume itself: test_sigkill_and_rerun_is_bit_identical)."""
  wd = tmp_path / "run"
  kill_after_checkpoint(_curriculum(setup, wd, wait=False), wd, 2, timeout=400)
  rerun = _curriculum(setup, wd)
  assert rerun.returncode == 0 and "resuming from step 2" in rerun.stdout + rerun.stderr, rerun.stderr[-3000:]
  rows = {r["step"]: r for r in map(json.loads, (wd / "metrics.jsonl").read_text().splitlines())}
  assert {s: r["env/reward_phase"] for s, r in rows.items()} == {1: 0, 2: 0, 3: 1, 4: 1}
  assert all(0.0 <= r["env/reward_mean"] <= 1.0 for r in rows.values())
  summary = json.loads((wd / "summary.json").read_text())
  assert summary["mode"] == "ppo-curriculum" and summary["steps"] == 4 and summary["reward"]["name"] == "curriculum"
  assert summary["reward"]["curriculum"] == "bleu:2,semsim:2" and summary["reward"]["scale"] is True
  assert {n: s["items"] for n, s in summary["reward"]["rewards"].items()} == {"bleu": 32, "semsim": 32}  # both sessions
  assert (wd / "ppo_reward.png").stat().st_size > 0
