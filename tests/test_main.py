"""main.py: config errors are one clear line with a non-zero exit; export works end to end."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_main(*args, timeout=300, env=None):
  e = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", **(env or {}))
  return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout, env=e)


def _one_error_line(proc):
  assert proc.returncode != 0
  lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("error:")]
  assert len(lines) == 1, proc.stderr
  return lines[0]


@pytest.mark.parametrize("args,expect", [
    (["--config=configs/pretrain.py:tiny", "--config.train.batchsize=3"], "--config.train.batchsize"),
    (["--config=configs/pretrain.py:tiny", "--config.train.batch_size=abc"], "batch_size"),
    (["--config=configs/nope.py"], "configs/nope.py"),
    (["--config=configs/export.py", "--config.init_from=/does/not/exist"], "/does/not/exist"),
    (["--config=configs/pretrain.py:tiny", "--config.data.childes=/no/such/corpus.zip"], "/no/such/corpus.zip"),
    (["--config=configs/pretrain.py:tiny", "--config.model.preset=huge"], "config.model.preset"),
])
def test_config_errors_are_one_line(tmp_path, args, expect):
  proc = run_main(*args, f"--workdir={tmp_path}")
  assert expect in _one_error_line(proc)
  assert "Traceback" not in proc.stderr


def test_missing_workdir():
  assert "--workdir" in _one_error_line(run_main("--config=configs/export.py"))


def test_export_from_hf_dir(tmp_path):
  from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
  torch.manual_seed(0)
  src = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=36, intermediate_size=40, num_hidden_layers=1,
                                     num_attention_heads=3, num_key_value_heads=1, tie_word_embeddings=True)).eval()
  src.save_pretrained(tmp_path / "src")
  proc = run_main("--config=configs/export.py", f"--config.init_from={tmp_path / 'src'}", f"--workdir={tmp_path / 'out'}")
  assert proc.returncode == 0, proc.stderr
  out = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
  x = torch.tensor([[1, 2, 3, 4, 5]])
  with torch.no_grad():
    np.testing.assert_allclose(out(x).logits.numpy(), src(x).logits.numpy(), atol=1e-5)
