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

  def __call__(self, x_BxLxD, cos_BxLxK, sin_BxLxK, cache=None, segments_BxL=None):
    """Causal self-attention (`segments_BxL`: shared-prefix packing, see ops.segment_mask). With `cache = (k_LxBxGxTxK, v_LxBxGxTxK, layer, mask_Bx1xLxT, end)`
    (every layer's cache, this layer's index) the new keys/values are written at slots
    `end..end+L-1` of layer `layer` and the queries attend to the slots `mask` allows.
    Returns the output (and the updated stacked k, v)."""
    b, l, _ = x_BxLxD.shape
    q_BxLxHxK = self.q_proj(x_BxLxD).reshape(b, l, self.num_heads, self.head_dim)
    k_BxLxGxK = self.k_proj(x_BxLxD).reshape(b, l, self.num_kv_heads, self.head_dim)
    v_BxLxGxK = self.v_proj(x_BxLxD).reshape(b, l, self.num_kv_heads, self.head_dim)
    if cache is None:
      out_BxLxHxK = ops.rope_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, cos_BxLxK, sin_BxLxK,
                                       segments_BxL=segments_BxL)
      return self.o_proj(out_BxLxHxK.reshape(b, l, self.num_heads * self.head_dim))
    k_LxBxGxTxK, v_LxBxGxTxK, layer, mask_Bx1xLxT, end = cache
    q_BxLxHxK = ops.apply_rope(q_BxLxHxK, cos_BxLxK, sin_BxLxK)
    k_BxLxGxK = ops.apply_rope(k_BxLxGxK, cos_BxLxK, sin_BxLxK)
    # The cache is head-major: the attention's own transposes of it cancel (no copy per step).
    # Only the new tokens are written, in place in the stacked cache (it is the scan's carry).
    write = lambda c, x: jax.lax.dynamic_update_slice(
        c, jnp.swapaxes(x, 1, 2)[None].astype(c.dtype), (layer, 0, 0, end, 0))
    k_LxBxGxTxK, v_LxBxGxTxK = write(k_LxBxGxTxK, k_BxLxGxK), write(v_LxBxGxTxK, v_BxLxGxK)
    k_BxGxTxK, v_BxGxTxK = k_LxBxGxTxK[layer], v_LxBxGxTxK[layer]
    out_BxLxHxK = jax.nn.dot_product_attention(
        q_BxLxHxK, jnp.swapaxes(k_BxGxTxK, 1, 2).astype(q_BxLxHxK.dtype),
        jnp.swapaxes(v_BxGxTxK, 1, 2).astype(q_BxLxHxK.dtype), mask=mask_Bx1xLxT)
    out_BxLxD = self.o_proj(out_BxLxHxK.reshape(b, l, self.num_heads * self.head_dim))
    return out_BxLxD, k_LxBxGxTxK, v_LxBxGxTxK


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

  def __call__(self, x_BxLxD, cos, sin, cache=None, segments_BxL=None):
    """The residual block; with a `cache` (see Attention) returns `(x, new k, new v)`."""
    if cache is None:
      x_BxLxD = x_BxLxD + self.self_attn(self.input_layernorm(x_BxLxD), cos, sin, segments_BxL=segments_BxL)
      return x_BxLxD + self.mlp(self.post_attention_layernorm(x_BxLxD))
    attn_BxLxD, k, v = self.self_attn(self.input_layernorm(x_BxLxD), cos, sin, cache)
    x_BxLxD = x_BxLxD + attn_BxLxD
    return x_BxLxD + self.mlp(self.post_attention_layernorm(x_BxLxD)), k, v


def stacked_layers(cfg: LlamaConfig, dtype, rngs: nnx.Rngs) -> DecoderLayer:
  """One DecoderLayer whose parameters hold all `num_layers` layers, stacked on a leading axis.

  The layers draw their random values one after another, as separately built layers
  would, so a seed gives the parameters it gave before the layers were stacked.
  """
  layers = [DecoderLayer(cfg, dtype, rngs=rngs) for _ in range(cfg.num_layers)]
  graphdef = nnx.graphdef(layers[0])
  return nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.state(layer) for layer in layers]))


