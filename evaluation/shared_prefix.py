"""Candidates that share a long token prefix (entity tracking): run the prefix once.

Exact, not an approximation: a causal model's output at a position depends only on
the tokens up to it, so each continuation attends to the keys/values the prefix
pass computed instead of recomputing them. Five options after a ~200-token prefix
cost ~1.3 prefixes instead of 5. Built from the submodules of `llamalogue.model.Llama`
(names mirror HF); `supported(model)` says whether a model has them.
"""

import jax
import jax.numpy as jnp
import numpy as np

from llamalogue import model as model_lib


def supported(model) -> bool:
  layers = getattr(model, "layers", None)
  return (hasattr(model, "cfg") and hasattr(model, "embed_tokens") and hasattr(model, "norm")
          and layers is not None and len(layers) > 0
          and all(hasattr(getattr(layers[0], "self_attn", None), p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")))


def common_prefix_len(rows) -> int:
  """Length of the token prefix every row shares."""
  n = min(len(r) for r in rows)
  for i in range(n):
    t = rows[0][i]
    if any(r[i] != t for r in rows[1:]):
      return i
  return n


def _qkv(attn, x_BxLxD, cos, sin):
  b, l, _ = x_BxLxD.shape
  q = attn.q_proj(x_BxLxD).reshape(b, l, attn.num_heads, attn.head_dim)
  k = attn.k_proj(x_BxLxD).reshape(b, l, attn.num_kv_heads, attn.head_dim)
  v = attn.v_proj(x_BxLxD).reshape(b, l, attn.num_kv_heads, attn.head_dim)
  return model_lib.apply_rope(q, cos, sin), model_lib.apply_rope(k, cos, sin), v


def _head(model, x_BxLxD):
  x_BxLxD = model.norm(x_BxLxD)
  if model.cfg.tie_embeddings:
    return (x_BxLxD @ model.embed_tokens[...].astype(x_BxLxD.dtype).T).astype(jnp.float32)
  return model.lm_head(x_BxLxD).astype(jnp.float32)


def forward(model, prefix_BxP: jax.Array, prefix_len_B: jax.Array, cont_BxKxC: jax.Array):
  """Logits after the last real prefix token `[B, V]` and at every continuation position `[B, K, C, V]`.

  Prefixes are right-padded; continuation k of row b sits at positions
  `prefix_len[b] + 0..C-1` and sees the real prefix tokens and itself, causally.
  """
  cfg, dtype = model.cfg, jnp.dtype(model.cfg.dtype)
  b, p = prefix_BxP.shape
  _, k, c = cont_BxKxC.shape
  embed = lambda t: jnp.take(model.embed_tokens[...], t, axis=0).astype(dtype)
  pos_BxP = jnp.broadcast_to(jnp.arange(p), (b, p))
  cos_p, sin_p = model_lib.rope_cos_sin(pos_BxP, cfg.dim_per_head, cfg.rope_theta)
  pos_NxC = jnp.broadcast_to(prefix_len_B[:, None, None] + jnp.arange(c), (b, k, c)).reshape(b * k, c)
  cos_c, sin_c = model_lib.rope_cos_sin(pos_NxC, cfg.dim_per_head, cfg.rope_theta)
  visible_BxP = jnp.arange(p)[None, :] < prefix_len_B[:, None]
  mask_Nx1xCxS = jnp.concatenate([
      jnp.broadcast_to(jnp.repeat(visible_BxP, k, axis=0)[:, None, None, :], (b * k, 1, c, p)),
      jnp.broadcast_to(jnp.tril(jnp.ones((c, c), bool))[None, None], (b * k, 1, c, c))], axis=-1)
  x_BxPxD = embed(prefix_BxP)
  y_NxCxD = embed(cont_BxKxC.reshape(b * k, c))
  for layer in model.layers:
    attn = layer.self_attn
    q, kk, v = _qkv(attn, layer.input_layernorm(x_BxPxD), cos_p, sin_p)
    out = jax.nn.dot_product_attention(q, kk, v, is_causal=True)
    x_BxPxD = x_BxPxD + attn.o_proj(out.reshape(b, p, -1))
    x_BxPxD = x_BxPxD + layer.mlp(layer.post_attention_layernorm(x_BxPxD))
    qc, kc, vc = _qkv(attn, layer.input_layernorm(y_NxCxD), cos_c, sin_c)
    keys = jnp.concatenate([jnp.repeat(kk, k, axis=0), kc], axis=1)
    values = jnp.concatenate([jnp.repeat(v, k, axis=0), vc], axis=1)
    out = jax.nn.dot_product_attention(qc, keys, values, mask=mask_Nx1xCxS)
    y_NxCxD = y_NxCxD + attn.o_proj(out.reshape(b * k, c, -1))
    y_NxCxD = y_NxCxD + layer.mlp(layer.post_attention_layernorm(y_NxCxD))
  last_BxD = x_BxPxD[jnp.arange(b), prefix_len_B - 1]
  last_BxV = _head(model, last_BxD[:, None, :])[:, 0]
  return last_BxV, _head(model, y_NxCxD).reshape(b, k, c, -1)


def virtual_rows(rows, first, shared: int):
  """Each row from its last shared token on, and its first scored index in that frame."""
  cut = shared - 1
  return [list(r[cut:]) for r in rows], np.asarray(first) - cut
