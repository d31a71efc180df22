"""Model: parameter counts, causality by gradients, bf16 compute, loss mask."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llamalogue import model as M


@pytest.mark.parametrize("name", sorted(M.PRESETS))
def test_param_count_matches_model(name):
  cfg = M.PRESETS[name]
  abstract = nnx.eval_shape(lambda: M.Llama(cfg, rngs=nnx.Rngs(0)))
  actual = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert M.count_params(cfg) == actual


def test_study_model_is_135m():
  cfg = M.PRESETS["llamalogue_135m"]
  h, i, L, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.vocab_size
  assert M.count_params(cfg) == L * (4 * h * h + 3 * h * i + 2 * h) + 2 * V * h + h == 134_810_624


def _small(**kw):
  base = dict(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=48)
  base.update(kw)
  return M.LlamaConfig(**base)


def test_causality_by_gradients():
  model = M.Llama(_small(), rngs=nnx.Rngs(0))
  emb_table = model.embed_tokens[...]
  tokens = jnp.array([[3, 14, 15, 9, 26, 5, 35, 8]])
  x = jnp.take(emb_table, tokens, axis=0)

  def logits_from_embeddings(x_BxLxD, t):
    # The sum of logits at position t, as a function of all input embeddings.
    graphdef, state = nnx.split(model)
    m = nnx.merge(graphdef, state)
    cos, sin = M.rope_cos_sin(jnp.arange(8)[None], m.cfg.dim_per_head, m.cfg.rope_theta)
    return (m.lm_head(m.norm(m.run_layers(x_BxLxD, cos, sin)))[0, t]).sum()

  grad = jax.jit(jax.grad(logits_from_embeddings))      # t traced: one compile for all 8 positions
  for t in range(8):
    g = grad(x, jnp.int32(t))
    norms = jnp.abs(g[0]).sum(-1)
    assert jnp.all(norms[t + 1:] == 0), f"logit {t} depends on a later token"
    assert jnp.all(norms[: t + 1] > 0), f"logit {t} ignores an earlier token"


def test_changing_a_token_changes_no_earlier_logit():
  model = M.Llama(_small(), rngs=nnx.Rngs(1))
  a = jnp.array([[1, 2, 3, 4, 5, 6]])
  b = a.at[0, 3].set(40)
  la, lb = model(a), model(b)
  np.testing.assert_array_equal(np.asarray(la[:, :3]), np.asarray(lb[:, :3]))
  assert not np.allclose(np.asarray(la[:, 3:]), np.asarray(lb[:, 3:]))


def test_bf16_compute_close_to_fp32_and_params_stay_fp32():
  cfg = _small()
  m32 = M.Llama(cfg, rngs=nnx.Rngs(0))
  m16 = M.Llama(dataclasses.replace(cfg, dtype="bfloat16"), rngs=nnx.Rngs(0))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(m16, nnx.Param)))
  tokens = jnp.array([[1, 2, 3, 4, 5, 6, 7, 8]])
  l32, l16 = m32(tokens), m16(tokens)
  assert l16.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(l16), np.asarray(l32), atol=5e-2)


def test_loss_mask_and_sum():
  cfg = _small()
  graphdef, state = nnx.split(M.Llama(cfg, rngs=nnx.Rngs(0)))
  params = M.pure_dict(state)
  inputs = jnp.array([[1, 2, 3, 4]])
  targets = jnp.array([[2, 3, 4, 5]])
  full = {"inputs": inputs, "targets": targets, "loss_mask": jnp.ones((1, 4))}
  half = dict(full, loss_mask=jnp.array([[1.0, 1.0, 0.0, 0.0]]))
  s_full, n_full = M.next_token_loss(params, graphdef, full)
  s_half, n_half = M.next_token_loss(params, graphdef, half)
  assert float(n_full) == 4 and float(n_half) == 2
  logits = nnx.merge(graphdef, params)(inputs)
  lp = jax.nn.log_softmax(logits, -1)
  manual = -(lp[0, 0, 2] + lp[0, 1, 3])
  np.testing.assert_allclose(float(s_half), float(manual), rtol=1e-6)
  # Random init: loss near ln V.
  assert abs(float(s_full / n_full) - np.log(cfg.vocab_size)) < 0.5


def test_bad_config_names_the_field():
  from llamalogue.errors import ConfigError
  with pytest.raises(ConfigError, match="num_kv_heads"):
    _small(num_heads=4, num_kv_heads=3).validate()


def test_cached_forward_equals_full_forward():
  """Prefill + decode steps of 1 and 2 tokens through the KV cache = one full forward, per row,
  with rows of different lengths left-padded in one batch (padding has position -1)."""
  cfg = _small(initializer_range=0.3)
  model = M.Llama(cfg, rngs=nnx.Rngs(2))
  rs = np.random.RandomState(0)
  lengths, steps, p = [4, 7], [1, 2, 1], 7
  rows = [rs.randint(0, cfg.vocab_size, n + sum(steps)) for n in lengths]
  prompt = np.zeros((2, p), np.int32)
  for b, (r, n) in enumerate(zip(rows, lengths)):
    prompt[b, p - n:] = r[:n]
  pos = np.arange(p)[None] - (p - np.array(lengths))[:, None]
  cache = M.init_cache(cfg, 2, p + sum(steps))
  logits, cache = model(jnp.asarray(prompt), jnp.asarray(np.where(pos >= 0, pos, -1)), cache)
  got = [[logits[b, p - n:]] for b, n in enumerate(lengths)]
  done = 0
  for s in steps:
    new = np.stack([r[n + done:n + done + s] for r, n in zip(rows, lengths)])
    new_pos = np.array(lengths)[:, None] + done + np.arange(s)
    logits, cache = model(jnp.asarray(new), jnp.asarray(new_pos), cache)
    for b in range(2):
      got[b].append(logits[b])
    done += s
  assert int(cache["end"]) == p + sum(steps)
  for b, r in enumerate(rows):
    full = model(jnp.asarray(r[None]))[0]
    np.testing.assert_allclose(np.concatenate(got[b]), np.asarray(full), atol=2e-5, rtol=0)


def _per_layer_forward(model, tokens_BxL):
  """The reference: each layer's parameters sliced out of the stack and applied in a Python loop."""
  graphdef, stacked = nnx.split(model.layers)
  cos, sin = M.rope_cos_sin(jnp.arange(tokens_BxL.shape[1])[None], model.cfg.dim_per_head, model.cfg.rope_theta)
  h = jnp.take(model.embed_tokens[...], tokens_BxL, axis=0)
  for i in range(model.cfg.num_layers):
    h = nnx.merge(graphdef, jax.tree.map(lambda a: a[i], stacked))(h, cos, sin)
  return model.logits(model.norm(h))


