"""Both kernel sets of ops.py equal the plain formulation: values and gradients, MHA/GQA/MQA, masks,
chunking, float32 and bfloat16. The accelerator set runs here through its XLA fallback."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llamalogue import model as M
from llamalogue import ops, step
from llamalogue.errors import ConfigError


def _reference_rope(x, cos, sin):
  """HF's apply_rotary_pos_emb, written out: x·cos + rotate_half(x)·sin."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


def _reference_attention(q, k, v, cos, sin):
  return jax.nn.dot_product_attention(_reference_rope(q, cos, sin), _reference_rope(k, cos, sin), v, is_causal=True)


KERNELS = ["cpu", "accelerator"]


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("heads,groups", [(4, 4), (6, 2), (5, 1)])
def test_rope_attention_matches_reference(heads, groups, kernels):
  b, l, d = 3, 12, 8
  ks = jax.random.split(jax.random.key(heads), 5)
  q = jax.random.normal(ks[0], (b, l, heads, d))
  k = jax.random.normal(ks[1], (b, l, groups, d))
  v = jax.random.normal(ks[2], (b, l, groups, d))
  r = jax.random.normal(ks[3], (b, l, heads, d))
  positions = jnp.arange(l)[None] + jnp.array([[0], [5], [17]])      # rows start at different offsets
  cos, sin = M.rope_cos_sin(positions, d, 10_000.0)
  with jax.default_matmul_precision("highest"):
    ref = jax.value_and_grad(lambda *a: jnp.sum(_reference_attention(*a, cos, sin) * r), (0, 1, 2))(q, k, v)
    new = jax.value_and_grad(lambda *a: jnp.sum(ops.rope_attention(*a, cos, sin, kernels=kernels) * r),
                             (0, 1, 2))(q, k, v)
    out_ref = _reference_attention(q, k, v, cos, sin)
    out_new = jax.jit(functools.partial(ops.rope_attention, kernels=kernels))(q, k, v, cos, sin)
  np.testing.assert_allclose(out_new, out_ref, atol=2e-6)
  np.testing.assert_allclose(new[0], ref[0], rtol=1e-5)
  for g_new, g_ref in zip(new[1], ref[1]):
    np.testing.assert_allclose(g_new, g_ref, atol=1e-5)


@pytest.mark.parametrize("kernels", KERNELS)
def test_rope_attention_is_causal(kernels):
  b, l, h, d = 1, 6, 2, 4
  q, k, v = (jax.random.normal(jax.random.key(i), (b, l, h, d)) for i in range(3))
  cos, sin = M.rope_cos_sin(jnp.arange(l)[None], d, 10_000.0)
  out = ops.rope_attention(q, k, v, cos, sin, kernels=kernels)
  k2, v2 = k.at[:, 4:].set(7.0), v.at[:, 4:].set(-3.0)                 # change only the future of position 3
  out2 = ops.rope_attention(q, k2, v2, cos, sin, kernels=kernels)
  np.testing.assert_array_equal(out[:, :4], out2[:, :4])
  assert not np.allclose(out[:, 4:], out2[:, 4:])


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("heads,groups", [(4, 4), (4, 2)])
def test_rope_attention_bfloat16_matches_reference(heads, groups, kernels):
  """bf16 in and out: values and gradients within bf16 rounding of the float32 reference on the same inputs."""
  b, l, d = 2, 16, 16
  ks = jax.random.split(jax.random.key(7), 4)
  q, k, v, r = (jax.random.normal(kk, (b, l, n, d)).astype(jnp.bfloat16)
                for kk, n in zip(ks, (heads, groups, groups, heads)))
  cos, sin = M.rope_cos_sin(jnp.arange(l)[None].repeat(b, 0), d, 10_000.0)
  f32 = lambda *a: tuple(x.astype(jnp.float32) for x in a)
  with jax.default_matmul_precision("highest"):
    ref = jax.value_and_grad(lambda *a: jnp.sum(_reference_attention(*a, cos, sin) * r.astype(jnp.float32)),
                             (0, 1, 2))(*f32(q, k, v))
  out16 = ops.rope_attention(q, k, v, cos, sin, kernels=kernels)
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(out16.astype(jnp.float32), _reference_attention(*f32(q, k, v), cos, sin), atol=0.05)
  grads = jax.grad(lambda *a: jnp.sum((ops.rope_attention(*a, cos, sin, kernels=kernels) * r).astype(jnp.float32)),
                   (0, 1, 2))(q, k, v)
  for g16, g32 in zip(grads, ref[1]):
    assert g16.dtype == jnp.bfloat16
    assert float(jnp.linalg.norm(g16.astype(jnp.float32) - g32) / jnp.linalg.norm(g32)) < 0.02


