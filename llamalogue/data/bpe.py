"""Byte-level BPE tokenizer and packed token arrays.

The tokenizer is GPT-2 style (byte-level pre-tokenizer without a prefix
space, no BOS, EOS `<|endoftext|>`, pad = EOS) and is saved so that
`transformers.AutoTokenizer.from_pretrained(dir)` loads it.

Packed arrays: every unit's ids followed by EOS, concatenated; a parallel
uint8 array marks the tokens that begin a lexical word (so the words in any
slice are the sum of the mask over it). Speaker tags and punctuation are
not words.
"""

import json
import multiprocessing
import pathlib
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from llamalogue.data.chat import PUNCT

EOS = "<|endoftext|>"


def train(texts: list[str], vocab_size: int):
  """Trains byte-level BPE on `texts` (one unit each), in a fresh process.

  A spawned process starts with the default malloc. In this one, runtime.keep_freed_memory()
  may have limited malloc to one arena (for XLA), and the trainer's threads would contend for
  it: 14 s instead of 4 s on the full corpus.
  """
  with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
    return Tokenizer.from_str(pool.submit(_train_to_json, texts, vocab_size).result())


def _train_to_json(texts: list[str], vocab_size: int) -> str:
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
  return tok.to_str()


def save(tok, out_dir: pathlib.Path) -> None:
  """Writes tokenizer.json plus the Hugging Face config files."""
  tok.save(str(out_dir / "tokenizer.json"))
  special = {"eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
  config = {
      "tokenizer_class": "PreTrainedTokenizerFast",
      **special,
      "bos_token": None,
      "add_bos_token": False,
      "add_eos_token": False,
      "add_prefix_space": False,
      "clean_up_tokenization_spaces": False,
      "model_input_names": ["input_ids", "attention_mask"],
  }
  (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
  (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def load(path: pathlib.Path):
  return Tokenizer.from_file(str(path))


def token_dtype(vocab_size: int):
  return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def encode(tok, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
  """Packs `texts` (each followed by EOS) -> (tokens_N, words_N).

  Texts are single-space separated chunks (words, `*TAG:`, punctuation).
  The byte-level pre-tokenizer never merges across a space, so each
  distinct chunk (with its leading space, or none at the start of a text)
  is encoded once and the results are gathered: the same ids as encoding
  every text whole, several times faster. A chunk's first token begins a
  lexical word unless the chunk is a tag or punctuation.
  """
  dtype = token_dtype(tok.get_vocab_size())
  if not texts:
    return np.zeros(0, dtype), np.zeros(0, np.uint8)
  chunks = []
  for text in texts:
    first, *rest = text.split(" ")
    chunks.append(first)
    chunks.extend([" " + c for c in rest])
    chunks.append(EOS)
  index = {}
  chunk_C = np.fromiter((index.setdefault(c, len(index)) for c in chunks), np.int64, len(chunks))
  del chunks
  distinct = list(index)
  pieces = [e.ids for e in tok.encode_batch_fast(distinct, add_special_tokens=False)]
  length_U = np.fromiter((len(p) for p in pieces), np.int64, len(pieces))
  lexical_U = np.fromiter((_is_lexical(c) for c in distinct), np.uint8, len(distinct))
  flat = np.fromiter((i for p in pieces for i in p), np.int64, int(length_U.sum()))
  offset_U = np.cumsum(length_U) - length_U
  length_C = length_U[chunk_C]
  end_C = np.cumsum(length_C)
  first_C = end_C - length_C                      # position of each chunk's first token
  gather_N = np.arange(int(end_C[-1])) - np.repeat(first_C - offset_U[chunk_C], length_C)
  tokens_N = flat[gather_N].astype(dtype)
  words_N = np.zeros(tokens_N.shape, np.uint8)
  words_N[first_C] = lexical_U[chunk_C]
  return tokens_N, words_N


def _is_lexical(chunk: str) -> bool:
  c = chunk.lstrip(" ")
  return bool(c) and c != EOS and c not in PUNCT and not c.startswith("*")


def save_arrays(out_dir: pathlib.Path, name: str, tokens_N: np.ndarray, words_N: np.ndarray) -> None:
  np.save(out_dir / f"{name}_tokens.npy", tokens_N)
  np.save(out_dir / f"{name}_words.npy", words_N)
