"""Sampling from a Llama of ours: one jitted decode loop over a KV cache, and a text wrapper.

`sample_tokens(params, graphdef, prompt_BxP, prompt_len_B, rng, ...)` is pure: parameters,
prompts and the key are arguments, so a PPO loop calls it with new policy parameters every
step without recompiling. Prompts are LEFT-padded (`prompt_BxP[b, P - prompt_len_B[b]:]`
holds row b's tokens); padding slots get position -1 and are never attended to, so rows
of different lengths decode exactly as they would alone. The prefill and every decode
step are the model's one cached forward (`Llama(tokens, positions, cache)`); the decode
loop is one `lax.while_loop` that ends when every row has finished (EOS, a stop token)
or after `max_new_tokens`. One compile per (batch, prompt length, max_new_tokens): the
settings are traced scalars, and `generate` pads prompt lengths to buckets
(`llamalogue.shapes.bucket_len`, multiples of 16).

Sampling follows Hugging Face's warpers, in their order: temperature, top-k (keep the k
highest), top-p (keep the smallest set of most likely tokens whose mass reaches top_p).
Per sampled token it returns two log-probabilities: under the sampling distribution
(after temperature and filtering; 0 for greedy, whose choice is certain) and under the
model (temperature 1, unfiltered), which PPO needs.

`generate(model, tokenizer, prompts, ...)` tokenizes (the tokenizer's own special tokens,
so a BOS only where the tokenizer adds one), batches, decodes and cuts each text exactly
at the first stop string: a plain `str` (e.g. "\\n") or a compiled regex (`SPEAKER_TAG`
matches the next speaker's tag `*MOT:`). Inside the loop a row stops at EOS, at a token
whose own text contains a stop, or at the token sequences a plain stop string encodes to
(`*MOT:` as ` *` `MOT` `:`). A regex match spread over several tokens is cut on the host
(exactly) but does not end the loop early: `speaker_stops(prompts)` adds the tags the
prompts use as plain strings, so the usual next tags also end it.
"""

import dataclasses
import functools
import json
import pathlib
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llamalogue import hf, paths
from llamalogue import model as model_lib
from llamalogue import ops
from llamalogue.data.units import SPEAKER_TAG
from llamalogue.shapes import bucket_len
from llamalogue.errors import ConfigError, DataError



# ---------------------------------------------------------------------------- one step's choice

def _threshold(key_BxV: jax.Array, lo_Bx1: jax.Array, hi_Bx1: jax.Array, too_many) -> jax.Array:
  """The smallest integer t in (lo, hi] with `not too_many(t)`, by 32 halvings (exact for int32 keys).

  `too_many` must be monotone (true at lo, false at hi); keep `key >= t` after it.
  """
  def halve(_, lo_hi):
    lo, hi = lo_hi
    mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)          # floor((lo + hi) / 2) without int32 overflow
    more = too_many(mid)
    return jnp.where(more, mid, lo), jnp.where(more, hi, mid)

  return jax.lax.fori_loop(0, 32, halve, (lo_Bx1, hi_Bx1))[1]


def top_k_keep(z_BxV: jax.Array, top_k: jax.Array) -> jax.Array:
  """HF's top-k mask without a sort: keep every token at least as likely as the k-th (ties kept)."""
  bits_BxV = jax.lax.bitcast_convert_type(z_BxV, jnp.int32)
  key_BxV = jnp.where(bits_BxV >= 0, bits_BxV, bits_BxV ^ 0x7FFFFFFF)   # int32 keys in the floats' order
  count_above = lambda t: jnp.sum(key_BxV > t, axis=-1, keepdims=True) >= top_k
  lo = jnp.min(key_BxV, axis=-1, keepdims=True) - 1
  return key_BxV >= _threshold(key_BxV, lo, jnp.max(key_BxV, axis=-1, keepdims=True), count_above)