def _reference_logprobs(h, w, targets):
  logits = jnp.einsum("bld,dv->blv", h.astype(jnp.float32), w.astype(jnp.float32))
  return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets[..., None], axis=-1)[..., 0]


def _reference_ce(h, w, targets, mask):
  return jnp.sum(-_reference_logprobs(h, w, targets) * mask)


def _loss(h, w, targets, mask, **kw):
  return -jnp.sum(ops.token_logprobs(h, w, targets, **kw)["logprobs"] * mask)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("chunk_tokens", [1, 7, 24, 10_000])
def test_token_logprobs_loss_matches_reference(chunk_tokens, kernels):
  b, l, d, v = 3, 10, 8, 37
  ks = jax.random.split(jax.random.key(chunk_tokens), 4)
  h = jax.random.normal(ks[0], (b, l, d))
  w = jax.random.normal(ks[1], (d, v))
  targets = jax.random.randint(ks[2], (b, l), 0, v)
  mask = (jax.random.uniform(ks[3], (b, l)) > 0.3).astype(jnp.float32)
  with jax.default_matmul_precision("highest"):
    ref = jax.value_and_grad(_reference_ce, (0, 1))(h, w, targets, mask)
    fused = lambda h, w: _loss(h, w, targets, mask, chunk_tokens=chunk_tokens, kernels=kernels)
    new = jax.value_and_grad(fused, (0, 1))(h, w)
    primal = jax.jit(fused)(h, w)                                    # the no-gradient path
  np.testing.assert_allclose(new[0], ref[0], rtol=1e-6)
  np.testing.assert_allclose(primal, ref[0], rtol=1e-6)
  for g_new, g_ref in zip(new[1], ref[1]):
    np.testing.assert_allclose(g_new, g_ref, atol=2e-6)
  masked = np.asarray(mask) == 0
  assert np.all(np.asarray(new[1][0])[masked] == 0)                   # masked positions get no gradient


@pytest.mark.parametrize("kernels", KERNELS)
def test_token_logprobs_statistics_and_any_cotangent(kernels):
  """Per-token values, entropy, logz and a masked log-probability equal the full-logit formulas; the
  gradient for an arbitrary per-token cotangent (DPO, PPO) equals the reference's."""
  b, l, d, v = 2, 9, 6, 23
  ks = jax.random.split(jax.random.key(7), 5)
  h, w = jax.random.normal(ks[0], (b, l, d)), jax.random.normal(ks[1], (d, v))
  targets = jax.random.randint(ks[2], (b, l), 0, v)
  mask_V = jax.random.uniform(ks[3], (v,)) > 0.5
  g = jax.random.normal(ks[4], (b, l))
  with jax.default_matmul_precision("highest"):
    out = ops.token_logprobs(h, w, targets, entropy=True, mask_V=mask_V, chunk_tokens=6, kernels=kernels)
    logits = jnp.einsum("bld,dv->blv", h, w)
    logp = jax.nn.log_softmax(logits, axis=-1)
    np.testing.assert_allclose(out["logprobs"], _reference_logprobs(h, w, targets), atol=2e-6)
    np.testing.assert_allclose(out["logz"], jax.nn.logsumexp(logits, axis=-1), atol=2e-6)
    np.testing.assert_allclose(out["entropy"], -jnp.sum(jnp.exp(logp) * logp, axis=-1), atol=2e-6)
    np.testing.assert_allclose(out["masked_logprob"], jax.nn.logsumexp(jnp.where(mask_V, logp, -jnp.inf), -1),
                               atol=2e-6)
    f = lambda h, w: jnp.sum(g * ops.token_logprobs(h, w, targets, chunk_tokens=6, kernels=kernels)["logprobs"])
    ref_g = jax.grad(lambda h, w: jnp.sum(g * _reference_logprobs(h, w, targets)), (0, 1))(h, w)
    new_g = jax.grad(f, (0, 1))(h, w)
  for a, c in zip(new_g, ref_g):
    np.testing.assert_allclose(a, c, atol=5e-6)
  # the statistics carry no gradient
  stat_g = jax.grad(lambda h: jnp.sum(ops.token_logprobs(h, w, targets, entropy=True, kernels=kernels)["entropy"]))(h)
  assert not np.any(np.asarray(stat_g))


