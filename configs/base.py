"""Shared config pieces. Each experiment config composes these in get_config(arg)."""

import ml_collections


def data(tiny: bool = False) -> ml_collections.ConfigDict:
  """CHILDES -> triplets -> tokenizer -> packed tokens (llamalogue/data)."""
  d = ml_collections.ConfigDict()
  # Comma-separated TalkBank ZIPs, directories, .cha files or URLs. `data:` = $LLAMALOGUE_DATA.
  d.childes = "data:childes"
  d.strict = False              # True: one bad file stops the run instead of being skipped.
  d.max_words = 10_000_000      # lexical-word budget of the pre-training split
  d.min_words = 3               # lexical-word minimum per utterance in a triplet (STUDY.md §2)
  d.unit_size = 3               # utterances per dialogue unit (triplets)
  d.require_child = True        # a unit must involve the target child
  d.speakers = ""               # comma-separated speaker codes to keep ("" = all)
  d.split_seed = 42
  d.heldout_a = 0.05            # fraction of transcripts for preference pairs + minimal pairs
  d.heldout_b = 0.05            # fraction of transcripts for PPO prompts
  d.vocab_size = 8_465
  d.seq_len = 128
  d.num_workers = 2
  if tiny:
    d.childes = "data:childes/Eng-UK/Wooten.zip,data:childes/Eng-NA/Bliss.zip,data:childes/Eng-NA/McMillan.zip,data:childes/Eng-NA/Haggerty.zip"
    d.max_words = 100_000
    d.vocab_size = 1_024
    d.seq_len = 64
    d.heldout_a = 0.1
    d.heldout_b = 0.1
  return d


def mesh() -> ml_collections.ConfigDict:
  """Device mesh ('data', 'fsdp'); -1 means 'all remaining devices'."""
  m = ml_collections.ConfigDict()
  m.data = -1
  m.fsdp = 1
  return m


def model(preset: str) -> ml_collections.ConfigDict:
  """A model preset by name (llamalogue/model.py PRESETS); any field set here overrides it.

  Unset fields (None) come from the preset; vocab_size, if unset, from the tokenizer.
  """
  from ml_collections.config_dict import placeholder
  m = ml_collections.ConfigDict()
  m.preset = preset
  m.dtype = "float32"           # compute dtype: auto, float32 or bfloat16 (params stay float32)
  for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
               "head_dim", "max_seq_len"):
    m[name] = placeholder(int)
  for name in ("rope_theta", "rms_norm_eps", "initializer_range"):
    m[name] = placeholder(float)
  m.tie_embeddings = placeholder(bool)
  return m
