"""Attention and the output-head loss, with kernels chosen per backend.

- `rope_attention(q, k, v, cos, sin)`: rotary embedding + causal grouped-query attention.
- `linear_cross_entropy(h, w, targets, mask)`: output projection + masked next-token
  cross-entropy, summed; the `[tokens, vocab]` logits are never held in memory whole.

Two kernel sets, picked at trace time by `select_kernels()` (the backend, or the override
`LLAMALOGUE_KERNELS=cpu|accelerator`, or the functions' `kernels=` argument):

- `cpu` (XLA:CPU): hand-written backward passes. Attention moves heads once to a
  head-major layout in which rotary, scores, softmax and the weighted sum are all
  contiguous, so XLA never fuses an elementwise op into a strided transpose. The loss
  computes the gradient with respect to `h` and `w` in the same chunked pass as the
  loss, so logits are never recomputed.
- `accelerator` (GPU/TPU): rotary embedding, then `jax.nn.dot_product_attention`
  (cuDNN flash attention on GPU in bfloat16/float16; XLA on TPU, where splash attention does
  not take the 135M preset's head_dim 64; override with `LLAMALOGUE_ATTENTION=xla|cudnn`;
  `attention_choice` says why, `describe_kernels` prints the whole choice in one line). The loss is a scan over large token chunks with
  logits in the compute dtype, logsumexp in float32, and a backward pass that
  recomputes each chunk's logits (only `[tokens]` log-normalisers are kept).

Both equal the plain formulation (model.py's reference path) to rounding; the tests
check values and gradients of both sets against it on CPU.
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


def rope_attention(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, cos_BxLxK, sin_BxLxK, kernels: str | None = None):
  """Causal attention of rotary-embedded queries and keys: `[B, L, H, K]` out.

  `q` has H heads, `k`/`v` have G (H % G == 0: query head h attends with group h // (H/G),
  as in Hugging Face's repeat_kv). `cos`/`sin` are the rotate-half tables `[B, L, K]`
  (no gradient flows to them).
  """
  if select_kernels(kernels) == "cpu":
    return rope_attention_cpu(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, cos_BxLxK, sin_BxLxK)
  cos, sin = jax.lax.stop_gradient(cos_BxLxK), jax.lax.stop_gradient(sin_BxLxK)
  q, k = apply_rope(q_BxLxHxK, cos, sin), apply_rope(k_BxLxGxK, cos, sin)
  return jax.nn.dot_product_attention(q, k, v_BxLxGxK, is_causal=True,
                                      implementation=attention_implementation(q.dtype, q.shape[-1]))


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


def _attention_fwd_core(q, k, v, cos, sin):
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
  causal = (jnp.arange(r * l) % l)[:, None] >= jnp.arange(l)[None, :]
  s = jnp.where(causal, s, -jnp.inf)
  e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
  p = (e / jnp.sum(e, axis=-1, keepdims=True)).astype(v.dtype)
  o = jnp.einsum("nml,nld->nmd", p, v_t, preferred_element_type=jnp.float32).astype(q.dtype)
  return _heads_minor(o.reshape(b, g, r, l, d)), (q_t, k_t, v_t, p)


@jax.custom_vjp
def rope_attention_cpu(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, cos_BxLxK, sin_BxLxK):
  """`rope_attention` for XLA:CPU: head-major layout, a written-out backward pass."""
  return _attention_fwd_core(q_BxLxHxK, k_BxLxGxK, v_BxLxGxK, cos_BxLxK, sin_BxLxK)[0]


def _attention_fwd(q, k, v, cos, sin):
  out, res = _attention_fwd_core(q, k, v, cos, sin)
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
          _heads_minor(dv[:, :, None].astype(dt)), jnp.zeros_like(cos), jnp.zeros_like(sin))


rope_attention_cpu.defvjp(_attention_fwd, _attention_bwd)


# ------------------------------------------------------------------- output head + loss

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


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _linear_ce(h_BxLxD, w_DxV, targets_BxL, mask_BxL, chunk_len):
  return _ce_scan(h_BxLxD, w_DxV, targets_BxL, mask_BxL, chunk_len, with_grads=False)[0]


def _ce_scan(h_BxLxD, w_DxV, targets_BxL, mask_BxL, chunk_len, with_grads):
  """Loop over chunks of `chunk_len` positions (all batch rows at once, so a batch-sharded
  input stays sharded): loss sum and, with_grads, d loss/d h and d loss/d w."""
  n = h_BxLxD.shape[1] // chunk_len
  chunks = lambda x: _to_chunks(x, chunk_len)                         # [n, T = b * chunk_len, ...]

  def body(dw_DxV, x):
    h_TxD, tgt_T, m_T = x
    logits = jnp.dot(h_TxD, w_DxV, preferred_element_type=jnp.float32)    # 2-D matmuls: see model.matmul_2d
    mx = jnp.max(logits, axis=-1, keepdims=True)
    e = jnp.exp(logits - mx)
    z = jnp.sum(e, axis=-1, keepdims=True)
    picked = jnp.take_along_axis(logits, tgt_T[:, None], axis=-1)[:, 0]
    loss = jnp.sum((jnp.log(z[:, 0]) + mx[:, 0] - picked) * m_T)
    if not with_grads:
      return dw_DxV, (loss, None)
    onehot = jnp.arange(logits.shape[-1]) == tgt_T[:, None]
    g_TxV = ((e / z - onehot) * m_T[:, None]).astype(h_TxD.dtype)          # d loss / d logits
    dh_TxD = jnp.dot(g_TxV, w_DxV.T, preferred_element_type=jnp.float32).astype(h_TxD.dtype)
    return dw_DxV + jnp.dot(h_TxD.T, g_TxV, preferred_element_type=jnp.float32), (loss, dh_TxD)

  dw0 = jnp.zeros(w_DxV.shape, jnp.float32) if with_grads else None
  # one chunk: unrolled, so no loop
  dw, (loss, dh) = jax.lax.scan(body, dw0, (chunks(h_BxLxD), chunks(targets_BxL), chunks(mask_BxL)),
                                unroll=n == 1)
  if dh is not None:
    dh = _from_chunks(dh, h_BxLxD.shape[0])
  return jnp.sum(loss), dh, dw


def _linear_ce_fwd(h, w, targets, mask, chunk_len):
  loss, dh, dw = _ce_scan(h, w, targets, mask, chunk_len, with_grads=True)
  return loss, (dh, dw.astype(w.dtype), targets, mask)


def _linear_ce_bwd(chunk_len, res, g):
  dh, dw, targets, mask = res
  return ((g * dh).astype(dh.dtype), (g * dw).astype(dw.dtype),
          np.zeros(targets.shape, jax.dtypes.float0), jnp.zeros_like(mask))


_linear_ce.defvjp(_linear_ce_fwd, _linear_ce_bwd)


def linear_cross_entropy(h_BxLxD, w_DxV, targets_BxL, mask_BxL, chunk_tokens: int | None = None,
                         kernels: str | None = None):
  """sum over positions of mask * -log softmax(h @ w)[target], in float32.

  About `chunk_tokens` tokens (all batch rows × a run of positions) are projected at a
  time (default: 256 on CPU, 4096 on accelerators). No gradient flows to `targets` or `mask`.
  """
  which = select_kernels(kernels)
  chunk_tokens = chunk_tokens or (256 if which == "cpu" else 4096)
  b, l, _ = h_BxLxD.shape
  chunk_len = _divisor_at_most(l, max(1, chunk_tokens // b))
  fn = _linear_ce if which == "cpu" else _linear_ce_recompute
  return fn(h_BxLxD, w_DxV, targets_BxL, mask_BxL.astype(jnp.float32), chunk_len)


# ------------------------------------------------------- output head + loss (accelerators)

def _chunk_logits(h_TxD, w_DxV):
  """Logits of one chunk in the compute dtype (float32 accumulation), read as float32 by the reductions."""
  return jnp.dot(h_TxD, w_DxV, preferred_element_type=h_TxD.dtype).astype(jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _linear_ce_recompute(h_BxLxD, w_DxV, targets_BxL, mask_BxL, chunk_len):
  return _recompute_fwd(h_BxLxD, w_DxV, targets_BxL, mask_BxL, chunk_len)[0]


def _recompute_fwd(h_BxLxD, w_DxV, targets_BxL, mask_BxL, chunk_len):
  def body(_, x):
    h_TxD, tgt_T = x
    logits_TxV = _chunk_logits(h_TxD, w_DxV)
    lse_T = jax.nn.logsumexp(logits_TxV, axis=-1)
    picked_T = jnp.take_along_axis(logits_TxV, tgt_T[:, None], axis=-1)[:, 0]
    return None, (lse_T, picked_T)

  n = h_BxLxD.shape[1] // chunk_len
  _, (lse_NxT, picked_NxT) = jax.lax.scan(
      body, None, (_to_chunks(h_BxLxD, chunk_len), _to_chunks(targets_BxL, chunk_len)), unroll=n == 1)
  loss = jnp.sum((lse_NxT - picked_NxT) * _to_chunks(mask_BxL, chunk_len))
  return loss, (h_BxLxD, w_DxV, targets_BxL, mask_BxL, lse_NxT)


def _recompute_bwd(chunk_len, res, g):
  h_BxLxD, w_DxV, targets_BxL, mask_BxL, lse_NxT = res

  def body(dw_DxV, x):
    h_TxD, tgt_T, m_T, lse_T = x
    p_TxV = jnp.exp(_chunk_logits(h_TxD, w_DxV) - lse_T[:, None])
    onehot_TxV = jnp.arange(p_TxV.shape[-1]) == tgt_T[:, None]
    g_TxV = ((p_TxV - onehot_TxV) * (g * m_T)[:, None]).astype(h_TxD.dtype)
    dh_TxD = jnp.dot(g_TxV, w_DxV.T, preferred_element_type=jnp.float32).astype(h_TxD.dtype)
    return dw_DxV + jnp.dot(h_TxD.T, g_TxV, preferred_element_type=jnp.float32), dh_TxD

  n = h_BxLxD.shape[1] // chunk_len
  xs = (_to_chunks(h_BxLxD, chunk_len), _to_chunks(targets_BxL, chunk_len), _to_chunks(mask_BxL, chunk_len), lse_NxT)
  dw_DxV, dh_NxTxD = jax.lax.scan(body, jnp.zeros(w_DxV.shape, jnp.float32), xs, unroll=n == 1)
  return (_from_chunks(dh_NxTxD, h_BxLxD.shape[0]), dw_DxV.astype(w_DxV.dtype),
          np.zeros(targets_BxL.shape, jax.dtypes.float0), jnp.zeros_like(mask_BxL))


_linear_ce_recompute.defvjp(_recompute_fwd, _recompute_bwd)