def test_kl_divergence_matches_full_logits():
  ks = jax.random.split(jax.random.key(1), 4)
  h, hr = jax.random.normal(ks[0], (2, 6, 5)), jax.random.normal(ks[1], (2, 6, 5))
  w, wr = jax.random.normal(ks[2], (5, 11)), jax.random.normal(ks[3], (5, 11))
  with jax.default_matmul_precision("highest"):
    logp = jax.nn.log_softmax(jnp.einsum("bld,dv->blv", h, w), -1)
    logq = jax.nn.log_softmax(jnp.einsum("bld,dv->blv", hr, wr), -1)
    want = jnp.sum(jnp.exp(logp) * (logp - logq), -1)
    got = ops.kl_divergence(h, w, hr, wr, chunk_tokens=4)
  np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.mark.parametrize("kernels", KERNELS)
def test_token_logprobs_bfloat16_matches_reference(kernels):
  """bf16 hidden states and head: loss and gradients within bf16 rounding of the float32 reference."""
  b, l, d, v = 2, 16, 32, 300
  ks = jax.random.split(jax.random.key(3), 4)
  h = jax.random.normal(ks[0], (b, l, d)).astype(jnp.bfloat16)
  w = (0.3 * jax.random.normal(ks[1], (d, v))).astype(jnp.bfloat16)
  targets = jax.random.randint(ks[2], (b, l), 0, v)
  mask = (jax.random.uniform(ks[3], (b, l)) > 0.2).astype(jnp.float32)
  with jax.default_matmul_precision("highest"):
    ref_v, ref_g = jax.value_and_grad(_reference_ce, (0, 1))(h.astype(jnp.float32), w.astype(jnp.float32),
                                                              targets, mask)
  loss, grads = jax.value_and_grad(lambda h, w: _loss(h, w, targets, mask, chunk_tokens=8, kernels=kernels),
                                   (0, 1))(h, w)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, ref_v, rtol=5e-3)
  for g16, g32 in zip(grads, ref_g):
    assert g16.dtype == jnp.bfloat16
    assert float(jnp.linalg.norm(g16.astype(jnp.float32) - g32) / jnp.linalg.norm(g32)) < 0.02


@pytest.mark.parametrize("kernels", KERNELS)
def test_token_logprobs_gradient_scales_with_cotangent(kernels):
  h, w = jax.random.normal(jax.random.key(0), (2, 4, 3)), jax.random.normal(jax.random.key(1), (3, 5))
  t, m = jnp.zeros((2, 4), jnp.int32), jnp.ones((2, 4))
  g1 = jax.grad(lambda h: _loss(h, w, t, m, kernels=kernels))(h)
  g3 = jax.grad(lambda h: -3.0 * _loss(h, w, t, m, kernels=kernels))(h)
  np.testing.assert_allclose(g3, -3.0 * g1, rtol=1e-6)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("tie", [False, True])
