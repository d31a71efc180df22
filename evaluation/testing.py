"""Small offline fixtures for evaluation tests and benchmarks: a byte-level BPE
tokenizer like the project's (no BOS, EOS = pad = `<|endoftext|>`) and a random
Llama of ours exported as a Hugging Face directory that minicons can load.
"""

import pathlib

EOS = "<|endoftext|>"

SAMPLE_TEXTS = [
    "*MOT: what is that ? *CHI: it looks like a gun .",
    "*MOT: pull the string . *CHI: and where do they hook it ?",
    "*MOT: do you want to watch the football with Daddy ? *CHI: I want to .",
    "Lucille's sisters are confused by Amy.",
    "A lot of hospitals were astounded by some actress.",
    "the wolf brought i my hill .",
    "Box 0 contains the blue card and the small tissue, Box 1 contains nothing.",
    "Create a noun out of the following adjective: actignable. actignability",
    "A: What did you get?\nB: I got a chair.",
]


def make_tokenizer(out_dir, texts=None, vocab_size: int = 400):
  """Trains a tiny byte-level BPE on `texts` and saves a transformers fast tokenizer."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  from transformers import PreTrainedTokenizerFast
  texts = list(texts or SAMPLE_TEXTS)
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.post_processor = processors.ByteLevel(trim_offsets=False)
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train_from_iterator(texts, trainer)
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  fast.save_pretrained(str(out_dir))
  return fast


def make_model(vocab_size: int, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4,
               kv_heads: int = 2, intermediate: int = 128, init_std: float = 0.3, tie: bool = False):
  """A random Llama of ours; a large `init_std` makes its predictions peaked, not uniform."""
  from flax import nnx
  from llamalogue import model as model_lib
  cfg = model_lib.LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_layers=layers, num_heads=heads,
                              num_kv_heads=kv_heads, intermediate_size=intermediate, initializer_range=init_std,
                              tie_embeddings=tie, max_seq_len=1024)
  return model_lib.Llama(cfg, rngs=nnx.Rngs(seed))


def make_exported(out_dir, texts=None, tokenizer_vocab: int = 400, seed: int = 0, **model_kwargs):
  """Tokenizer + random model of ours -> HF directory `out_dir` (via llamalogue.hf.export)."""
  from llamalogue import hf
  out_dir = pathlib.Path(out_dir)
  tok_dir = out_dir.parent / f"{out_dir.name}_tokenizer"
  tok = make_tokenizer(tok_dir, texts, tokenizer_vocab)
  model = make_model(len(tok), seed, **model_kwargs)
  hf.export(model, out_dir, tokenizer_dir=tok_dir)
  return out_dir
