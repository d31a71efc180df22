"""Shared config pieces. Each experiment config composes these in get_config(arg)."""

import ml_collections


def data(tiny: bool = False) -> ml_collections.ConfigDict:
  """CHILDES -> triplets -> tokenizer -> packed tokens (llamalogue/data, `prepare` mode)."""
  d = ml_collections.ConfigDict()
  # Comma-separated TalkBank ZIPs, directories, .cha files or URLs. `data:` = $LLAMALOGUE_DATA.
  d.childes = "data:childes"
  d.strict = False              # True: one bad file stops the run instead of being skipped.
  d.max_words = 10_000_000      # lexical-word budget of the pre-training split (BabyLM strict-small)
  # Units: `unit_size` adjacent utterances with their tags, from transcripts with >= 2
  # speakers. An utterance below `min_words` lexical words ends a run (no unit spans it);
  # a unit needs `min_unit_words` in all (the summary's ">= 5 lexical words"). The
  # study's released pairs have >= 3 words per turn: the pair builder applies that.
  d.min_words = 1               # lexical-word minimum per utterance in a unit
  d.min_unit_words = 5          # lexical-word minimum per unit
  d.unit_size = 3               # utterances per dialogue unit (triplets)
  d.require_child = True        # a unit must involve the target child
  d.speakers = ""               # comma-separated speaker codes or roles to keep ("" = all)
  d.normalize_tags = True       # the single target child / mother / father are *CHI: / *MOT: / *FAT:
  d.split_seed = 42             # seeded hash of each transcript's path picks its split
  d.heldout_a = 0.05            # fraction of transcripts for preference pairs + minimal pairs
  d.heldout_b = 0.05            # fraction of transcripts for PPO prompts
  d.valid = 0.02                # fraction of transcripts for the eval-loss slice (valid_*.npy)
  d.vocab_size = 8_465          # byte-level BPE incl. <|endoftext|>
  d.seq_len = 128               # training window (read by the iterator, not by prepare)
  d.num_workers = 2             # processes reading transcripts
  # A data directory made by `prepare` (maybe on another machine): used as it is, checked by its
  # DONE manifest, tokenizer and token arrays; `childes` is then not read. "" = prepare in DIR/data.
  d.prepared = ""
  if tiny:
    # Ten small corpora (~1.4 MB zipped): ~90 k words of pre-training dialogue.
    d.childes = ",".join(f"data:childes/{c}.zip" for c in (
        "Eng-UK/Wooten", "Eng-NA/Bliss", "Eng-NA/McMillan", "Eng-NA/Haggerty", "Eng-NA/Bloom70", "Eng-NA/Bloom73",
        "Eng-NA/Bohannon", "Eng-NA/Evans", "Eng-NA/Feldman", "Eng-NA/Warren"))
    d.max_words = 100_000
    d.vocab_size = 1_024
    d.seq_len = 64
    d.heldout_a = 0.1
    d.heldout_b = 0.1
    d.valid = 0.1
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
