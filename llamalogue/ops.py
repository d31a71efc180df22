"""Attention and the output head's log-probabilities, with kernels chosen per backend.

- `rope_attention(q, k, v, cos, sin)`: rotary embedding + causal grouped-query attention;
  `apply_rope` is the one rotary embedding (the model's cached forward uses it too).
- `token_logprobs(h, w, targets)`: output projection + per-token log p(target) (and, where
  asked, entropy and log-normalisers), chunked so the `[tokens, vocab]` logits are never held
  whole. It is the project's one log-probability path: the pre-training loss
  (`model.next_token_loss`), DPO, PPO, the scorer and the teacher call it; `logprob_stats` is its
  per-chunk arithmetic, which the sampler applies to the one row of logits it samples from.
  `kl_divergence` is the chunked KL of two heads (PPO's `full` penalty).

Two kernel sets, picked at trace time by `select_kernels()` (the backend, or the override
`LLAMALOGUE_KERNELS=cpu|accelerator`, or the functions' `kernels=` argument):

- `cpu` (XLA:CPU): hand-written backward passes. Attention moves heads once to a
  head-major layout in which rotary, scores, softmax and the weighted sum are all
  contiguous, so XLA never fuses an elementwise op into a strided transpose. The log-prob
  backward reads the probabilities its forward kept, so logits are never recomputed.
- `accelerator` (GPU/TPU): rotary embedding, then `jax.nn.dot_product_attention`
  (cuDNN flash attention on GPU in bfloat16/float16; XLA on TPU, where splash attention does
  not take the 135M preset's head_dim 64; override with `LLAMALOGUE_ATTENTION=xla|cudnn`;
  `attention_choice` says why, `describe_kernels` prints the whole choice in one line). The
  log-probs are a scan over large token chunks with logits in the compute dtype, logsumexp in
  float32, and a backward pass that recomputes each chunk's logits (only `[tokens]`
  log-normalisers are kept).

Both equal the plain formulation (full logits, then log-softmax) to rounding; the tests check
values and gradients of both sets against it on CPU.
"""

import contextlib
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from llamalogue.errors import ConfigError

KERNELS = ("cpu", "accelerator")


def select_kernels(override: str | None = None, backend: str | None = None) -> str:
  """The kernel set to trace with: `override`, else $LLAMALOGUE_KERNELS, else by backend (`jax.default_backend()`)."""
  choice = override or os.environ.get("LLAMALOGUE_KERNELS", "") or "auto"
  if choice == "auto":
    return "cpu" if (backend or jax.default_backend()) == "cpu" else "accelerator"
  if choice not in KERNELS:
    raise ConfigError(f"LLAMALOGUE_KERNELS / kernels=: {choice!r} is not auto, cpu or accelerator")
  return choice


@contextlib.contextmanager
def kernels_for(kernels: str):
  """Traces inside pick `kernels` (e.g. `accelerator` while compiling for a TPU from a CPU host)."""
  if kernels not in KERNELS:
    raise ConfigError(f"kernels_for: {kernels!r} is not cpu or accelerator")
  before = os.environ.get("LLAMALOGUE_KERNELS")
  os.environ["LLAMALOGUE_KERNELS"] = kernels
  try:
    yield
  finally:
    if before is None:
      os.environ.pop("LLAMALOGUE_KERNELS", None)
    else:
      os.environ["LLAMALOGUE_KERNELS"] = before


LAYER_LOOPS = ("scan", "unrolled")


def layer_loop(kernels: str | None = None) -> str:
  """How the decoder stack's lax.scan is lowered: $LLAMALOGUE_LAYERS (scan | unrolled), else by kernel set.

  `scan` (accelerators): a rolled loop, so XLA compiles one layer body whatever the depth.
  `unrolled` (XLA:CPU): each layer's slice applied in turn, no loop (a gradient carried through a
  loop costs XLA:CPU 5-40% of a train step, measured); same stored layout, same values.
  """
  choice = os.environ.get("LLAMALOGUE_LAYERS", "") or "auto"
  if choice == "auto":
    return "unrolled" if select_kernels(kernels) == "cpu" else "scan"
  if choice not in LAYER_LOOPS:
    raise ConfigError(f"LLAMALOGUE_LAYERS: {choice!r} is not auto, scan or unrolled")
  return choice


