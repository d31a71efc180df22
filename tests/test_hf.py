"""Hugging Face round trip: random LlamaForCausalLM -> import -> logits equal -> export -> reload."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from llamalogue import hf
from llamalogue.errors import LlamalogueError

CASES = {
    "mha_untied": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
    "gqa_tied_9_3": dict(hidden_size=72, num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                         rope_theta=100_000.0),
    "gqa_untied_odd": dict(hidden_size=60, num_attention_heads=5, num_key_value_heads=1, tie_word_embeddings=False),
}


def _random_hf(tmp_path, **kw):
  torch.manual_seed(0)
  cfg = LlamaConfig(vocab_size=97, intermediate_size=80, num_hidden_layers=2, max_position_embeddings=64,
                    rms_norm_eps=1e-6, **kw)
  model = LlamaForCausalLM(cfg).eval()
  with torch.no_grad():  # make norms non-trivial so a mix-up would show
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(tmp_path / "hf")
  return model


def _logits_torch(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.numpy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip(tmp_path, case):
  ref_model = _random_hf(tmp_path, **CASES[case])
  tokens = np.random.RandomState(0).randint(0, 97, (3, 17))
  ref = _logits_torch(ref_model, tokens)

  ours, tok = hf.load(str(tmp_path / "hf"))
  assert tok is None
  got = np.asarray(ours(jnp.asarray(tokens)))
  np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)

  hf.export(ours, tmp_path / "out")
  back = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
  np.testing.assert_allclose(_logits_torch(back, tokens), got, atol=1e-5, rtol=0)
  if CASES[case]["tie_word_embeddings"]:
    assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("style", ["transformers4", "transformers5"])
def test_both_config_key_styles(tmp_path, style):
  _random_hf(tmp_path, **CASES["gqa_tied_9_3"])
  path = tmp_path / "hf" / "config.json"
  cfg = json.loads(path.read_text())
  for k in ("rope_theta", "rope_parameters", "rope_scaling", "torch_dtype", "dtype"):
    cfg.pop(k, None)
  if style == "transformers4":
    cfg.update(rope_theta=100_000.0, torch_dtype="float32")
  else:
    cfg.update(rope_parameters={"rope_type": "default", "rope_theta": 100_000.0}, dtype="float32")
  path.write_text(json.dumps(cfg))
  model, _ = hf.load(str(tmp_path / "hf"))
  assert model.cfg.rope_theta == 100_000.0 and model.cfg.num_kv_heads == 3


def test_bad_inputs_name_the_path(tmp_path):
  with pytest.raises(LlamalogueError, match="does not exist"):
    hf.load(str(tmp_path / "nope"))
  (tmp_path / "d").mkdir()
  (tmp_path / "d" / "config.json").write_text("{not json")
  with pytest.raises(LlamalogueError, match="config.json"):
    hf.load(str(tmp_path / "d"))
  _random_hf(tmp_path, **CASES["mha_untied"])
  (tmp_path / "hf" / "model.safetensors").write_bytes(b"garbage")
  with pytest.raises(LlamalogueError, match="safetensors"):
    hf.load(str(tmp_path / "hf"))


def test_hf_repo_offline_is_a_clear_error(monkeypatch):
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(LlamalogueError, match="hf:nobody/nothing"):
    hf.load("hf:nobody/nothing")
