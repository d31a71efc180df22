"""benchmarks/ppo_throughput.py beside trl 0.8.6: the command lines, the interleaving, the trl script.

No test builds trl 0.8.6's environment (minutes of pip); the one that steps trl runs only where
the benchmark has built it already, and is skipped elsewhere.
"""

import json
import subprocess

import pytest

from benchmarks import ppo_throughput, trl086_ppo


def test_trl_script_needs_exactly_one_mode():
  base = ["--model=m", "--queries=q.json"]
  assert trl086_ppo.parse_args(base + ["--steps=3"]).steps == 3
  args = trl086_ppo.parse_args(base + ["--serve", "--threads=2", "--keep_freed_memory"])
  assert (args.serve, args.steps, args.threads, args.keep_freed_memory) == (True, None, 2, True)
  assert (args.max_new_tokens, args.top_p, args.score) == (20, 0.9, 1.0)
  for bad in ([], ["--steps=2", "--serve"], ["--steps=0"], ["--serve", "--threads=-1"]):
    with pytest.raises(SystemExit):
      trl086_ppo.parse_args(base + bad)
  with pytest.raises(SystemExit):
    trl086_ppo.parse_args(["--steps=1"])  # --model and --queries are required


def test_trl_settings_are_the_studys():
  s = trl086_ppo.SETTINGS
  assert (s["batch_size"], s["mini_batch_size"], s["ppo_epochs"]) == (16, 4, 4)
  from rl import ppo
  ours = ppo.PPOConfig()
  for name in ("batch_size", "mini_batch_size", "ppo_epochs", "learning_rate", "init_kl_coef", "target", "horizon",
               "gamma", "lam", "cliprange", "cliprange_value", "vf_coef", "kl_penalty", "adap_kl_ctrl"):
    assert s[name] == getattr(ours, name), name


def test_schedule_warms_up_then_alternates_blocks():
  plan = ppo_throughput.schedule(warmup=2, steps=5, block=2)
  assert plan[:2] == [("ours", 2, False), ("trl", 2, False)]
  assert plan[2:] == [("ours", 2, True), ("trl", 2, True), ("ours", 2, True), ("trl", 2, True),
                      ("ours", 1, True), ("trl", 1, True)]
  for side in ("ours", "trl"):
    assert sum(k for s, k, timed in plan if s == side and timed) == 5


def test_benchmark_flags():
  quick = ppo_throughput.parse_args(["--quick"])
  assert (quick.warmup, quick.steps, quick.block, quick.reward, quick.no_trl) == (1, 1, 1, "constant", False)
  assert ppo_throughput.parse_args([]).steps == 8
  with pytest.raises(SystemExit):
    ppo_throughput.parse_args(["--warmup=0"])


def test_trl_env_dir_follows_the_cache(monkeypatch, tmp_path):
  monkeypatch.setenv("LLAMALOGUE_CACHE", str(tmp_path))
  assert ppo_throughput.trl_env_dir() == tmp_path / "bench" / "trl-0.8.6"


def test_trl_script_steps_where_its_environment_exists(tmp_path):
  env = ppo_throughput.trl_env_dir()
  marker = env / "llamalogue-pins.json"
  if not marker.exists() or json.loads(marker.read_text()) != list(ppo_throughput.TRL_PINS):
    pytest.skip(f"trl 0.8.6's environment is not built ({env}); benchmarks/ppo_throughput.py builds it")
  from evaluation import testing
  from llamalogue import hf
  tok = testing.make_tokenizer(tmp_path / "tok")
  hf.export(testing.make_model(len(tok)), tmp_path / "hf", tokenizer_dir=tmp_path / "tok")
  ids = [tok(f"*MOT: look at the ball {i} . *CHI:")["input_ids"] for i in range(16)]
  (tmp_path / "q.json").write_text(json.dumps(ids))
  r = subprocess.run([str(env / "bin" / "python"), str(ppo_throughput.TRL_SCRIPT), f"--model={tmp_path / 'hf'}",
                      f"--queries={tmp_path / 'q.json'}", "--threads=1", "--steps=1", "--max_new_tokens=4"],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout)  # one JSON line: everything else went to stderr
  assert out["versions"]["trl"] == "0.8.6" and out["threads"] == 1 and out["dtype"] == "torch.float32"
  assert len(out["step_s"]) == 1 and 1 <= out["response_tokens"][0] <= 4