ATTENTIONS = ("xla", "cudnn")


def attention_choice(dtype, head_dim: int, backend: str | None = None) -> tuple[str, str]:
  """(implementation of `jax.nn.dot_product_attention`, why) for the accelerator kernels.

  $LLAMALOGUE_ATTENTION (xla | cudnn) overrides. Otherwise, per backend:
  - GPU: cuDNN flash attention in bfloat16/float16, XLA in float32 (cuDNN needs 16-bit inputs);
  - TPU: XLA. Splash attention (jax.experimental.pallas.ops.tpu) does not support head_dim 64,
    the 135M preset's (jax#30861), and no TPU kernel is wired in for other head dims either;
  - CPU: XLA (the `cpu` kernel set has its own attention; this is the `accelerator` set traced on CPU).
  """
  backend = backend or jax.default_backend()
  choice = os.environ.get("LLAMALOGUE_ATTENTION", "") or "auto"
  if choice != "auto":
    if choice not in ATTENTIONS:
      raise ConfigError(f"LLAMALOGUE_ATTENTION: {choice!r} is not auto, xla or cudnn")
    return choice, "set by LLAMALOGUE_ATTENTION"
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  if backend == "gpu":
    return ("cudnn", "cuDNN flash attention, 16-bit inputs") if half else ("xla", "cuDNN needs 16-bit inputs")
  if backend == "tpu":
    if head_dim % 128:
      return "xla", f"splash attention does not support head_dim {head_dim} (jax#30861)"
    return "xla", f"no TPU attention kernel wired in for head_dim {head_dim}"
  return "xla", f"{backend}: XLA"


def attention_implementation(dtype, head_dim: int = 64) -> str:
  """`jax.nn.dot_product_attention`'s implementation (see `attention_choice`)."""
  return attention_choice(dtype, head_dim)[0]


def describe_kernels(cfg, backend: str | None = None) -> str:
  """One line: the kernels a model of `cfg` traces with on `backend` (default: this process's), and why."""
  backend = backend or jax.default_backend()
  kernels = select_kernels(backend=backend)
  layers = f"layers {layer_loop(kernels)} over {cfg.num_layers}"
  if kernels == "cpu":
    return (f"kernels cpu ({backend}): custom-VJP rotary attention and chunked head loss (256 tokens), {layers}; "
            "LLAMALOGUE_KERNELS / LLAMALOGUE_LAYERS override")
  impl, why = attention_choice(cfg.dtype, cfg.dim_per_head, backend)
  return (f"kernels accelerator ({backend}): attention {impl} ({why}), chunked head loss (4096 tokens), {layers}; "
          "LLAMALOGUE_KERNELS / LLAMALOGUE_ATTENTION / LLAMALOGUE_LAYERS override")


def rope_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, cos_BxLxK, sin_BxLxK, kernels: str | None = None,
                   segments_BxL=None):
  """Causal attention of rotary-embedded queries and keys: `[B, L, H, K]` out.

  `q` has H heads, `k`/`v` have G (H % G == 0: query head h attends with group h // (H/G),
  as in Hugging Face's repeat_kv). `cos`/`sin` are the rotate-half tables `[B, L, K]`
  (no gradient flows to them). `segments_BxL` (int, optional) packs several sequences that
  share a prefix into one row: a token attends to the earlier tokens of segment 0 (the
  shared prefix) and of its own segment only (see `segment_mask`).
  """
  if select_kernels(kernels) == "cpu":
    return rope_attention_cpu(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, cos_BxLxK, sin_BxLxK, segments_BxL)
  cos, sin = jax.lax.stop_gradient(cos_BxLxK), jax.lax.stop_gradient(sin_BxLxK)
  q, k = apply_rope(q_BxLxHxK, cos, sin), apply_rope(k_BxLxGxK, cos, sin)
  if segments_BxL is not None:   # a general mask: XLA's attention on every backend (cuDNN's fused one takes none)
    return jax.nn.dot_product_attention(q, k, v_BxLxGxK, mask=segment_mask(segments_BxL)[:, None],
                                        implementation="xla")
  return jax.nn.dot_product_attention(q, k, v_BxLxGxK, is_causal=True,
                                      implementation=attention_implementation(q.dtype, q.shape[-1]))


