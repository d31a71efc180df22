"""Batched, jitted log-probability scoring of a character span of each text.

A request is `(text, span_start)`: the scored span is `text[span_start:]` (0 = the
whole text). Tokens whose character end lies past `span_start` are scored, from
the first such token to the end; the text's first token (a BOS if the tokenizer
adds one) is never scored, as it has no context. Two conventions:

* `study` -- the study's scripts: minicons `IncrementalLMScorer.sequence_score` /
  `conditional_score` with `reduction=sum, bow_correction=True`. Every scored
  token k gets the beginning-of-word correction of Pimentel & Meister (2024) as
  minicons applies it: `+ log P(next token starts a word | t_<=k)` when t_k ends a
  word (the next token starts with the tokenizer's space symbol, or t_k is last),
  `- log P(t_k starts a word | t_<k)` when t_k starts a word (never for the first
  scored token). With a sum this telescopes to `+ log P(bow | whole text)`.
  A tokenizer without a space symbol (minicons `is_bow_tokenizer`) gets no correction.
* `babylm2025` -- the BabyLM 2025 pipeline: plain sum over the scored span.

Texts are bucketed by length (`bucket_len`: multiples of `pad_multiple`, then
steps of ~1.5x) with a fixed batch size per bucket, so each shape compiles once,
and same-shape models share the compiled programs. Right padding is safe for a
causal model: positions before a pad never see it. Candidates sharing a long
token prefix (entity tracking) run it once (shared_prefix.py); scores are cached
by (text, span start) across tasks.
"""

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evaluation import shared_prefix
from evaluation.shared_prefix import common_prefix_len
from llamalogue import ops
from llamalogue.shapes import batch_size_for, bucket_len, tail_batch_size
from llamalogue.errors import ConfigError, DataError

CONVENTIONS = ("study", "babylm2025")


# ---------------------------------------------------------------------------- tokenizer side

def bow_vocab_mask(tokenizer, vocab_size: int) -> np.ndarray | None:
  """`[V]` bool: token ids starting with the space symbol, as minicons decides; None if none.

  minicons takes the first character of the token that `" "` encodes to as the
  beginning-of-word symbol (byte-level BPE: `Ġ`); it is not one when it equals the
  BOS or EOS token. Added tokens with `lstrip` count as word-initial too.
  """
  try:
    ids = tokenizer(" ", add_special_tokens=False)["input_ids"]
    symbol = tokenizer.convert_ids_to_tokens(ids[0])[0]
  except Exception:  # as minicons: any failure means "no bow symbol"
    symbol = None
  if symbol is None or symbol in (tokenizer.bos_token, tokenizer.eos_token):
    return None
  mask_V = np.zeros(vocab_size, bool)
  for token, idx in tokenizer.get_vocab().items():
    if idx < vocab_size and token[:1] == symbol:
      mask_V[idx] = True
  for idx, added in tokenizer.added_tokens_decoder.items():
    if idx < vocab_size and getattr(added, "lstrip", False):
      mask_V[idx] = True
  return mask_V


def first_in_span(offsets: Sequence[tuple[int, int]], span_start: int) -> int:
  """Index of the first token whose character end lies past `span_start` (len if none)."""
  for i, (_, end) in enumerate(offsets):
    if end > span_start:
      return i
  return len(offsets)


def encode(tokenizer, texts: Sequence[str], span_starts: Sequence[int]) -> tuple[list[list[int]], np.ndarray]:
  """Token ids of each text (special tokens as the tokenizer adds them) and the first scored index."""
  if not getattr(tokenizer, "is_fast", False):
    raise ConfigError("evaluation needs a fast (Rust) tokenizer: character offsets come from it")
  enc = tokenizer(list(texts), return_offsets_mapping=True, return_attention_mask=False)
  ids = [list(x) for x in enc["input_ids"]]
  first = np.array([max(1, first_in_span(off, s)) for off, s in zip(enc["offset_mapping"], span_starts)],
                   dtype=np.int64)
  return ids, first