def top_p_keep(w_BxV: jax.Array, top_p: jax.Array) -> jax.Array:
  """HF's top-p mask without a sort, from nonnegative weights (unnormalised probabilities):
  keep token i iff the mass of the tokens more likely than it is < top_p.

  The threshold on the weights' float bits (nonnegative floats order like their bit
  patterns) is found by bisection: exact, tied tokens kept together.
  """
  bits_BxV = jax.lax.bitcast_convert_type(w_BxV, jnp.int32)
  goal_Bx1 = top_p * jnp.sum(w_BxV, axis=-1, keepdims=True)
  mass_above = lambda t: jnp.sum(jnp.where(bits_BxV > t, w_BxV, 0.0), axis=-1, keepdims=True) >= goal_Bx1
  lo = jnp.full((w_BxV.shape[0], 1), -1, jnp.int32)
  return bits_BxV >= _threshold(bits_BxV, lo, jnp.max(bits_BxV, axis=-1, keepdims=True), mass_above)


def first_max(x_BxV: jax.Array) -> jax.Array:
  """argmax (the first of tied maxima) as two plain reductions (XLA:CPU's argmax is ~3x slower)."""
  is_max = x_BxV == jnp.max(x_BxV, axis=-1, keepdims=True)
  return jnp.min(jnp.where(is_max, jnp.arange(x_BxV.shape[-1], dtype=jnp.int32), x_BxV.shape[-1]), axis=-1)


def inverse_cdf(w_BxV: jax.Array, u_B: jax.Array, chunk: int = 128) -> jax.Array:
  """One index per row drawn with probability proportional to nonnegative weights `w`,
  given one uniform draw in [0, 1) per row.

  The draw, scaled by the row's total, against the running sum of the weights (the first
  index whose running sum exceeds it, as torch.multinomial), in two levels: the chunk of
  `chunk` tokens where the running sum of chunk totals crosses, then the first positive-
  weight token inside it whose running sum crosses. A zero-weight token is never drawn (if
  rounding leaves no crossing inside the chosen chunk, its last positive token is taken).
  """
  b, v = w_BxV.shape
  pad = -v % chunk
  w_BxNxC = jnp.pad(w_BxV, ((0, 0), (0, pad))).reshape(b, -1, chunk)
  cum_BxN = jnp.cumsum(jnp.sum(w_BxNxC, axis=-1), axis=-1)
  u_Bx1 = u_B[:, None] * cum_BxN[:, -1:]
  n = cum_BxN.shape[1]
  c_B = jnp.min(jnp.where(cum_BxN > u_Bx1, jnp.arange(n, dtype=jnp.int32), n - 1), axis=-1)
  before_B = jnp.where(c_B > 0, jnp.take_along_axis(cum_BxN, jnp.maximum(c_B - 1, 0)[:, None], axis=-1)[:, 0], 0.0)
  w_BxC = jnp.take_along_axis(w_BxNxC, c_B[:, None, None], axis=1)[:, 0]
  iota_C = jnp.arange(chunk, dtype=jnp.int32)
  last_positive_B = jnp.max(jnp.where(w_BxC > 0, iota_C, 0), axis=-1)
  crossed_BxC = (jnp.cumsum(w_BxC, axis=-1) > (u_Bx1 - before_B[:, None])) & (w_BxC > 0)
  inside_B = jnp.min(jnp.where(crossed_BxC, iota_C, chunk), axis=-1)
  return c_B * chunk + jnp.minimum(inside_B, last_positive_B)