SEGMENT_PARTS = 4   # a segment id is `4 * group + part`


def segment_mask(segments_BxL) -> jax.Array:
  """Bool `[B, L, L]` (query, key) for rows that pack several groups of sequences sharing a prefix.

  A segment id is `SEGMENT_PARTS * group + part`. A query sees the earlier keys of its own group
  only: its part 0 (the prefix every branch reads) and its own part; parts 1, 2, ... are branches
  that continue the prefix without seeing each other (a DPO pair: prompt, chosen reply, rejected
  reply; several pairs to a row are several groups; padding is a part of its own). Every query
  sees itself, so no row of the softmax is empty.
  """
  l = segments_BxL.shape[-1]
  causal_LxL = jnp.arange(l)[:, None] >= jnp.arange(l)[None, :]
  seg_q, seg_k = segments_BxL[:, :, None], segments_BxL[:, None, :]
  same_group = (seg_q // SEGMENT_PARTS) == (seg_k // SEGMENT_PARTS)
  return causal_LxL[None] & same_group & ((seg_k % SEGMENT_PARTS == 0) | (seg_k == seg_q))


def apply_rope(x_BxLxHxK, cos_BxLxK, sin_BxLxK):
  """Rotary embedding in the HF rotate-half layout, computed in float32, returned in x's dtype."""
  cos, sin = cos_BxLxK[:, :, None, :], sin_BxLxK[:, :, None, :]
  x = x_BxLxHxK.astype(jnp.float32)
  return (x * cos + rotate_half(x) * sin).astype(x_BxLxHxK.dtype)


# ------------------------------------------------------------------ attention (XLA:CPU)

def rotate_half(x):
  """HF's rotate_half: [x1, x2] -> [-x2, x1] over the last axis."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def _rotate_half_t(x):
  """The transpose of `rotate_half` (a rotation by -90° in each pair)."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([x2, -x1], axis=-1)


def _heads_major(x_BxLxNxK, groups: int):
  """[B, L, G*R, K] -> [B, G, R, L, K] (query head h belongs to key/value group h // R)."""
  b, l, n, k = x_BxLxNxK.shape
  return x_BxLxNxK.reshape(b, l, groups, n // groups, k).transpose(0, 2, 3, 1, 4)


def _heads_minor(x_BxGxRxLxK):
  b, g, r, l, k = x_BxGxRxLxK.shape
  return x_BxGxRxLxK.transpose(0, 3, 1, 2, 4).reshape(b, l, g * r, k)


def _attention_fwd_core(q, k, v, cos, sin, segments):
  groups = k.shape[2]
  scale = 1.0 / math.sqrt(q.shape[-1])
  cos_t, sin_t = cos[:, None, None], sin[:, None, None]            # [B, 1, 1, L, K]
  q_t = _heads_major(q, groups).astype(jnp.float32)                 # [B, G, R, L, K]
  k_t = _heads_major(k, groups)[:, :, 0].astype(jnp.float32)        # [B, G, L, K]
  v_t = _heads_major(v, groups)[:, :, 0]
  q_t = q_t * cos_t + rotate_half(q_t) * sin_t
  k_t = k_t * cos_t[:, :, 0] + rotate_half(k_t) * sin_t[:, :, 0]
  q_t, k_t = q_t.astype(q.dtype), k_t.astype(k.dtype)
  b, g, r, l, d = q_t.shape
  q_t, k_t, v_t = q_t.reshape(b * g, r * l, d), k_t.reshape(b * g, l, d), v_t.reshape(b * g, l, d)
  s = jnp.einsum("nmd,nld->nml", q_t, k_t, preferred_element_type=jnp.float32) * scale
  if segments is None:
    causal = (jnp.arange(r * l) % l)[:, None] >= jnp.arange(l)[None, :]
    s = jnp.where(causal, s, -jnp.inf)
  else:                                                             # [B, L, L] over the G x R heads of each row
    allowed = segment_mask(segments)[:, None, None]
    s = jnp.where(allowed, s.reshape(b, g, r, l, l), -jnp.inf).reshape(b * g, r * l, l)
  e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
  p = (e / jnp.sum(e, axis=-1, keepdims=True)).astype(v.dtype)
  o = jnp.einsum("nml,nld->nmd", p, v_t, preferred_element_type=jnp.float32).astype(q.dtype)
  return _heads_minor(o.reshape(b, g, r, l, d)), (q_t, k_t, v_t, p)


@jax.custom_vjp
def rope_attention_cpu(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, cos_BxLxK, sin_BxLxK, segments_BxL=None):
  """`rope_attention` for XLA:CPU: head-major layout, a written-out backward pass."""
  return _attention_fwd_core(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, cos_BxLxK, sin_BxLxK, segments_BxL)[0]


def _attention_fwd(q, k, v, cos, sin, segments=None):
  out, res = _attention_fwd_core(q, k, v, cos, sin, segments)
  return out, res + (cos, sin)


def _attention_bwd(res, do_BxLxHxK):
  q_t, k_t, v_t, p, cos, sin = res
  b, l, h, d = do_BxLxHxK.shape
  groups = q_t.shape[0] // b
  r = h // groups
  scale = 1.0 / math.sqrt(d)
  f32 = jnp.float32
  do = _heads_major(do_BxLxHxK, groups).reshape(b * groups, r * l, d)
  dv = jnp.einsum("nml,nmd->nld", p, do, preferred_element_type=f32)
  dp = jnp.einsum("nmd,nld->nml", do, v_t, preferred_element_type=f32)
  pf = p.astype(f32)
  ds = (pf * (dp - jnp.sum(dp * pf, axis=-1, keepdims=True)) * scale).astype(q_t.dtype)
  dq = jnp.einsum("nml,nld->nmd", ds, k_t, preferred_element_type=f32).reshape(b, groups, r, l, d)
  dk = jnp.einsum("nml,nmd->nld", ds, q_t, preferred_element_type=f32).reshape(b, groups, l, d)
  dv = dv.reshape(b, groups, l, d)
  cos_t, sin_t = cos[:, None, None], sin[:, None, None]
  dq = dq * cos_t + _rotate_half_t(dq * sin_t)                      # the rotation's transpose
  dk = dk * cos_t[:, :, 0] + _rotate_half_t(dk * sin_t[:, :, 0])
  dt = do_BxLxHxK.dtype
  return (_heads_minor(dq.astype(dt)), _heads_minor(dk[:, :, None].astype(dt)),
          _heads_minor(dv[:, :, None].astype(dt)), jnp.zeros_like(cos), jnp.zeros_like(sin), None)


rope_attention_cpu.defvjp(_attention_fwd, _attention_bwd)


# ------------------------------------------------ log-probabilities from hidden states (the one path)

def logprob_stats(logits_TxV: jax.Array, targets_T: jax.Array, *, entropy: bool = False,
                  mask_V: jax.Array | None = None) -> dict:
  """The log-probability arithmetic on logits of a few rows (any leading shape `[..., V]`), in float32.

  `logprobs` = log p(target); `logz` = log Σ exp(logits); with `entropy`, the entropy of the
  distribution; with a bool `mask_V`, `masked_logprob` = log P(next token ∈ mask). Every
  log-probability of the project comes from here: `token_logprobs` applies it chunk by chunk
  to the output head's logits, the sampler to the logits of the row it is sampling.
  """
  logits = logits_TxV.astype(jnp.float32)
  logz = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets_T[..., None].astype(jnp.int32), axis=-1)[..., 0]
  out = {"logprobs": picked - logz, "logz": logz}
  if entropy:
    p = jnp.exp(logits - logz[..., None])
    out["entropy"] = logz - jnp.sum(p * logits, axis=-1)
  if mask_V is not None:
    out["masked_logprob"] = jax.nn.logsumexp(jnp.where(mask_V, logits, -jnp.inf), axis=-1) - logz
  return out


def token_logprobs(h_BxLxD: jax.Array, w_DxV: jax.Array, targets_BxL: jax.Array, *, entropy: bool = False,
                   mask_V: jax.Array | None = None, chunk_tokens: int | None = None,
                   kernels: str | None = None) -> dict:
  """Per-position log p(target) under the output head `w` on hidden states `h`, never holding the
  `[B, L, V]` logits whole: about `chunk_tokens` tokens (all batch rows × a run of positions, so a
  batch-sharded input stays sharded) are projected at a time (default 256 on CPU, 4096 on accelerators).

  Returns `{"logprobs", "logz"}` `[B, L]` float32 (and `entropy`, `masked_logprob`: see
  `logprob_stats`). Gradients flow to `h` and `w` through `logprobs` only (the other outputs are
  statistics). The backward pass differs by kernel set: on CPU the forward keeps each chunk's
  probabilities (no logits recomputed) and the backward is two whole matmuls (one gradient of the
  head, so one all-reduce of it under data parallelism); on accelerators it keeps only `logz` and recomputes each
  chunk's logits, in the compute dtype (no float32 `[tokens, vocab]` array at all).
  """
  which = select_kernels(kernels)
  chunk_tokens = chunk_tokens or (256 if which == "cpu" else 4096)
  b, l, _ = h_BxLxD.shape
  chunk_len = _divisor_at_most(l, max(1, chunk_tokens // b))
  lp, aux = _token_logprobs(h_BxLxD, w_DxV, targets_BxL.astype(jnp.int32), mask_V, chunk_len, which, entropy)
  return {"logprobs": lp, **jax.lax.stop_gradient(aux)}


def _divisor_at_most(n: int, k: int) -> int:
  """The largest divisor of n that is <= k (and >= 1)."""
  k = max(1, min(k, n))
  while n % k:
    k -= 1
  return k


def _to_chunks(x_BxL, chunk_len: int):
  """[B, L, ...] -> [n, B * chunk_len, ...]: chunk j holds positions j*chunk_len.. of every row."""
  b, l = x_BxL.shape[:2]
  n = l // chunk_len
  return jnp.swapaxes(x_BxL.reshape((b, n, chunk_len) + x_BxL.shape[2:]), 0, 1).reshape(
      (n, b * chunk_len) + x_BxL.shape[2:])


def _from_chunks(x_NxT, b: int):
  n, t = x_NxT.shape[:2]
  return jnp.swapaxes(x_NxT.reshape((n, b, t // b) + x_NxT.shape[2:]), 0, 1).reshape(
      (b, n * (t // b)) + x_NxT.shape[2:])


def _chunk_logits(h_TxD, w_DxV, kind: str):
  """One chunk's logits: float32 accumulation; on accelerators rounded to the compute dtype (then read as float32)."""
  if kind == "cpu":                                 # 2-D matmuls: see model.matmul_2d
    return jnp.dot(h_TxD, w_DxV, preferred_element_type=jnp.float32)
  return jnp.dot(h_TxD, w_DxV, preferred_element_type=h_TxD.dtype).astype(jnp.float32)


def _scan_chunks(body, xs, n: int):
  """lax.scan of `body` over the chunk axis; one chunk: unrolled, so no loop."""
  return jax.lax.scan(body, None, xs, unroll=n == 1)[1]


def _forward(h_BxLxD, w_DxV, targets_BxL, mask_V, chunk_len, kind, entropy, keep_probs):
  """(logprobs [B, L], statistics {name: [B, L]}, per-chunk residual for the backward pass)."""
  b, l, _ = h_BxLxD.shape
  n = l // chunk_len

  def body(_, x):
    h_TxD, tgt_T = x
    logits_TxV = _chunk_logits(h_TxD, w_DxV, kind)
    stats = logprob_stats(logits_TxV, tgt_T, entropy=entropy, mask_V=mask_V)
    if keep_probs:                                   # CPU: the backward pass reads these instead of recomputing
      stats["probs"] = jnp.exp(logits_TxV - stats["logz"][:, None]).astype(h_TxD.dtype)
    return None, stats

  stats = _scan_chunks(body, (_to_chunks(h_BxLxD, chunk_len), _to_chunks(targets_BxL, chunk_len)), n)
  residual = stats.pop("probs") if keep_probs else stats["logz"]
  out = {k: _from_chunks(v, b) for k, v in stats.items()}
  return out.pop("logprobs"), out, residual


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _token_logprobs(h_BxLxD, w_DxV, targets_BxL, mask_V, chunk_len, kind, entropy):
  lp, aux, _ = _forward(h_BxLxD, w_DxV, targets_BxL, mask_V, chunk_len, kind, entropy, keep_probs=False)
  return lp, aux


def _token_logprobs_fwd(h_BxLxD, w_DxV, targets_BxL, mask_V, chunk_len, kind, entropy):
  lp, aux, residual = _forward(h_BxLxD, w_DxV, targets_BxL, mask_V, chunk_len, kind, entropy,
                               keep_probs=kind == "cpu")
  return (lp, aux), (h_BxLxD, w_DxV, targets_BxL, mask_V, residual)


def _token_logprobs_bwd(chunk_len, kind, entropy, res, cotangents):
  """d logprobs: per token t, g_t · (onehot(target_t) - p_t) against the head (the statistics carry none)."""
  h_BxLxD, w_DxV, targets_BxL, mask_V, residual = res
  g_BxL = cotangents[0].astype(jnp.float32)
  n = h_BxLxD.shape[1] // chunk_len

  def body(dw_DxV, x):              # accelerators: one chunk at a time, its logits recomputed from logz
    h_TxD, tgt_T, g_T, logz_T = x
    p_TxV = jnp.exp(_chunk_logits(h_TxD, w_DxV, kind) - logz_T[:, None])
    onehot_TxV = jnp.arange(p_TxV.shape[-1]) == tgt_T[:, None]
    d_TxV = (g_T[:, None] * (onehot_TxV - p_TxV)).astype(h_TxD.dtype)   # d loss / d logits
    dh_TxD = jnp.dot(d_TxV, w_DxV.T, preferred_element_type=jnp.float32).astype(h_TxD.dtype)
    return dw_DxV + jnp.dot(h_TxD.T, d_TxV, preferred_element_type=jnp.float32), dh_TxD

  xs = (_to_chunks(h_BxLxD, chunk_len), _to_chunks(targets_BxL, chunk_len), _to_chunks(g_BxL, chunk_len), residual)
  if kind == "cpu":
    # CPU: the forward kept every chunk's probabilities, so the backward is two whole matmuls, not a loop
    # (with data parallelism, the head's gradient is then all-reduced once, not once per chunk). The
    # chunk axes stay as they are: flattening them would gather a batch-sharded input.
    h_c, tgt_c, g_c, p_c = xs
    onehot = jnp.arange(p_c.shape[-1]) == tgt_c[..., None]
    d_c = (g_c[..., None] * (onehot - p_c.astype(jnp.float32))).astype(h_c.dtype)
    dh_NxTxD = jnp.einsum("ntv,dv->ntd", d_c, w_DxV, preferred_element_type=jnp.float32).astype(h_c.dtype)
    dw_DxV = jnp.einsum("ntd,ntv->dv", h_c, d_c, preferred_element_type=jnp.float32)
  else:
    dw_DxV, dh_NxTxD = jax.lax.scan(body, jnp.zeros(w_DxV.shape, jnp.float32), xs, unroll=n == 1)
  no_grad = lambda x: None if x is None else np.zeros(x.shape, jax.dtypes.float0)
  return (_from_chunks(dh_NxTxD, h_BxLxD.shape[0]), dw_DxV.astype(w_DxV.dtype), no_grad(targets_BxL),
          no_grad(mask_V))


_token_logprobs.defvjp(_token_logprobs_fwd, _token_logprobs_bwd)


def kl_divergence(h_BxLxD, w_DxV, ref_h_BxLxD, ref_w_DxV, chunk_tokens: int | None = None,
                  kernels: str | None = None) -> jax.Array:
  """KL(p || q) `[B, L]` of two models' next-token distributions (p: `h @ w`, q: `ref_h @ ref_w`), chunked
  like `token_logprobs` (no gradient: a penalty computed from a rollout)."""
  which = select_kernels(kernels)
  chunk_tokens = chunk_tokens or (256 if which == "cpu" else 4096)
  b, l, _ = h_BxLxD.shape
  chunk_len = _divisor_at_most(l, max(1, chunk_tokens // b))

  def body(_, x):
    h_TxD, ref_TxD = x
    logp = jax.nn.log_softmax(_chunk_logits(h_TxD, w_DxV, which), axis=-1)
    logq = jax.nn.log_softmax(_chunk_logits(ref_TxD, ref_w_DxV, which), axis=-1)
    return None, jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)

  xs = (_to_chunks(h_BxLxD, chunk_len), _to_chunks(ref_h_BxLxD, chunk_len))
  return jax.lax.stop_gradient(_from_chunks(_scan_chunks(body, xs, l // chunk_len), b))