# ---------------------------------------------------------------------------- numerics

def token_stats(model, h_BxLxD: jax.Array, tokens_BxL: jax.Array, bow_V: jax.Array | None):
  """Per-position log-probabilities of the actual tokens and of "next token starts a word", from the
  hidden states `h` of `tokens` (`ops.token_logprobs` through the model's head: chunked).

  Returns `tok_lp_BxL` with `tok_lp[:, k] = log p(t_k | t_<k)` (0 at k = 0) and
  `bow_lp_BxL` with `bow_lp[:, k] = log P(t_{k+1} is word-initial | t_<=k)` (zeros if
  `bow_V` is None).
  """
  next_BxL = jnp.pad(tokens_BxL[:, 1:], ((0, 0), (0, 1)))    # the last position's target is a placeholder
  out = ops.token_logprobs(h_BxLxD, model.head_kernel(), next_BxL, mask_V=bow_V)
  tok_lp_BxL = jnp.pad(out["logprobs"][:, :-1], ((0, 0), (1, 0)))
  if bow_V is None:
    return tok_lp_BxL, jnp.zeros_like(tok_lp_BxL)
  return tok_lp_BxL, out["masked_logprob"]


def span_scores(tok_lp_BxL: np.ndarray, bow_lp_BxL: np.ndarray, is_bow_BxL: np.ndarray,
                lengths_B: np.ndarray, first_B: np.ndarray, bow_correction: bool) -> np.ndarray:
  """Summed score of tokens `first..length-1` of each row, per-token as minicons computes it."""
  k_1xL = np.arange(tok_lp_BxL.shape[1])[None, :]
  n_Bx1 = np.asarray(lengths_B)[:, None]
  s_Bx1 = np.maximum(np.asarray(first_B), 1)[:, None]
  scored_BxL = (k_1xL >= s_Bx1) & (k_1xL < n_Bx1)
  per_tok_BxL = np.where(scored_BxL, tok_lp_BxL, 0.0).astype(np.float64)
  if bow_correction:
    next_is_bow_BxL = np.zeros_like(is_bow_BxL)
    next_is_bow_BxL[:, :-1] = is_bow_BxL[:, 1:]
    ends_word_BxL = scored_BxL & ((k_1xL == n_Bx1 - 1) | next_is_bow_BxL)
    starts_word_BxL = scored_BxL & (k_1xL > s_Bx1) & is_bow_BxL
    prev_bow_lp_BxL = np.zeros_like(bow_lp_BxL)
    prev_bow_lp_BxL[:, 1:] = bow_lp_BxL[:, :-1]
    per_tok_BxL = (per_tok_BxL + np.where(ends_word_BxL, bow_lp_BxL, 0.0)
                   - np.where(starts_word_BxL, prev_bow_lp_BxL, 0.0))
  return per_tok_BxL.sum(axis=1)


# ---------------------------------------------------------------------------- batching

def plan_batches(lengths: Sequence[int], pad_multiple: int, batch_tokens: int,
                 max_batch: int) -> list[tuple[int, int, np.ndarray]]:
  """Groups row indices into `(batch_size, pad_len, rows)` buckets, shortest first."""
  lengths = np.asarray(lengths, dtype=np.int64)
  pad_N = np.array([bucket_len(int(n), pad_multiple) for n in lengths], dtype=np.int64)
  order = np.argsort(lengths, kind="stable")
  plans = []
  for pad_len in np.unique(pad_N):
    same = order[pad_N[order] == pad_len]
    bsz = batch_size_for(int(pad_len), batch_tokens, max_batch)
    for start in range(0, len(same), bsz):
      rows = same[start:start + bsz]
      plans.append((min(bsz, tail_batch_size(len(rows))), int(pad_len), rows))
  return plans


# ---------------------------------------------------------------------------- scorer

_COMPILED: dict = {}   # (graphdef, jit) -> jitted functions, reused by every scorer of the same model shape