def choose(logits_BxV: jax.Array, u_B: jax.Array, temperature: jax.Array, top_p: jax.Array, top_k: jax.Array,
           greedy: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One token per row: `(token_B, sampling log-prob_B, model log-prob_B)` from float32 logits
  and one uniform draw in [0, 1) per row.

  The settings are traced scalars (one compiled program for all of them); a filter that
  keeps everything (top_k 0, top_p 1) is skipped at run time.
  """
  pick = lambda x_BxV, i_B: jnp.take_along_axis(x_BxV, i_B[:, None], axis=-1)[:, 0]

  def sample():
    z_BxV = logits_BxV / temperature
    keep_BxV = jax.lax.cond(top_k > 0, lambda: top_k_keep(z_BxV, top_k), lambda: jnp.ones(z_BxV.shape, bool))
    z_BxV = jnp.where(keep_BxV, z_BxV, -jnp.inf)
    w_BxV = jnp.exp(z_BxV - jnp.max(z_BxV, axis=-1, keepdims=True))
    w_BxV = jax.lax.cond(top_p < 1, lambda: jnp.where(top_p_keep(w_BxV, top_p), w_BxV, 0.0), lambda: w_BxV)
    token_B = inverse_cdf(w_BxV, u_B)
    return token_B, jnp.log(pick(w_BxV, token_B)) - jnp.log(jnp.sum(w_BxV, axis=-1))

  def argmax():
    return first_max(logits_BxV), jnp.zeros(logits_BxV.shape[:1], jnp.float32)

  token_B, lp_B = jax.lax.cond(greedy, argmax, sample)
  return token_B, lp_B, ops.logprob_stats(logits_BxV, token_B)["logprobs"]


# ---------------------------------------------------------------------------- the decode loop

def sample_tokens(params, graphdef: nnx.GraphDef, prompt_BxP: jax.Array, prompt_len_B: jax.Array,
                  rng: jax.Array, stop_V: jax.Array | None = None, stop_seqs_NxM: jax.Array | None = None,
                  row_ids_B: jax.Array | None = None, *, max_new_tokens: int, temperature: float = 1.0,
                  top_p: float = 1.0, top_k: int = 0, greedy: bool = False, eos_id: int = -1,
                  pad_id: int = 0) -> dict:
  """Samples up to `max_new_tokens` tokens after each left-padded prompt (jitted).

  One compile per (graphdef, batch, prompt length, max_new_tokens, which stop arrays are
  given): the settings temperature, top_p, top_k, greedy, eos_id (-1: none) and pad_id
  are traced scalars, so changing them (or the params, prompts, key) does not recompile.

  `stop_V` (optional bool `[V]`): tokens that end a row like EOS. `stop_seqs_NxM`
  (optional int32): token sequences that end a row when its latest generated tokens equal
  one, right-aligned, left-filled with -1 (`stop_sequences`). Row b draws its random numbers
  from `fold_in(rng, row_ids_B[b])` (default: b), so a row's sample does not depend on the
  other rows of its batch nor on the batch size (or on which process samples it). Returns a dict of
  `tokens` `[B, T]` int32 (`pad_id` after a row's end), `logprobs` `[B, T]` (sampling
  distribution), `model_logprobs` `[B, T]` (the model's, temperature 1), both 0 after a
  row's end, `lengths` `[B]` (tokens generated, the EOS or stop token included) and
  `finished` `[B]` (ended by EOS or a stop token, not by the length limit).
  """
  settings = dict(temperature=jnp.float32(temperature), top_p=jnp.float32(top_p), top_k=jnp.int32(top_k),
                  greedy=jnp.bool_(greedy), eos_id=jnp.int32(eos_id), pad_id=jnp.int32(pad_id))
  if row_ids_B is None:
    row_ids_B = jnp.arange(prompt_BxP.shape[0], dtype=jnp.int32)
  return _sample_tokens(params, graphdef, prompt_BxP, prompt_len_B, rng, stop_V, stop_seqs_NxM, row_ids_B,
                        settings, max_new_tokens=max_new_tokens)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _sample_tokens(params, graphdef, prompt_BxP, prompt_len_B, rng, stop_V, stop_seqs_NxM, row_ids_B, settings, *,
                   max_new_tokens):
  model = nnx.merge(graphdef, params)
  eos_id, pad_id = settings["eos_id"], settings["pad_id"]
  b, p = prompt_BxP.shape
  t_max = max_new_tokens
  pad_B = p - prompt_len_B.astype(jnp.int32)
  pos_BxP = jnp.arange(p, dtype=jnp.int32)[None, :] - pad_B[:, None]
  layers = model.layer_views()      # sliced once, not in every decode step (XLA:CPU copies each slice)
  h_BxPxD, cache = model.hidden(prompt_BxP, jnp.where(pos_BxP >= 0, pos_BxP, -1),
                                model_lib.init_cache(model.cfg, b, p + t_max), layers)
  choice = {k: settings[k] for k in ("temperature", "top_p", "top_k", "greedy")}
  # every step's draws at once, outside the loop; each row from its own key
  u_TxB = jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(rng, i), (t_max,)))(row_ids_B).T

  def record(state, logits_BxV):
    t = state["t"]
    token_B, lp_B, mlp_B = choose(logits_BxV, u_TxB[t], **choice)
    live_B = ~state["finished"]
    token_B = jnp.where(live_B, token_B, pad_id).astype(jnp.int32)
    ends_B = token_B == eos_id
    if stop_V is not None:
      ends_B = ends_B | stop_V[token_B]
    recent_BxM = state["recent"]
    if stop_seqs_NxM is not None:
      recent_BxM = jnp.concatenate([recent_BxM[:, 1:], token_B[:, None]], axis=1)
      hit_BxN = jnp.all((stop_seqs_NxM[None] == -1) | (stop_seqs_NxM[None] == recent_BxM[:, None, :]), axis=-1)
      ends_B = ends_B | jnp.any(hit_BxN, axis=-1)
    column = lambda a, x: jax.lax.dynamic_update_slice(a, x[:, None], (0, t))
    return dict(state, t=t + 1, token=token_B, recent=recent_BxM,
                tokens=column(state["tokens"], token_B),
                logprobs=column(state["logprobs"], jnp.where(live_B, lp_B, 0.0)),
                model_logprobs=column(state["model_logprobs"], jnp.where(live_B, mlp_B, 0.0)),
                lengths=state["lengths"] + live_B, finished=state["finished"] | (live_B & ends_B))

  def step(state):
    h_Bx1xD, cache = model.hidden(state["token"][:, None], (prompt_len_B + state["t"] - 1)[:, None],
                                  state["cache"], layers)
    return record(dict(state, cache=cache), model.logits(h_Bx1xD[:, 0]))

  zeros = jnp.zeros((b, t_max), jnp.float32)
  state = dict(t=jnp.zeros((), jnp.int32), token=jnp.zeros((b,), jnp.int32), cache=cache,
               tokens=jnp.full((b, t_max), pad_id, jnp.int32), logprobs=zeros, model_logprobs=zeros,
               lengths=jnp.zeros((b,), jnp.int32), finished=jnp.zeros((b,), bool),
               recent=jnp.full((b, 1 if stop_seqs_NxM is None else stop_seqs_NxM.shape[1]), -2, jnp.int32))
  state = record(state, model.logits(h_BxPxD[:, -1]))
  state = jax.lax.while_loop(lambda s: (s["t"] < t_max) & ~jnp.all(s["finished"]), step, state)
  return {k: state[k] for k in ("tokens", "logprobs", "model_logprobs", "lengths", "finished")}


# ---------------------------------------------------------------------------- text in, text out

@dataclasses.dataclass
class Generation:
  """One continuation. `token_ids`/`logprobs`/`model_logprobs` cover every generated token
  (EOS or stop token included); `text` is their text cut at the first stop string and
  `num_tokens` the leading tokens whose text lies within it (a token straddling the cut,
  such as ` *` before `MOT:`, is not counted). `finish` is "eos", "stop" (a stop string
  in the text) or "length"."""
  prompt: str
  text: str
  num_tokens: int
  token_ids: list[int]
  logprobs: np.ndarray
  model_logprobs: np.ndarray
  finish: str


def first_stop(text: str, stop: Sequence[str | re.Pattern]) -> int:
  """Index of the earliest stop string (plain `str` or compiled regex) in `text`; len(text) if none."""
  cut = len(text)
  for s in stop:
    if isinstance(s, re.Pattern):
      m = s.search(text)
      i = m.start() if m else -1
    else:
      i = text.find(s)
    if 0 <= i < cut:
      cut = i
  return cut


_STOP_VOCAB: dict = {}   # (id(tokenizer), stops) -> bool [V]


@functools.lru_cache(maxsize=16)
def _stop_arrays(tokenizer, stop: tuple, vocab_size: int):
  """(stop tokens `[V]` or None, stop sequences or None) on the device, computed once per tokenizer and stops
  (decoding the whole vocabulary costs ~0.1 s for 8k tokens, ~0.5 s for SmolLM2's 49k: not per PPO step)."""
  stop_V = jnp.asarray(stop_vocab(tokenizer, stop, vocab_size)) if stop else None
  seqs = stop_sequences(tokenizer, stop)
  return stop_V, None if seqs is None else jnp.asarray(seqs)


def stop_vocab(tokenizer, stop: Sequence[str | re.Pattern], vocab_size: int) -> np.ndarray:
  """bool `[V]`: the tokens whose own text contains a stop string (they end a row in the loop)."""
  key = (id(tokenizer), tuple(s.pattern if isinstance(s, re.Pattern) else s for s in stop), vocab_size)
  if key not in _STOP_VOCAB:
    n = min(len(tokenizer), vocab_size)
    texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=True)
    mask = np.zeros(vocab_size, bool)
    mask[:n] = [first_stop(t, stop) < len(t) for t in texts]
    _STOP_VOCAB[key] = mask
  return _STOP_VOCAB[key]


def stop_sequences(tokenizer, stop: Sequence[str | re.Pattern]) -> np.ndarray | None:
  """int32 `[N, M]`: the token sequences the plain stop strings encode to (alone and after a
  space), right-aligned and left-filled with -1; None if there are none."""
  seqs = set()
  for s in stop:
    if isinstance(s, str) and s:
      for text in (s, " " + s):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if ids and s in tokenizer.decode(ids):
          seqs.add(tuple(ids))
  if not seqs:
    return None
  m = max(len(q) for q in seqs)
  return np.array([(-1,) * (m - len(q)) + q for q in sorted(seqs)], np.int32)


def speaker_stops(prompts: Sequence[str]) -> tuple:
  """Stops for dialogue: any speaker tag (`SPEAKER_TAG`), plus the tags the prompts use as
  plain strings, so that the usual next tag also ends the decode loop early."""
  return (SPEAKER_TAG,) + tuple(sorted({m.group(0) for p in prompts for m in SPEAKER_TAG.finditer(p)}))


def _cut(tokenizer, ids: list[int], stop, finished: bool, eos_id: int) -> tuple[str, int, str]:
  """(text cut at the first stop, the leading tokens within it, finish reason)."""
  full = tokenizer.decode(ids, skip_special_tokens=True)
  cut = first_stop(full, stop)
  if cut == len(full):
    return full, len(ids), ("eos" if finished and ids and ids[-1] == eos_id else "stop" if finished else "length")
  n = 0
  while n < len(ids) and len(tokenizer.decode(ids[:n + 1], skip_special_tokens=True)) <= cut:
    n += 1
  return full[:cut], n, "stop"


def generate(model_or_params, tokenizer, prompts: Sequence[str], *, rng, max_new_tokens: int = 20,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, greedy: bool = False,
             stop: Sequence[str | re.Pattern] = ("\n",), batch_size: int = 32,
             min_prompt_len: int = 0, row_offset: int = 0) -> list[Generation]:
  """Continuations of `prompts` (one each, in order). `model_or_params`: a Llama or `(graphdef, params)`.

  `min_prompt_len`: pad every batch's prompts to at least this length, so that a caller that
  samples again and again (PPO) compiles once instead of once per length bucket.

  `rng`: a jax key or an int seed; prompt i draws from `fold_in(rng, row_offset + i)`, so a fixed
  key reproduces each prompt's continuation whatever the batching (a process sampling prompts
  k.. of a larger batch passes `row_offset=k`). Prompts are padded to length buckets and the
  last batch to `batch_size`, so a run compiles once per bucket.
  """
  graphdef, params = (nnx.split(model_or_params) if isinstance(model_or_params, nnx.Module)
                      else model_or_params)
  cfg = nnx.merge(graphdef, params).cfg
  if temperature <= 0 and not greedy:
    raise ConfigError(f"temperature must be > 0 (got {temperature}); use greedy=True for argmax decoding")
  if not 0 < top_p <= 1:
    raise ConfigError(f"top_p must be in (0, 1] (got {top_p})")
  rng = jax.random.key(int(rng)) if isinstance(rng, (int, np.integer)) else rng
  eos = tokenizer.eos_token_id
  eos_id = -1 if eos is None else int(eos)
  pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else max(eos_id, 0)
  ids = [tokenizer(p)["input_ids"] for p in prompts]
  for i, row in enumerate(ids):
    if not row:
      raise DataError(f"prompt {i}: empty after tokenization (the model needs at least one token)")
    if max(row) >= cfg.vocab_size:
      raise DataError(f"prompt {i}: token id {max(row)} is outside the model's vocabulary ({cfg.vocab_size}): "
                      "model and tokenizer do not belong together")
    if len(row) + max_new_tokens > cfg.max_seq_len:
      raise DataError(f"prompt {i}: {len(row)} tokens + max_new_tokens={max_new_tokens} exceed the model's "
                      f"max_seq_len {cfg.max_seq_len}")
  stop_V, stop_seqs = _stop_arrays(tokenizer, tuple(stop), cfg.vocab_size)
  settings = dict(max_new_tokens=max_new_tokens, temperature=float(temperature), top_p=float(top_p),
                  top_k=int(top_k), greedy=bool(greedy), eos_id=eos_id, pad_id=int(pad_id))
  order = np.argsort([len(r) for r in ids], kind="stable")
  out: list[Generation | None] = [None] * len(prompts)
  for start in range(0, len(order), batch_size):
    rows = order[start:start + batch_size]
    p = max(bucket_len(max(len(ids[r]) for r in rows), 16), min_prompt_len)
    prompt_BxP = np.full((batch_size, p), pad_id, np.int32)
    prompt_len_B = np.ones(batch_size, np.int32)
    row_ids_B = np.full(batch_size, -1, np.int32)            # padding rows: a key of their own, never read
    for b, r in enumerate(rows):
      prompt_BxP[b, p - len(ids[r]):], prompt_len_B[b], row_ids_B[b] = ids[r], len(ids[r]), row_offset + r
    res = jax.device_get(sample_tokens(params, graphdef, jnp.asarray(prompt_BxP), jnp.asarray(prompt_len_B),
                                       rng, stop_V, stop_seqs, jnp.asarray(row_ids_B), **settings))
    for b, r in enumerate(rows):
      length = int(res["lengths"][b])
      tok = res["tokens"][b, :length].tolist()
      text, num, finish = _cut(tokenizer, tok, stop, bool(res["finished"][b]), eos_id)
      out[r] = Generation(prompts[r], text, num, tok, res["logprobs"][b, :length],
                          res["model_logprobs"][b, :length], finish)
  return out


# ---------------------------------------------------------------------------- `sample` mode

def parse_stop(config: Any) -> tuple:
  """Stop strings from a config: `stop` (comma-separated, Python escapes such as \\n) and the speaker tags."""
  plain = [s.encode().decode("unicode_escape") for s in str(config.stop).split(",") if s]
  return tuple(plain) + (speaker_stops([config.prompt]) if config.stop_at_speaker_tag else ())


def run(config: Any, workdir: str) -> None:
  """`sample` mode: print continuations of `config.prompt` and write them to DIR/samples.jsonl."""
  model, tokenizer = hf.load(config.init_from, config.dtype)
  if tokenizer is None:
    raise ConfigError(f"config.init_from: {config.init_from} has no tokenizer beside it (tokenizer.json)")
  if config.num_samples < 1:
    raise ConfigError(f"config.num_samples: {config.num_samples} is not >= 1")
  n = 1 if config.greedy else config.num_samples
  gens = generate(model, tokenizer, [config.prompt] * n, rng=jax.random.key(config.seed),
                  max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
                  top_k=config.top_k, greedy=config.greedy, stop=parse_stop(config), batch_size=n)
  how = "greedy" if config.greedy else (f"temperature {config.temperature}, top_p {config.top_p}, "
                                        f"top_k {config.top_k}, seed {config.seed}")
  print(f"{config.init_from} ({how}):\n{config.prompt}")
  for i, g in enumerate(gens):
    print(f"[{i}] {g.text!r}  ({g.num_tokens} tokens, {g.finish}, "
          f"log p {float(np.sum(g.model_logprobs[:g.num_tokens])):.2f})")
  lines = [json.dumps({"prompt": g.prompt, "text": g.text, "num_tokens": g.num_tokens, "finish": g.finish,
                       "token_ids": g.token_ids, "model_logprobs": [round(float(x), 5) for x in g.model_logprobs]})
           for g in gens]
  paths.atomic_write(pathlib.Path(workdir) / "samples.jsonl", "\n".join(lines) + "\n")