class Llama(nnx.Module):
  """`Llama(cfg, rngs=nnx.Rngs(0))(tokens_BxL) -> logits_BxLxV` (float32 logits).

  With a cache: `model(tokens_BxL, positions_BxL, cache) -> (logits_BxLxV, cache)`.
  """

  def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs):
    cfg.validate()
    self.cfg = cfg
    dtype = jnp.dtype(cfg.dtype)
    self.embed_tokens = _normal(rngs, (cfg.vocab_size, cfg.hidden_size), cfg.initializer_range)
    self.layers = stacked_layers(cfg, dtype, rngs)    # every parameter `[num_layers, ...]`
    self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
    if not cfg.tie_embeddings:
      self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, cfg.initializer_range, dtype, rngs=rngs)

  def __call__(self, tokens_BxL: jax.Array, positions_BxL: jax.Array | None = None, cache: dict | None = None):
    if cache is None:
      return self.logits(self.hidden(tokens_BxL, positions_BxL))
    h_BxLxD, cache = self.hidden(tokens_BxL, positions_BxL, cache)
    return self.logits(h_BxLxD), cache

  def logprobs(self, inputs_BxL: jax.Array, targets_BxL: jax.Array, positions_BxL: jax.Array | None = None,
               segments_BxL: jax.Array | None = None, **kwargs) -> dict:
    """Per-position log p(target | inputs up to it) and friends: `ops.token_logprobs` on the hidden
    states and the head (chunked; `kwargs`: entropy, mask_V, chunk_tokens). `positions`/`segments`:
    packed rows, see `hidden`."""
    h_BxLxD = self.hidden(inputs_BxL, positions_BxL, segments_BxL=segments_BxL)
    return ops.token_logprobs(h_BxLxD, self.head_kernel(), targets_BxL, **kwargs)

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

  def hidden(self, tokens_BxL: jax.Array, positions_BxL: jax.Array | None = None, cache: dict | None = None,
             layers: list | None = None, segments_BxL: jax.Array | None = None):
    """The final normalised hidden states `[B, L, D]` (the output head's input).

    Without a cache: causal attention over the L tokens (positions default to 0..L-1). With
    `segments_BxL` a row packs a shared prefix (segment 0) and branches that continue it (1, 2,
    ...) without seeing each other (`ops.segment_mask`); each branch's positions restart where
    the prefix ends, so every token gets the values it would get in its own unpacked row.
    With a cache (`init_cache`): the tokens fill slots `end..end+L-1` and attend to every
    slot whose position is >= 0 and <= their own (positions default to `end + 0..L-1`;
    give -1 to padding tokens); returns `(hidden, new cache)`. The caller sizes the cache:
    writing past its last slot is not checked inside jit. `layers`: `layer_views()` taken once
    by a caller that runs many forwards in a loop (see there).
    """
    dtype = jnp.dtype(self.cfg.dtype)
    b, l = tokens_BxL.shape
    if positions_BxL is None:
      start = 0 if cache is None else cache["end"]
      positions_BxL = jnp.broadcast_to(start + jnp.arange(l, dtype=jnp.int32), (b, l))
    cos, sin = rope_cos_sin(positions_BxL, self.cfg.dim_per_head, self.cfg.rope_theta)
    x_BxLxD = jnp.take(self.embed_tokens[...], tokens_BxL, axis=0).astype(dtype)
    if cache is None:
      return self.norm(self.run_layers(x_BxLxD, cos, sin, layers=layers, segments_BxL=segments_BxL))
    if segments_BxL is not None:
      raise ValueError("Llama.hidden: segments are for a forward without a cache")
    end = cache["end"]
    key_pos_BxT = jax.lax.dynamic_update_slice(cache["positions"], positions_BxL.astype(jnp.int32), (0, end))
    query_pos_BxLx1 = positions_BxL.astype(jnp.int32)[:, :, None]
    mask_Bx1xLxT = ((key_pos_BxT[:, None, :] >= 0) & (key_pos_BxT[:, None, :] <= query_pos_BxLx1))[:, None]
    x_BxLxD, k, v = self.run_layers(x_BxLxD, cos, sin, (cache["k"], cache["v"], mask_Bx1xLxT, end), layers)
    return self.norm(x_BxLxD), {"k": k, "v": v, "positions": key_pos_BxT, "end": end + l}

  def layer_views(self) -> list | None:
    """Each layer's parameters sliced out of the stack (NNX states), or None where the layers run as a
    rolled scan (`ops.layer_loop`), which slices them itself.

    XLA:CPU copies a slice each time one is taken: a decode loop takes the views once, outside
    the loop, and hands them to every step's `hidden(..., layers=views)`.
    """
    if ops.layer_loop() == "scan":
      return None
    stacked = nnx.state(self.layers)
    return [jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(self.cfg.num_layers)]

  def run_layers(self, x_BxLxD, cos, sin, cache=None, layers: list | None = None, segments_BxL=None):
    """The decoder stack on embeddings `[B, L, D]`; same values however it runs.

    Accelerators (`ops.layer_loop` scan): one rolled lax.scan, one layer body to compile.
    XLA:CPU (unrolled): a forward alone is the rolled scan too (fewest kernels to compile), but
    under a gradient the scan is unrolled (`_stack_rolled_forward`): XLA:CPU carries a gradient
    through a loop slowly. `layers` (`layer_views()`, taken outside a decode loop): those slices
    applied in turn.

    With `cache = (k_LxBxGxTxK, v_LxBxGxTxK, mask_Bx1xLxT, end)` each layer writes its new slots
    in place in the stacked cache (the scan's carry); returns `(x, k, v)`. A cached forward is
    never differentiated.
    """
    graphdef, stacked = nnx.split(self.layers)
    if layers is not None:
      if cache is None:
        for view in layers:
          x_BxLxD = nnx.merge(graphdef, view)(x_BxLxD, cos, sin, segments_BxL=segments_BxL)
        return x_BxLxD
      k, v, mask_Bx1xLxT, end = cache
      for i, view in enumerate(layers):
        x_BxLxD, k, v = nnx.merge(graphdef, view)(x_BxLxD, cos, sin, (k, v, i, mask_Bx1xLxT, end))
      return x_BxLxD, k, v
    if cache is None:
      if ops.layer_loop() == "scan":
        return _layer_scan(graphdef, 1)(x_BxLxD, stacked, cos, sin, segments_BxL)
      return _stack_rolled_forward(graphdef, self.cfg.num_layers)(x_BxLxD, stacked, cos, sin, segments_BxL)
    k_LxBxGxTxK, v_LxBxGxTxK, mask_Bx1xLxT, end = cache

    def body_cached(carry, xs):
      x, k, v = carry
      layer_state, i = xs
      return nnx.merge(graphdef, layer_state)(x, cos, sin, (k, v, i, mask_Bx1xLxT, end)), None

    layer_ids = jnp.arange(self.cfg.num_layers, dtype=jnp.int32)
    return jax.lax.scan(body_cached, (x_BxLxD, k_LxBxGxTxK, v_LxBxGxTxK), (stacked, layer_ids))[0]