def test_model_loss_equals_logits_loss(tie, kernels, monkeypatch):
  """next_token_loss (fused head) = the loss computed from the model's logits, values and gradients;
  the kernel set is picked by $LLAMALOGUE_KERNELS, as on a machine without an accelerator."""
  monkeypatch.setenv("LLAMALOGUE_KERNELS", kernels)
  cfg = dataclasses.replace(M.PRESETS["tiny"], vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                            num_kv_heads=2, intermediate_size=48, tie_embeddings=tie)
  graphdef, params = step.init_params(cfg, 0)
  toks = np.random.RandomState(0).randint(0, 64, (2, 17)).astype(np.int32)
  mask = np.ones((2, 16), np.float32)
  mask[1, 10:] = 0
  batch = {"inputs": toks[:, :-1], "targets": toks[:, 1:], "loss_mask": mask}

  def from_logits(p):
    logits = nnx.merge(graphdef, p)(batch["inputs"])
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), batch["targets"][..., None], -1)[..., 0]
    return jnp.sum(-logp * mask)

  with jax.default_matmul_precision("highest"):
    ref_v, ref_g = jax.jit(jax.value_and_grad(from_logits))(params)
    new_v, new_g = jax.jit(jax.value_and_grad(lambda p: M.next_token_loss(p, graphdef, batch)[0]))(params)
  np.testing.assert_allclose(new_v, ref_v, rtol=1e-6)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(new_g), jax.tree.leaves(ref_g)):
    np.testing.assert_allclose(a, b, atol=2e-6, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("kernels", KERNELS)
def test_model_loss_bfloat16_close_to_float32(kernels, monkeypatch):
  """bf16 compute (accelerators) through both ops: float32 gradients within ~1% of the float32 path."""
  monkeypatch.setenv("LLAMALOGUE_KERNELS", kernels)
  cfg = dataclasses.replace(M.PRESETS["tiny"], vocab_size=64, hidden_size=32, num_layers=2, num_heads=4,
                            num_kv_heads=2, intermediate_size=48)
  graphdef, params = step.init_params(cfg, 0)
  graphdef16, _ = step.init_params(dataclasses.replace(cfg, dtype="bfloat16"), 0)
  toks = np.random.RandomState(0).randint(0, 64, (2, 17)).astype(np.int32)
  batch = {"inputs": toks[:, :-1], "targets": toks[:, 1:], "loss_mask": np.ones((2, 16), np.float32)}
  v32, g32 = jax.value_and_grad(lambda p: M.next_token_loss(p, graphdef, batch)[0])(params)
  v16, g16 = jax.jit(jax.value_and_grad(lambda p: M.next_token_loss(p, graphdef16, batch)[0]))(params)
  np.testing.assert_allclose(v16, v32, rtol=1e-3)
  for a, b in zip(jax.tree.leaves(g32), jax.tree.leaves(g16)):
    assert b.dtype == jnp.float32
    assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a)) < 0.03


def test_kernel_selection(monkeypatch):
  monkeypatch.delenv("LLAMALOGUE_KERNELS", raising=False)
  assert ops.select_kernels() == ("cpu" if jax.default_backend() == "cpu" else "accelerator")
  monkeypatch.setenv("LLAMALOGUE_KERNELS", "accelerator")
  assert ops.select_kernels() == "accelerator"
  assert ops.select_kernels("cpu") == "cpu"                             # the argument wins over the environment
  monkeypatch.setenv("LLAMALOGUE_KERNELS", "tpu")
  with pytest.raises(ConfigError, match="LLAMALOGUE_KERNELS"):
    ops.select_kernels()
  assert ops.attention_implementation(jnp.float32) == "xla"
  assert ops.attention_implementation(jnp.bfloat16) == ("cudnn" if jax.default_backend() == "gpu" else "xla")


def test_attention_choice_per_backend_is_explicit(monkeypatch):
  """TPU: XLA attention (splash does not take the 135M head_dim 64, jax#30861); GPU: cuDNN in 16 bits;
  LLAMALOGUE_ATTENTION overrides; the start-up line says all of it."""
  monkeypatch.delenv("LLAMALOGUE_ATTENTION", raising=False)
  monkeypatch.delenv("LLAMALOGUE_KERNELS", raising=False)
  monkeypatch.delenv("LLAMALOGUE_LAYERS", raising=False)
  impl, why = ops.attention_choice(jnp.bfloat16, 64, backend="tpu")
  assert impl == "xla" and "30861" in why and "head_dim 64" in why
  assert ops.attention_choice(jnp.bfloat16, 128, backend="tpu")[0] == "xla"
  assert ops.attention_choice(jnp.bfloat16, 64, backend="gpu")[0] == "cudnn"
  assert ops.attention_choice(jnp.float32, 64, backend="gpu")[0] == "xla"
  cfg = dataclasses.replace(M.PRESETS["llamalogue_135m"], dtype="bfloat16")
  line = ops.describe_kernels(cfg, backend="tpu")
  assert "\n" not in line and "kernels accelerator (tpu)" in line and "attention xla" in line
  assert "layers scan over 16" in line
  assert "layers unrolled over 16" in ops.describe_kernels(cfg, backend="cpu")
  monkeypatch.setenv("LLAMALOGUE_ATTENTION", "cudnn")
  assert ops.attention_choice(jnp.bfloat16, 64, backend="tpu") == ("cudnn", "set by LLAMALOGUE_ATTENTION")
  monkeypatch.setenv("LLAMALOGUE_ATTENTION", "splash")
  with pytest.raises(ConfigError, match="LLAMALOGUE_ATTENTION"):
    ops.attention_choice(jnp.bfloat16, 64, backend="tpu")
  monkeypatch.delenv("LLAMALOGUE_ATTENTION")
  monkeypatch.setenv("LLAMALOGUE_LAYERS", "unrolled")
  assert "layers unrolled over 16" in ops.describe_kernels(cfg, backend="tpu")
  assert ops.layer_loop(kernels="accelerator") == "unrolled"
  monkeypatch.setenv("LLAMALOGUE_LAYERS", "rolled")
  with pytest.raises(ConfigError, match="LLAMALOGUE_LAYERS"):
    ops.layer_loop()
  monkeypatch.delenv("LLAMALOGUE_LAYERS")
  assert ops.layer_loop(kernels="accelerator") == "scan" and ops.layer_loop(kernels="cpu") == "unrolled"
  with ops.kernels_for("accelerator"):
    assert ops.select_kernels() == "accelerator"
  assert ops.select_kernels() == ("cpu" if jax.default_backend() == "cpu" else "accelerator")


