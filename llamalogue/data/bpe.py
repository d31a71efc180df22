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
import pathlib

import numpy as np

EOS = "<|endoftext|>"
SPACE = "Ġ"   # how byte-level BPE writes a leading space


def train(texts: list[str], vocab_size: int):
  """Trains byte-level BPE on `texts` (one unit each)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
  return tok


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
  from tokenizers import Tokenizer
  return Tokenizer.from_file(str(path))


def token_dtype(vocab_size: int):
  return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


def encode(tok, texts: list[str], flags: list[str]) -> tuple[np.ndarray, np.ndarray]:
  """Packs `texts` (each followed by EOS) -> (tokens_N, words_N).

  `flags[i]` has one '1'/'0' per space-separated chunk of `texts[i]` (see
  units.word_flags). A token begins a chunk when it starts with the
  byte-level space or is the first of its unit; it begins a lexical word
  when that chunk's flag is '1'.
  """
  vocab_size = tok.get_vocab_size()
  eos = tok.token_to_id(EOS)
  dtype = token_dtype(vocab_size)
  if not texts:
    return np.zeros(0, dtype), np.zeros(0, np.uint8)
  encodings = tok.encode_batch_fast([t + EOS for t in texts], add_special_tokens=False)
  tokens_N = np.fromiter((i for e in encodings for i in e.ids), dtype=np.int64)
  del encodings
  space_V = np.zeros(vocab_size, bool)
  for token, i in tok.get_vocab().items():
    space_V[i] = token.startswith(SPACE)
  after_eos_N = np.zeros(tokens_N.shape, bool)
  after_eos_N[0] = True
  after_eos_N[1:] = tokens_N[:-1] == eos
  starts_N = (space_V[tokens_N] | after_eos_N) & (tokens_N != eos)
  flags_C = np.frombuffer("".join(flags).encode("ascii"), np.uint8) - ord("0")
  n_chunks = int(starts_N.sum())
  if n_chunks != flags_C.size:
    raise AssertionError(f"tokenizer chunks {n_chunks} != text chunks {flags_C.size}")
  words_N = np.zeros(tokens_N.shape, np.uint8)
  words_N[starts_N] = flags_C
  return tokens_N.astype(dtype), words_N


def save_arrays(out_dir: pathlib.Path, name: str, tokens_N: np.ndarray, words_N: np.ndarray) -> None:
  np.save(out_dir / f"{name}_tokens.npy", tokens_N)
  np.save(out_dir / f"{name}_words.npy", words_N)