def _layer_scan(graphdef, unroll: int):
  """`(x, stacked layer state, cos, sin, segments) -> x`: the layers under one lax.scan (`unroll` layers per trip)."""
  def run(x_BxLxD, stacked, cos, sin, segments_BxL=None):
    body = lambda x, layer_state: (nnx.merge(graphdef, layer_state)(x, cos, sin, segments_BxL=segments_BxL), None)
    return jax.lax.scan(body, x_BxLxD, stacked, unroll=unroll)[0]
  return run


def _stack_rolled_forward(graphdef, num_layers: int):
  """The layer stack for XLA:CPU: evaluated alone, the rolled scan; differentiated, the fully unrolled
  scan's forward and backward (a custom VJP: same values, the gradient never goes through a loop)."""
  rolled, unrolled = _layer_scan(graphdef, 1), _layer_scan(graphdef, num_layers)

  @jax.custom_vjp
  def run(x_BxLxD, stacked, cos, sin, segments_BxL):
    return rolled(x_BxLxD, stacked, cos, sin, segments_BxL)

  def fwd(x_BxLxD, stacked, cos, sin, segments_BxL):
    return jax.vjp(unrolled, x_BxLxD, stacked, cos, sin, segments_BxL)

  run.defvjp(fwd, lambda vjp_fn, g_BxLxD: vjp_fn(g_BxLxD))
  return run


def init_cache(cfg: LlamaConfig, batch: int, max_len: int, dtype=None) -> dict:
  """An empty KV cache for `max_len` slots: a plain pytree of arrays.

  `k`, `v`: every layer's keys and values, `[L, B, G, T, K]` (layers stacked as the
  parameters are; head-major; compute dtype unless `dtype`); `positions`: `[B, T]` int32,
  the position of the token in each slot, -1 where empty or padding (never attended to);
  `end`: int32 scalar, the slots written so far.
  """
  dtype = jnp.dtype(dtype or cfg.dtype)
  shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.dim_per_head)
  return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
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