def test_accelerator_attention_goes_through_dot_product_attention(monkeypatch):
  """The accelerator set calls jax.nn.dot_product_attention with the chosen implementation."""
  seen = []
  real = jax.nn.dot_product_attention
  monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
  q = jnp.ones((1, 4, 2, 8))
  cos, sin = M.rope_cos_sin(jnp.arange(4)[None], 8, 10_000.0)
  ops.rope_attention(q, q, q, cos, sin, kernels="accelerator")
  ops.rope_attention(q, q, q, cos, sin, kernels="cpu")
  assert seen == [{"is_causal": True, "implementation": "xla"}]


@pytest.mark.parametrize("kernels", KERNELS)
def test_rope_attention_segments_equal_separate_rows(kernels):
  """A packed row (shared prefix, branch 1, branch 2 with positions restarting after the prefix) gives each
  branch the outputs and gradients of its own row [prefix + branch]."""
  h, g, d, s, c, r = 4, 2, 8, 5, 4, 3
  ks = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(ks[0], (1, s + c + r, h, d))
  k = jax.random.normal(ks[1], (1, s + c + r, g, d))
  v = jax.random.normal(ks[2], (1, s + c + r, g, d))
  w = jax.random.normal(ks[3], (1, s + c + r, h, d))
  positions = jnp.concatenate([jnp.arange(s + c), jnp.arange(s, s + r)])[None]
  segments = jnp.array([[0] * s + [1] * c + [2] * r])
  cos, sin = M.rope_cos_sin(positions, d, 10_000.0)
  branch = {1: np.arange(s + c), 2: np.r_[np.arange(s), np.arange(s + c, s + c + r)]}

  def packed(q, k, v):
    return ops.rope_attention(q, k, v, cos, sin, kernels=kernels, segments_BxL=segments)

  def separate(q, k, v):   # each branch as its own causal row; the prefix's outputs taken from branch 1's row
    outs = {}
    for j, idx in branch.items():
      cs, sn = M.rope_cos_sin(jnp.arange(len(idx))[None], d, 10_000.0)
      outs[j] = ops.rope_attention(q[:, idx], k[:, idx], v[:, idx], cs, sn, kernels=kernels)
    return jnp.concatenate([outs[1], outs[2][:, s:]], axis=1)

  with jax.default_matmul_precision("highest"):
    out_p, out_s = jax.jit(packed)(q, k, v), jax.jit(separate)(q, k, v)
    np.testing.assert_allclose(out_p, out_s, atol=2e-6)
    # gradients: the prefix's tokens feed both branches, so compare the packed loss with the summed row losses
    loss_p = lambda *a: jnp.sum(packed(*a) * w)
    def loss_s(q, k, v):
      total = 0.0
      for j, idx in branch.items():
        cs, sn = M.rope_cos_sin(jnp.arange(len(idx))[None], d, 10_000.0)
        out = ops.rope_attention(q[:, idx], k[:, idx], v[:, idx], cs, sn, kernels=kernels)
        weight = w[:, idx] if j == 1 else w[:, idx].at[:, :s].set(0.0)   # the prefix scored once
        total = total + jnp.sum(out * weight)
      return total
    gp = jax.jit(jax.grad(loss_p, (0, 1, 2)))(q, k, v)
    gs = jax.jit(jax.grad(loss_s, (0, 1, 2)))(q, k, v)
  for a, b in zip(gp, gs):
    np.testing.assert_allclose(a, b, atol=1e-5)