def test_layers_are_stacked():
  cfg = _small(num_layers=3)
  params = M.pure_dict(nnx.state(M.Llama(cfg, rngs=nnx.Rngs(0))))
  assert params["layers"]["self_attn"]["q_proj"]["kernel"].shape == (3, 32, 32)
  assert params["layers"]["self_attn"]["k_proj"]["kernel"].shape == (3, 32, 16)
  assert params["layers"]["input_layernorm"]["weight"].shape == (3, 32)
  cache = M.init_cache(cfg, 2, 8)
  assert cache["k"].shape == cache["v"].shape == (3, 2, 2, 8, 8)


@pytest.mark.parametrize("loop", ["scan", "unrolled"])
def test_layer_loops_give_identical_values(loop, monkeypatch):
  """The rolled scan and the unrolled one equal a per-layer Python loop: forward, cached forward, gradients."""
  cfg = _small(num_layers=3)
  model = M.Llama(cfg, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(model)
  tokens = jnp.array([[1, 2, 3, 4, 5, 6]])
  batch = {"inputs": tokens, "targets": tokens, "loss_mask": jnp.ones((1, 6))}
  ref_full = _per_layer_forward(model, tokens)
  ref_grad = jax.grad(lambda p: M.next_token_loss(p, graphdef, batch)[0])(M.pure_dict(params))
  monkeypatch.setenv("LLAMALOGUE_LAYERS", loop)
  full = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))(params, tokens)
  cached = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t, None, M.init_cache(cfg, 1, 8))[0])(params, tokens)
  grad = jax.jit(jax.grad(lambda p: M.next_token_loss(p, graphdef, batch)[0]))(M.pure_dict(params))
  np.testing.assert_allclose(np.asarray(full), np.asarray(ref_full), atol=2e-6, rtol=0)
  np.testing.assert_allclose(np.asarray(cached), np.asarray(ref_full), atol=2e-5, rtol=0)
  for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