def _compile(graphdef, jit: bool):
  """The (full rows, shared prefix) statistics functions of a model shape, jitted; params, tokens and
  the BOW mask (None: no BOW) are arguments."""

  def stats(params, tokens_BxL, bow_V):
    model = nnx.merge(graphdef, params)
    return token_stats(model, model.hidden(tokens_BxL), tokens_BxL, bow_V)

  def group_stats(params, prefix_BxP, prefix_len_B, cont_BxKxC, last_tok_B, bow_V):
    model = nnx.merge(graphdef, params)
    last_BxD, cont_BxKxCxD = shared_prefix.forward(model, prefix_BxP, prefix_len_B, cont_BxKxC)
    b, k, c, d = cont_BxKxCxD.shape
    h = jnp.concatenate([jnp.broadcast_to(last_BxD[:, None, None, :], (b, k, 1, d)), cont_BxKxCxD], 2)
    tokens = jnp.concatenate([jnp.broadcast_to(last_tok_B[:, None, None], (b, k, 1)), cont_BxKxC], 2)
    return token_stats(model, h.reshape(b * k, c + 1, d), tokens.reshape(b * k, c + 1), bow_V)

  return (jax.jit(stats), jax.jit(group_stats)) if jit else (stats, group_stats)


@dataclasses.dataclass
class Scorer:
  """Scores `(text, span_start)` requests with one of our Llamas (`graphdef`, `params`).

  Candidates sharing at least `min_shared` prefix tokens run that prefix once through the
  model's KV cache (`share_prefix`, evaluation/shared_prefix.py). Scorers of models with the
  same graphdef share their compiled programs.
  """
  graphdef: object
  params: object
  tokenizer: object
  vocab_size: int
  convention: str = "study"
  pad_multiple: int = 8
  batch_tokens: int = 2048
  max_batch: int = 64
  max_len: int = 0                # 0: no limit; longer texts raise
  jit: bool = True
  share_prefix: bool = True
  min_shared: int = 48

  def __post_init__(self):
    if self.convention not in CONVENTIONS:
      raise ConfigError(f"config.convention: {self.convention!r} is not one of {CONVENTIONS}")
    if self.tokenizer is None:
      raise ConfigError("evaluation needs a tokenizer: none was found beside the checkpoint")
    if len(self.tokenizer) > self.vocab_size:
      raise ConfigError(f"the tokenizer has {len(self.tokenizer)} tokens but the model's vocabulary is "
                        f"{self.vocab_size}: checkpoint and tokenizer do not belong together")
    self.bow_V = bow_vocab_mask(self.tokenizer, self.vocab_size)
    self.bow_correction = self.convention == "study" and self.bow_V is not None
    self.pad_id = self.tokenizer.pad_token_id
    if self.pad_id is None:
      self.pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
    key = (self.graphdef, self.jit)
    if key not in _COMPILED:
      _COMPILED[key] = _compile(self.graphdef, self.jit)
    self._stats, self._group_stats = _COMPILED[key]
    self._bow_arg = jnp.asarray(self.bow_V) if self.bow_correction else None   # data: an argument, never a constant
    self._cache: dict[tuple[str, int], float] = {}   # (text, span_start) -> score, across tasks
    self.is_bow_V = self.bow_V if self.bow_V is not None else np.zeros(self.vocab_size, bool)

  @classmethod
  def from_model(cls, model, tokenizer, **kwargs) -> "Scorer":
    """A scorer for one of our Llamas (llamalogue/model.py)."""
    graphdef, state = nnx.split(model)
    return cls(graphdef, state, tokenizer, model.cfg.vocab_size, **kwargs)

  def clear_cache(self) -> None:
    """Forgets cached scores (compiled programs are kept)."""
    self._cache.clear()

  def describe(self) -> dict:
    """What a result file records about how scores were computed."""
    return {"convention": self.convention, "bow_correction": self.bow_correction,
            "first_token_scored": False, "bos_added": self._adds_bos(),
            "reduction": "sum", "log_base": "e", "pair_rule": "correct iff right item scores strictly higher",
            "span_rule": "from the first token whose character end lies past the span start, to the end"}

  def _adds_bos(self) -> bool:
    bos = self.tokenizer.bos_token_id
    ids = self.tokenizer("a")["input_ids"]
    return bos is not None and len(ids) > 0 and ids[0] == bos

  def score(self, texts: Sequence[str], span_starts: Sequence[int] | None = None,
            progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Summed log-probability (nats) of the span of each text, float64 `[N]`.

    Scores are cached by (text, span_start) for the scorer's lifetime, so a text
    shared by two tasks (BLiMP and its BabyLM-filtered subset) is scored once.
    """
    if span_starts is None:
      span_starts = [0] * len(texts)
    keys = list(zip(texts, (int(s) for s in span_starts)))
    todo = list(dict.fromkeys(k for k in keys if k not in self._cache))
    if progress is not None and len(todo) < len(keys):
      progress(len(keys) - len(todo))
    if todo:
      ids, first = encode(self.tokenizer, [t for t, _ in todo], [s for _, s in todo])
      self._cache.update(zip(todo, self.score_ids(ids, first, self.bow_correction, progress).tolist()))
    return np.array([self._cache[k] for k in keys], np.float64)

  def score_groups(self, groups: Sequence[Sequence[tuple[str, int]]],
                   progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """Scores of each group's `(text, span_start)` candidates; a long shared prefix runs once.

    `progress` counts distinct candidates (cached ones at once).
    """
    distinct = dict.fromkeys(k for g in groups for k in g)
    if progress is not None:
      progress(sum(k in self._cache for k in distinct))
    todo = [g for g in dict.fromkeys(tuple(g) for g in groups) if any(k not in self._cache for k in g)]
    plain, shared = {}, []
    if todo:
      flat = [k for g in todo for k in g]
      ids, first = encode(self.tokenizer, [t for t, _ in flat], [s for _, s in flat])
      offset = 0
      for g in todo:
        rows, firsts = ids[offset:offset + len(g)], first[offset:offset + len(g)]
        offset += len(g)
        n = min(common_prefix_len(rows), int(firsts.min())) if len(g) > 1 else 0
        if self.share_prefix and n >= self.min_shared:
          shared.append((g, rows, firsts, n))
        else:
          plain.update((k, (r, f)) for k, r, f in zip(g, rows, firsts) if k not in self._cache)
    if plain:
      scores = self.score_ids([r for r, _ in plain.values()], [f for _, f in plain.values()],
                              self.bow_correction, progress)
      self._cache.update(zip(plain, scores.tolist()))
    if shared:
      self._check([r for g in shared for r in g[1]], np.array([len(r) for g in shared for r in g[1]]))
      self._score_shared(shared, progress)
    return [np.array([self._cache[k] for k in g], np.float64) for g in groups]

  def _score_shared(self, shared, progress):
    """Groups `(keys, rows, firsts, n_shared)` bucketed by (size, prefix, continuation length)."""
    buckets: dict[tuple[int, int, int], list] = {}
    for g in shared:
      keys, rows, _, n = g
      cont = max(len(r) for r in rows) - n
      key = (len(keys), bucket_len(n, self.pad_multiple), bucket_len(max(cont, 1), self.pad_multiple))
      buckets.setdefault(key, []).append(g)
    for (k, p, c), groups in sorted(buckets.items()):
      bsz = batch_size_for(p + k * c, self.batch_tokens, self.max_batch)
      for start in range(0, len(groups), bsz):
        chunk = groups[start:start + bsz]
        prefix = np.full((bsz, p), self.pad_id, np.int32)
        prefix_len = np.ones(bsz, np.int32)
        cont = np.full((bsz, k, c), self.pad_id, np.int32)
        last_tok = np.full(bsz, self.pad_id, np.int32)
        lengths, firsts = [], []
        for b, (_, rows, f, n) in enumerate(chunk):
          prefix[b, :n], prefix_len[b], last_tok[b] = rows[0][:n], n, rows[0][n - 1]
          for j, r in enumerate(rows):
            cont[b, j, :len(r) - n] = r[n:]
          lengths += [len(r) - n + 1 for r in rows]
          firsts += list(np.asarray(f) - (n - 1))
        tok_lp, bow_lp = jax.device_get(self._group_stats(self.params, jnp.asarray(prefix), jnp.asarray(prefix_len),
                                                          jnp.asarray(cont), jnp.asarray(last_tok), self._bow_arg))
        m = len(chunk) * k
        tokens = np.concatenate([np.repeat(last_tok[:, None, None], k, 1), cont], 2).reshape(bsz * k, c + 1)
        scores = span_scores(np.asarray(tok_lp[:m]), np.asarray(bow_lp[:m]), self.is_bow_V[tokens[:m]],
                             np.array(lengths), np.array(firsts), self.bow_correction)
        self._cache.update(zip([key for g in chunk for key in g[0]], scores.tolist()))
        if progress is not None:
          progress(m)

  def next_token_logprobs(self, contexts: Sequence[str], target_ids: Sequence[int],
                          progress: Callable[[int], None] | None = None) -> np.ndarray:
    """log p(target | context) for one next token each (context tokenized with special tokens)."""
    ids, _ = encode(self.tokenizer, contexts, [0] * len(contexts))
    ids = [row + [int(t)] for row, t in zip(ids, target_ids)]
    first = np.array([len(row) - 1 for row in ids])
    return self.score_ids(ids, first, False, progress)

  def score_ids(self, ids: Sequence[Sequence[int]], first: Sequence[int], bow_correction: bool,
                progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Scores token-id rows from index `first` on; rows are bucketed and padded."""
    lengths = np.array([len(r) for r in ids], dtype=np.int64)
    self._check(ids, lengths)
    out = np.zeros(len(ids), np.float64)
    first = np.asarray(first)
    for bsz, pad_len, rows in plan_batches(lengths, self.pad_multiple, self.batch_tokens, self.max_batch):
      tokens_BxL = np.full((bsz, pad_len), self.pad_id, np.int32)
      for b, r in enumerate(rows):
        tokens_BxL[b, :lengths[r]] = ids[r]
      tok_lp, bow_lp = jax.device_get(self._stats(self.params, jnp.asarray(tokens_BxL), self._bow_arg))
      n = len(rows)
      out[rows] = span_scores(np.asarray(tok_lp[:n]), np.asarray(bow_lp[:n]), self.is_bow_V[tokens_BxL[:n]],
                              lengths[rows], first[rows], bow_correction)
      if progress is not None:
        progress(n)
    return out

  def _check(self, ids, lengths):
    if not len(ids):
      return
    top = max((max(r) for r in ids if len(r)), default=0)
    if top >= self.vocab_size:
      raise DataError(f"the tokenizer produced token id {top} but the model's vocabulary is {self.vocab_size}: "
                      "checkpoint and tokenizer do not belong together")
    if self.max_len and int(lengths.max()) > self.max_len:
      raise DataError(f"a text has {int(lengths.max())} tokens, more than the model's maximum {self.max_len}")


# ---------------------------------------------------------------------------- decisions

def choice_correct(scores_NxK: np.ndarray, label: int = 0) -> np.ndarray:
  """Correct iff option `label` scores strictly higher than every other option."""
  scores_NxK = np.asarray(scores_NxK)
  others = np.delete(scores_NxK, label, axis=1)
  return scores_NxK[:, label] > others.max(axis=1)


def softmax_first(scores_NxK: np.ndarray) -> np.ndarray:
  """Probability of the first option under a softmax over summed log-probs (BabyLM wug)."""
  s = np.asarray(scores_NxK, np.float64)
  s = s - s.max(axis=1, keepdims=True)
  e = np.exp(s)
  return e[:, 0] / e.sum(axis=1)
