"""A Llama decoder in Flax NNX whose parameter names mirror Hugging Face's LlamaForCausalLM.

RMSNorm, rotary embeddings in the HF rotate-half layout, multi-head or grouped-query
attention, SwiGLU MLP, tied or untied output head. Parameters are float32; `dtype`
picks the compute dtype (float32 or bfloat16). Dense kernels are stored `[in, out]`
(HF stores `[out, in]`: import/export transposes, see hf.py). Attention and the training
loss run through the fused ops of ops.py (the plain formulation's values, a faster backward).

One forward serves training and decoding: `model(tokens)` is the training forward;
`model(tokens, positions, cache)` writes the tokens' keys/values into a KV cache
(`init_cache`) and attends to everything the cache holds (a prefill, or a decode step
of one or a few tokens). Padding is by position: a slot whose position is -1 is never
attended to, so left- or right-padded prompts of different lengths batch exactly.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from llamalogue import ops
from llamalogue.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  intermediate_size: int
  head_dim: int = 0               # 0: hidden_size // num_heads
  rope_theta: float = 10_000.0
  rms_norm_eps: float = 1e-6
  tie_embeddings: bool = False
  max_seq_len: int = 2048
  initializer_range: float = 0.02
  dtype: str = "float32"          # compute dtype; params are always float32
  scan_layers: bool = False       # run the layers under one lax.scan (same values, faster compiles)

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads

  def validate(self) -> "LlamaConfig":
    if self.num_heads % self.num_kv_heads:
      raise ConfigError(f"model: num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if not self.head_dim and self.hidden_size % self.num_heads:
      raise ConfigError(f"model: hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
    if self.dim_per_head % 2:
      raise ConfigError(f"model: head dim {self.dim_per_head} must be even for rotary embeddings")
    if self.dtype not in ("float32", "bfloat16"):
      raise ConfigError(f"model.dtype: {self.dtype!r} is not float32 or bfloat16")
    return self


PRESETS = {
    # The study's model (STUDY.md §3): 134.8 M parameters with vocab 8,465.
    "llamalogue_135m": LlamaConfig(vocab_size=8_465, hidden_size=1024, num_layers=16, num_heads=16,
                                   num_kv_heads=16, intermediate_size=1024, tie_embeddings=False),
    # HuggingFaceTB/SmolLM2-135M (also the shape of the GGUF teacher).
    "smollm2_135m": LlamaConfig(vocab_size=49_152, hidden_size=576, num_layers=30, num_heads=9,
                                num_kv_heads=3, intermediate_size=1536, rope_theta=100_000.0,
                                rms_norm_eps=1e-5, tie_embeddings=True, max_seq_len=8192),
    # A CPU-sized model for tests and the quick start.
    "tiny": LlamaConfig(vocab_size=1_024, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=4,
                        intermediate_size=688, tie_embeddings=False, max_seq_len=512),
}


def compute_dtype(requested: str) -> str:
  """`config.model.dtype` as a dtype name: `auto` is bfloat16 on GPU/TPU, float32 on CPU."""
  if requested == "auto":
    return "bfloat16" if jax.default_backend() in ("gpu", "tpu") else "float32"
  return requested


def config_from(model_cfg: Any, vocab_size: int = 0) -> LlamaConfig:
  """A LlamaConfig from a `config.model` ConfigDict: a preset plus any field given there."""
  preset = model_cfg.get("preset", "tiny")
  if preset not in PRESETS:
    raise ConfigError(f"config.model.preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
  fields = {f.name for f in dataclasses.fields(LlamaConfig)}
  updates = {k: v for k, v in model_cfg.items() if k in fields and k != "dtype" and v is not None}
  if vocab_size and not updates.get("vocab_size"):
    updates["vocab_size"] = vocab_size
  return dataclasses.replace(PRESETS[preset], **updates).validate()


def count_params(cfg: LlamaConfig) -> int:
  """Closed-form parameter count; equals the count of an initialised model."""
  h, i, v, d = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.dim_per_head
  attn = h * cfg.num_heads * d * 2 + h * cfg.num_kv_heads * d * 2
  per_layer = attn + 3 * h * i + 2 * h
  head = 0 if cfg.tie_embeddings else v * h
  return cfg.num_layers * per_layer + v * h + head + h


def flops_per_token(cfg: LlamaConfig, seq_len: int) -> float:
  """Training FLOPs per token: 6N + 12·L·H·Q·T (nanoGPT / PaLM).

  N counts the parameters used in matmuls: the input embedding is a lookup, so an
  untied model's embedding table is left out; a tied one is the output head.
  """
  n = count_params(cfg) - (0 if cfg.tie_embeddings else cfg.vocab_size * cfg.hidden_size)
  return 6 * n + 12 * cfg.num_layers * cfg.num_heads * cfg.dim_per_head * seq_len


def _normal(rngs: nnx.Rngs, shape, std: float) -> nnx.Param:
  return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32))


class RMSNorm(nnx.Module):

  def __init__(self, dim: int, eps: float):
    self.weight = nnx.Param(jnp.ones((dim,), jnp.float32))
    self.eps = eps

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    x = x_BxLxD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (self.weight[...] * x).astype(x_BxLxD.dtype)


class Linear(nnx.Module):
  """A bias-free dense layer, kernel `[in, out]`, computed in `dtype`."""

  def __init__(self, d_in: int, d_out: int, std: float, dtype, *, rngs: nnx.Rngs):
    self.kernel = _normal(rngs, (d_in, d_out), std)
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    return matmul_2d(x.astype(self.dtype), self.kernel[...].astype(self.dtype))


def matmul_2d(x_NxD: jax.Array, w_DxF: jax.Array, preferred_element_type=None) -> jax.Array:
  """`x @ w` over x's last axis, computed as one 2-D matmul.

  Autodiff of `[B, L, D] @ [D, F]` contracts the kernel gradient over two axes, which
  XLA:CPU lowers with extra transposes (a 15-30% slower train step).
  """
  y_TxF = jnp.dot(x_NxD.reshape(-1, x_NxD.shape[-1]), w_DxF, preferred_element_type=preferred_element_type)
  return y_TxF.reshape(x_NxD.shape[:-1] + y_TxF.shape[-1:])


def rope_cos_sin(positions_BxL: jax.Array, dim: int, theta: float):
  """HF rotate-half rotary tables, each `[B, L, dim]`."""
  inv_freq_K = 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
  freqs_BxLxK = positions_BxL.astype(jnp.float32)[..., None] * inv_freq_K
  emb_BxLxD = jnp.concatenate([freqs_BxLxK, freqs_BxLxK], axis=-1)
  return jnp.cos(emb_BxLxD), jnp.sin(emb_BxLxD)


class Attention(nnx.Module):

  def __init__(self, cfg: LlamaConfig, dtype, *, rngs: nnx.Rngs):
    h, d, std = cfg.hidden_size, cfg.dim_per_head, cfg.initializer_range
    self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, d
    self.q_proj = Linear(h, cfg.num_heads * d, std, dtype, rngs=rngs)
    self.k_proj = Linear(h, cfg.num_kv_heads * d, std, dtype, rngs=rngs)
    self.v_proj = Linear(h, cfg.num_kv_heads * d, std, dtype, rngs=rngs)
    self.o_proj = Linear(cfg.num_heads * d, h, std, dtype, rngs=rngs)

  def __call__(self, x_BxLxD, cos_BxLxK, sin_BxLxK, cache=None):
    """Causal self-attention; with `cache = (kv, mask_Bx1xLxT, end)` the new keys/values are
    written at slots `end..end+L-1` of `kv` (`{"k", "v"}`, each `[B, G, T, K]`) and the
    queries attend to the slots `mask` allows. Returns the output (and the new kv)."""
    b, l, _ = x_BxLxD.shape
    q_BxLxHxK = self.q_proj(x_BxLxD).reshape(b, l, self.num_heads, self.head_dim)
    k_BxLxGxK = self.k_proj(x_BxLxD).reshape(b, l, self.num_kv_heads, self.head_dim)
    v_BxLxGxK = self.v_proj(x_BxLxD).reshape(b, l, self.num_kv_heads, self.head_dim)
    if cache is None:
      out_BxLxHxK = ops.rope_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, cos_BxLxK, sin_BxLxK)
      return self.o_proj(out_BxLxHxK.reshape(b, l, self.num_heads * self.head_dim))
    kv, mask_Bx1xLxT, end = cache
    q_BxLxHxK = ops.apply_rope(q_BxLxHxK, cos_BxLxK, sin_BxLxK)
    k_BxLxGxK = ops.apply_rope(k_BxLxGxK, cos_BxLxK, sin_BxLxK)
    # The cache is head-major: the attention's own transposes of it cancel (no copy per step).
    write = lambda c, x: jax.lax.dynamic_update_slice(c, jnp.swapaxes(x, 1, 2).astype(c.dtype), (0, 0, end, 0))
    k_BxGxTxK, v_BxGxTxK = write(kv["k"], k_BxLxGxK), write(kv["v"], v_BxLxGxK)
    out_BxLxHxK = jax.nn.dot_product_attention(
        q_BxLxHxK, jnp.swapaxes(k_BxGxTxK, 1, 2).astype(q_BxLxHxK.dtype),
        jnp.swapaxes(v_BxGxTxK, 1, 2).astype(q_BxLxHxK.dtype), mask=mask_Bx1xLxT)
    out_BxLxD = self.o_proj(out_BxLxHxK.reshape(b, l, self.num_heads * self.head_dim))
    return out_BxLxD, {"k": k_BxGxTxK, "v": v_BxGxTxK}


class MLP(nnx.Module):

  def __init__(self, cfg: LlamaConfig, dtype, *, rngs: nnx.Rngs):
    h, i, std = cfg.hidden_size, cfg.intermediate_size, cfg.initializer_range
    self.gate_proj = Linear(h, i, std, dtype, rngs=rngs)
    self.up_proj = Linear(h, i, std, dtype, rngs=rngs)
    self.down_proj = Linear(i, h, std, dtype, rngs=rngs)

  def __call__(self, x_BxLxD):
    return self.down_proj(jax.nn.silu(self.gate_proj(x_BxLxD)) * self.up_proj(x_BxLxD))


class DecoderLayer(nnx.Module):

  def __init__(self, cfg: LlamaConfig, dtype, *, rngs: nnx.Rngs):
    self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
    self.self_attn = Attention(cfg, dtype, rngs=rngs)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
    self.mlp = MLP(cfg, dtype, rngs=rngs)

  def __call__(self, x_BxLxD, cos, sin, cache=None):
    """The residual block; with a `cache` (see Attention) returns `(x, new kv)`."""
    if cache is None:
      x_BxLxD = x_BxLxD + self.self_attn(self.input_layernorm(x_BxLxD), cos, sin)
      return x_BxLxD + self.mlp(self.post_attention_layernorm(x_BxLxD))
    attn_BxLxD, kv = self.self_attn(self.input_layernorm(x_BxLxD), cos, sin, cache)
    x_BxLxD = x_BxLxD + attn_BxLxD
    return x_BxLxD + self.mlp(self.post_attention_layernorm(x_BxLxD)), kv


class Llama(nnx.Module):
  """`Llama(cfg, rngs=nnx.Rngs(0))(tokens_BxL) -> logits_BxLxV` (float32 logits).

  With a cache: `model(tokens_BxL, positions_BxL, cache) -> (logits_BxLxV, cache)`.
  """

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    dtype = jnp.dtype(cfg.dtype)
    self.embed_tokens = _normal(rngs, (cfg.vocab_size, cfg.hidden_size), cfg.initializer_range)
    self.layers = nnx.List([DecoderLayer(cfg, dtype, rngs=rngs) for _ in range(cfg.num_layers)])
    self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
    if not cfg.tie_embeddings:
      self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, cfg.initializer_range, dtype, rngs=rngs)

  def __call__(self, tokens_BxL: jax.Array, positions_BxL: jax.Array | None = None, cache: dict | None = None):
    if cache is None:
      return self.logits(self.hidden(tokens_BxL, positions_BxL))
    h_BxLxD, cache = self.hidden(tokens_BxL, positions_BxL, cache)
    return self.logits(h_BxLxD), cache

  def logprobs(self, inputs_BxL: jax.Array, targets_BxL: jax.Array, **kwargs) -> dict:
    """Per-position log p(target | inputs up to it) and friends: `ops.token_logprobs` on the hidden
    states and the head (chunked; `kwargs`: entropy, mask_V, chunk_tokens)."""
    return ops.token_logprobs(self.hidden(inputs_BxL), self.head_kernel(), targets_BxL, **kwargs)

  def logits(self, h_BxLxD: jax.Array) -> jax.Array:
    """The output head on final hidden states: float32 logits `[..., V]` (for the few positions a
    sampler needs; log-probabilities of many positions come from `logprobs`, which never holds them all)."""
    return matmul_2d(h_BxLxD, self.head_kernel(), preferred_element_type=jnp.float32)

  def head_kernel(self) -> jax.Array:
    """The output projection `[D, V]` in the compute dtype (the embedding, transposed, when tied)."""
    dtype = jnp.dtype(self.cfg.dtype)
    if self.cfg.tie_embeddings:
      return self.embed_tokens[...].astype(dtype).T
    return self.lm_head.kernel[...].astype(dtype)

  def hidden(self, tokens_BxL: jax.Array, positions_BxL: jax.Array | None = None, cache: dict | None = None):
    """The final normalised hidden states `[B, L, D]` (the output head's input).

    Without a cache: causal attention over the L tokens (positions default to 0..L-1).
    With a cache (`init_cache`): the tokens fill slots `end..end+L-1` and attend to every
    slot whose position is >= 0 and <= their own (positions default to `end + 0..L-1`;
    give -1 to padding tokens); returns `(hidden, new cache)`. The caller sizes the cache:
    writing past its last slot is not checked inside jit.
    """
    dtype = jnp.dtype(self.cfg.dtype)
    b, l = tokens_BxL.shape
    if positions_BxL is None:
      start = 0 if cache is None else cache["end"]
      positions_BxL = jnp.broadcast_to(start + jnp.arange(l, dtype=jnp.int32), (b, l))
    cos, sin = rope_cos_sin(positions_BxL, self.cfg.dim_per_head, self.cfg.rope_theta)
    x_BxLxD = jnp.take(self.embed_tokens[...], tokens_BxL, axis=0).astype(dtype)
    if cache is None:
      return self.norm(self._layers(x_BxLxD, cos, sin))
    end = cache["end"]
    key_pos_BxT = jax.lax.dynamic_update_slice(cache["positions"], positions_BxL.astype(jnp.int32), (0, end))
    query_pos_BxLx1 = positions_BxL.astype(jnp.int32)[:, :, None]
    mask_Bx1xLxT = ((key_pos_BxT[:, None, :] >= 0) & (key_pos_BxT[:, None, :] <= query_pos_BxLx1))[:, None]
    x_BxLxD, kv = self._layers(x_BxLxD, cos, sin, (cache["layers"], mask_Bx1xLxT, end))
    return self.norm(x_BxLxD), {"layers": kv, "positions": key_pos_BxT, "end": end + l}

  def _layers(self, x_BxLxD, cos, sin, cache=None):
    """The decoder stack: a Python loop, or one lax.scan over the stacked layer states (`scan_layers`)."""
    if self.cfg.scan_layers:
      return _scan_layers(self.layers, x_BxLxD, cos, sin, cache)
    if cache is None:
      for layer in self.layers:
        x_BxLxD = layer(x_BxLxD, cos, sin)
      return x_BxLxD
    kvs, mask, end = cache
    new_kvs = []
    for layer, kv in zip(self.layers, kvs):
      x_BxLxD, kv = layer(x_BxLxD, cos, sin, (kv, mask, end))
      new_kvs.append(kv)
    return x_BxLxD, new_kvs


def _scan_layers(layers, x_BxLxD, cos, sin, cache):
  """The layers under one lax.scan: their NNX states are stacked on the fly (same values as the loop)."""
  graphdef, _ = nnx.split(layers[0])
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.state(layer) for layer in layers])
  if cache is None:
    def body(x, state):
      return nnx.merge(graphdef, state)(x, cos, sin), None
    return jax.lax.scan(body, x_BxLxD, stacked)[0]
  kvs, mask, end = cache
  stacked_kv = jax.tree.map(lambda *xs: jnp.stack(xs), *kvs)

  def body_cached(x, state_kv):
    state, kv = state_kv
    return nnx.merge(graphdef, state)(x, cos, sin, (kv, mask, end))

  x_BxLxD, new_kv = jax.lax.scan(body_cached, x_BxLxD, (stacked, stacked_kv))
  return x_BxLxD, [jax.tree.map(lambda a, i=i: a[i], new_kv) for i in range(len(kvs))]


def init_cache(cfg: LlamaConfig, batch: int, max_len: int, dtype=None) -> dict:
  """An empty KV cache for `max_len` slots: a plain pytree of arrays.

  `layers`: per layer `{"k", "v"}`, each `[B, G, T, K]` (head-major; compute dtype unless `dtype`);
  `positions`: `[B, T]` int32, the position of the token in each slot, -1 where empty or
  padding (never attended to); `end`: int32 scalar, the slots written so far.
  """
  dtype = jnp.dtype(dtype or cfg.dtype)
  shape = (batch, cfg.num_kv_heads, max_len, cfg.dim_per_head)
  return {"layers": [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(cfg.num_layers)],
          "positions": jnp.full((batch, max_len), -1, jnp.int32), "end": jnp.zeros((), jnp.int32)}


def abstract_model(cfg: LlamaConfig) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, abstract state) of a Llama without allocating parameters."""
  return nnx.split(nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0))))


def pure_dict(state) -> dict:
  """An NNX State as a plain nested dict of arrays (the form params take in steps and checkpoints)."""
  return nnx.to_pure_dict(state) if hasattr(nnx, "to_pure_dict") else state.to_pure_dict()


def next_token_loss(params: dict, graphdef: nnx.GraphDef, batch: dict) -> tuple[jax.Array, jax.Array]:
  """Summed masked next-token cross-entropy and the token count: a pure function of (params, batch).

  `batch` holds `inputs` and `targets` (int32 `[B, L]`) and `loss_mask` (float `[B, L]`).
  Returns `(loss_sum, num_tokens)`; the mean loss is their ratio (kept apart so that
  gradient accumulation over micro-batches is exact).
  """
  model = nnx.merge(graphdef, params)
  mask_BxL = batch["loss_mask"].astype(jnp.float32)
  logp_BxL = model.logprobs(batch["inputs"], batch["targets"])["logprobs"]
  return -jnp.sum(logp_BxL * mask_BxL), jnp.sum(mask_BxL)
