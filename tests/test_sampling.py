"""The sampler against Hugging Face: greedy = `generate(do_sample=False)` token for token, log-probs =
a fresh full forward (filtered by transformers' own warpers), stop strings cut exactly, no recompiles."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                    TopPLogitsWarper)

from evaluation import testing
from llamalogue import hf, sampling
from llamalogue.errors import LlamalogueError

ROOT = pathlib.Path(__file__).resolve().parent.parent
V = 97
CASES = {
    "mha_untied": dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
    "gqa_tied": dict(hidden_size=72, num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True,
                     rope_theta=100_000.0),
}
LENGTHS = (3, 8, 5)      # prompts of different lengths in one batch
PAD, NEW = 0, 12


def _random_hf(path, **kw):
  """A random HF Llama with peaked predictions (large init), saved to `path` and imported by llamalogue.hf."""
  torch.manual_seed(0)
  cfg = LlamaConfig(vocab_size=V, intermediate_size=96, num_hidden_layers=2, max_position_embeddings=64,
                    rms_norm_eps=1e-6, initializer_range=0.3, bos_token_id=None, eos_token_id=None,
                    pad_token_id=PAD, **kw)
  ref = LlamaForCausalLM(cfg).eval()
  ref.save_pretrained(path)
  ours, _ = hf.load(str(path))
  return ref, ours


@pytest.fixture(scope="module", params=sorted(CASES))
def models(request, tmp_path_factory):
  return _random_hf(tmp_path_factory.mktemp(request.param) / "hf", **CASES[request.param])


def _prompts():
  rs = np.random.RandomState(1)
  rows = [rs.randint(1, V, n).tolist() for n in LENGTHS]
  p = max(LENGTHS)
  left = np.full((len(rows), p), PAD, np.int32)
  for b, r in enumerate(rows):
    left[b, p - len(r):] = r
  return rows, left, np.array(LENGTHS, np.int32)


def _sample(model, rng=0, **kw):
  graphdef, params = nnx.split(model)
  _, left, lens = _prompts()
  kw.setdefault("max_new_tokens", NEW)
  out = sampling.sample_tokens(params, graphdef, jnp.asarray(left), jnp.asarray(lens), jax.random.key(rng),
                               pad_id=PAD, **kw)
  return jax.device_get(out)


def _hf_greedy(ref, eos=None):
  _, left, lens = _prompts()
  mask = (np.arange(left.shape[1])[None] >= left.shape[1] - lens[:, None]).astype(np.int64)
  with torch.no_grad():
    out = ref.generate(torch.tensor(left, dtype=torch.long), attention_mask=torch.tensor(mask), do_sample=False,
                       max_new_tokens=NEW, pad_token_id=PAD, eos_token_id=eos)
  out = out[:, left.shape[1]:].numpy()
  return np.pad(out, ((0, 0), (0, NEW - out.shape[1])), constant_values=PAD)   # HF stops when all rows ended


def test_greedy_equals_hf_generate(models):
  ref, ours = models
  want = _hf_greedy(ref)
  got = _sample(ours, greedy=True)
  np.testing.assert_array_equal(got["tokens"], want)
  assert got["lengths"].tolist() == [NEW] * len(LENGTHS) and not got["finished"].any()
  # each prompt alone (no padding) gives the same tokens as in the batch
  rows, _, _ = _prompts()
  with torch.no_grad():
    for b, r in enumerate(rows):
      alone = ref.generate(torch.tensor([r]), do_sample=False, max_new_tokens=NEW, pad_token_id=PAD)
      np.testing.assert_array_equal(got["tokens"][b], alone[0, len(r):].numpy())
  # EOS: a token row 0 produces mid-way; rows end there and are padded, as in HF
  eos = int(want[0, NEW // 2])
  want_eos = _hf_greedy(ref, eos=eos)
  got_eos = _sample(ours, greedy=True, eos_id=eos)
  np.testing.assert_array_equal(got_eos["tokens"], want_eos)
  first = [list(r).index(eos) + 1 if eos in r else NEW for r in want]
  assert got_eos["lengths"].tolist() == first
  assert got_eos["finished"].tolist() == [f < NEW or want[b, -1] == eos for b, f in enumerate(first)]


def _warped_logprobs(ours, tokens, lengths, temperature, top_k, top_p):
  """(model log-probs, sampling log-probs) of each generated token from one full forward of prompt + tokens."""
  rows, _, _ = _prompts()
  seqs = [r + tokens[b, :int(lengths[b])].tolist() for b, r in enumerate(rows)]
  right = np.full((len(seqs), max(map(len, seqs))), PAD, np.int32)       # right-padded: causal, pads come after
  for b, seq in enumerate(seqs):
    right[b, :len(seq)] = seq
  all_logits = np.asarray(ours(jnp.asarray(right)))
  model_lp, sample_lp = [], []
  for b, r in enumerate(rows):
    n = int(lengths[b])
    logits = all_logits[b, len(r) - 1:len(r) - 1 + n]                        # predicts tokens[b, :n]
    scores = torch.tensor(logits)
    for warper in ([TemperatureLogitsWarper(temperature)] + ([TopKLogitsWarper(top_k)] if top_k else []) +
                   ([TopPLogitsWarper(top_p)] if top_p < 1 else [])):
      scores = warper(None, scores)
    picked = torch.tensor(tokens[b, :n])[:, None]
    model_lp.append(torch.log_softmax(torch.tensor(logits), -1).gather(1, picked)[:, 0].numpy())
    sample_lp.append(torch.log_softmax(scores, -1).gather(1, picked)[:, 0].numpy())
  return model_lp, sample_lp


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 0.8), (1.3, 5, 0.9)])
def test_logprobs_equal_a_fresh_forward(models, temperature, top_k, top_p):
  _, ours = models
  got = _sample(ours, rng=3, temperature=temperature, top_k=top_k, top_p=top_p)
  model_lp, sample_lp = _warped_logprobs(ours, got["tokens"], got["lengths"], temperature, top_k, top_p)
  for b in range(len(LENGTHS)):
    n = int(got["lengths"][b])
    np.testing.assert_allclose(got["model_logprobs"][b, :n], model_lp[b], atol=1e-4)
    np.testing.assert_allclose(got["logprobs"][b, :n], sample_lp[b], atol=1e-4)
    assert np.all(np.isfinite(sample_lp[b]))           # every sampled token survived the filters


def test_seed_reproduces_and_filters_that_keep_one_token_are_greedy(models):
  _, ours = models
  a, b, c = _sample(ours, rng=5), _sample(ours, rng=5), _sample(ours, rng=6)
  np.testing.assert_array_equal(a["tokens"], b["tokens"])
  np.testing.assert_array_equal(a["logprobs"], b["logprobs"])
  assert not np.array_equal(a["tokens"], c["tokens"])
  greedy = _sample(ours, greedy=True)["tokens"]
  np.testing.assert_array_equal(_sample(ours, rng=7, top_k=1)["tokens"], greedy)
  np.testing.assert_array_equal(_sample(ours, rng=7, top_p=1e-6)["tokens"], greedy)


def test_new_params_and_settings_do_not_recompile(models):
  _, ours = models
  graphdef, params = nnx.split(ours)
  _, left, lens = _prompts()
  args = (jnp.asarray(left), jnp.asarray(lens))
  sampling.sample_tokens(params, graphdef, *args, jax.random.key(0), max_new_tokens=NEW, top_p=0.9)
  before = sampling._sample_tokens._cache_size()
  other = jax.tree.map(lambda x: x * 1.01, params)
  for kw in (dict(top_p=0.9), dict(greedy=True), dict(temperature=2, top_k=3, eos_id=5, pad_id=1)):
    out = sampling.sample_tokens(other, graphdef, *args, jax.random.key(1), max_new_tokens=NEW, **kw)
    assert out["tokens"].shape == (len(LENGTHS), NEW)
  assert sampling._sample_tokens._cache_size() == before


def test_sort_free_filters_equal_hf_warpers():
  logits = np.random.RandomState(0).randn(6, 50).astype(np.float32) * 3
  logits[1, :10] = logits[1, 0]                       # ties
  logits[2, 5:] = -np.inf                             # already filtered
  z = jnp.asarray(logits)
  for top_p in (0.05, 0.5, 0.9, 0.999):
    want = np.isfinite(TopPLogitsWarper(top_p)(None, torch.tensor(logits)).numpy())
    got = np.asarray(sampling.top_p_keep(jax.nn.softmax(z, -1), jnp.float32(top_p))) & np.isfinite(logits)
    np.testing.assert_array_equal(got[[0, 2, 3, 4, 5]], want[[0, 2, 3, 4, 5]])
    assert got[1].sum() >= want[1].sum()               # tied tokens at the threshold are kept together
  for k in (1, 3, 10, 49, 50):
    want = np.isfinite(TopKLogitsWarper(k)(None, torch.tensor(logits)).numpy())   # keeps ties too
    np.testing.assert_array_equal(np.asarray(sampling.top_k_keep(z, jnp.int32(k))) & np.isfinite(logits), want)


def test_inverse_cdf_draws_the_distribution():
  rs = np.random.RandomState(0)
  w = rs.gamma(0.5, size=(2, 300)).astype(np.float32)
  w[:, rs.rand(300) < 0.3] = 0.0                      # filtered tokens are never drawn
  u = jax.random.uniform(jax.random.key(0), (20_000, 2))
  draws = np.asarray(jax.vmap(lambda u_B: sampling.inverse_cdf(jnp.asarray(w), u_B))(u))   # [draws, rows]
  for b in range(2):
    p = w[b] / w[b].sum()
    freq = np.bincount(draws[:, b], minlength=300) / len(draws)
    assert np.all(freq[p == 0] == 0)
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / len(draws)) + 1e-4)


# ---------------------------------------------------------------------------- text

@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
  """A random model of ours with peaked predictions and a byte-level BPE tokenizer (no BOS, EOS = pad)."""
  tok_dir = tmp_path_factory.mktemp("tokenizer")
  tok = testing.make_tokenizer(tok_dir)
  return testing.make_model(len(tok), seed=3, init_std=0.5), tok, tok_dir


def test_stop_strings_cut_exactly(text_model):
  model, tok, _ = text_model
  prompts = ["*MOT: what is that ? *CHI:", "*MOT: pull the string ."]
  full = sampling.generate(model, tok, prompts, rng=0, max_new_tokens=16, greedy=True, stop=(), batch_size=4)
  for g in full:
    assert g.text == tok.decode(g.token_ids, skip_special_tokens=True) and g.num_tokens == len(g.token_ids)
  for g, p in zip(full, prompts):                      # each prompt alone: the same tokens as in the batch
    alone = sampling.generate(model, tok, [p], rng=0, max_new_tokens=16, greedy=True, stop=(), batch_size=4)[0]
    assert alone.token_ids == g.token_ids
  text = full[0].text
  assert len(text) > 6
  stop = text[4:7]                                     # a stop string surely in the greedy text
  cut = sampling.generate(model, tok, prompts[:1], rng=0, max_new_tokens=16, greedy=True, stop=(stop,),
                          batch_size=4)[0]
  assert cut.text == text[:text.index(stop)] and cut.finish == "stop"
  assert cut.token_ids == full[0].token_ids[:len(cut.token_ids)]
  assert len(tok.decode(cut.token_ids[:cut.num_tokens])) <= len(cut.text)
  assert len(tok.decode(cut.token_ids[:cut.num_tokens + 1])) > len(cut.text)


def test_speaker_tag_cut(text_model):
  _, tok, _ = text_model
  ids = tok(" it is a ball . *MOT: no it is not .\n")["input_ids"]
  stop = ("\n",) + sampling.speaker_stops(["*MOT: what is that ? *CHI:"])
  text, n, finish = sampling._cut(tok, ids, stop, finished=True, eos_id=-1)
  assert text == " it is a ball . " and finish == "stop"
  assert tok.decode(ids[:n]) == " it is a ball ." and n < len(ids)
  seqs = sampling.stop_sequences(tok, stop)
  assert any(list(s[s >= 0]) == tok(" *MOT:")["input_ids"] for s in seqs)
  assert sampling.first_stop("a\nb *CHI: c", stop) == 1


def test_sample_mode_prints_and_bad_init_from_is_one_line(tmp_path, text_model, capsys):
  model, _, tok_dir = text_model
  hf.export(model, tmp_path / "hf", tokenizer_dir=tok_dir)
  from configs import sample
  config = sample.get_config()
  config.init_from, config.num_samples, config.max_new_tokens = str(tmp_path / "hf"), 3, 8
  sampling.run(config, str(tmp_path / "out"))
  printed = capsys.readouterr().out
  assert config.prompt in printed and "[2]" in printed
  assert len((tmp_path / "out" / "samples.jsonl").read_text().splitlines()) == 3
  proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "--config=configs/sample.py",
                         f"--config.init_from={tmp_path / 'nope'}", f"--workdir={tmp_path / 'w'}"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert proc.returncode == 2 and len(errors) == 1 and "nope" in errors[0]


def test_bad_requests_are_clear_errors(text_model):
  model, tok, _ = text_model
  with pytest.raises(LlamalogueError, match="prompt 1: empty"):
    sampling.generate(model, tok, ["*MOT: hi", ""], rng=0)
  with pytest.raises(LlamalogueError, match="max_seq_len"):
    sampling.generate(model, tok, ["*MOT: hi"], rng=0, max_new_tokens=5000)
  with pytest.raises(LlamalogueError, match="top_p"):
    sampling.generate(model, tok, ["*MOT: hi"], rng=0, top_p=0.0)
