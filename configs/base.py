"""Shared config pieces: one source of settings per method. Each experiment config composes these in
get_config(arg); the per-experiment files (configs/dpo_natural.py, configs/ppo_bleu.py, ...) only pick
the method's variant, so two experiments of one method cannot drift apart."""

import ml_collections

from llamalogue import distributed as distributed_lib
from llamalogue.errors import ConfigError


def variant(arg: str | None, path: str, allowed: tuple[str, ...] = ("tiny",)) -> str:
  """The `:variant` of a config file ("" for none); an unknown one is a one-line config error."""
  if arg in (None, ""):
    return ""
  if arg not in allowed:
    choices = f"use {' or '.join(':' + a for a in allowed)} or none" if allowed else "it has none"
    raise ConfigError(f"{path}: unknown variant {arg!r} ({choices})")
  return arg


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
  # With require_child=False: -1 keeps units without the child at the corpora's natural share; a
  # fraction in [0, 1] is their share of the pre-training words (held-out splits stay child-only).
  d.adult_share = -1.0
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


def distributed() -> ml_collections.ConfigDict:
  """How many processes run the job (llamalogue/distributed.py): "" = one; auto; or host:port with
  num_processes and process_id (what `python -m llamalogue.launch` passes). In every config."""
  return distributed_lib.default_config()


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


# The child-persona instruction of the study's teacher prompts (the authors' answers_generation_vllm_fast.py
# for PPO's teacher replies, which says "typical kind and natural-sounding", and
# generate_dpo_pref_from_file.py for the synthetic DPO pairs, which says "typical and natural-sounding").
CHILD_PERSONA = ("You are a young child having a conversation with your mother. When your mother says something, "
                 "you should answer as a typical {kind}natural-sounding child. Do NOT repeat her words. Instead, give "
                 "a new, relevant answer that shows understanding. Keep it short and child-like.")


def reply_settings(purpose: str) -> ml_collections.ConfigDict:
  """How a teacher writes child replies (rl/teacher.py REPLY_SETTINGS + `chunk`), as the study did for
  `purpose`: "ppo" (PPO's teacher replies, STUDY.md §6: 10 samples, temperature 0.8, top-p 0.8, <= 20
  tokens, each reply's log-probability kept for the confidence reward) or "synthetic" (synthetic DPO
  pairs, STUDY.md §5: one reply, temperature 0.7, top-p 0.9, <= 30 tokens, lower-cased)."""
  ppo = purpose == "ppo"
  s = ml_collections.ConfigDict()
  s.template = CHILD_PERSONA.format(kind="kind and " if ppo else "and ") + (
      "\nMother says: {mot}\n Child answers:" if ppo else "\nMother says: {mot}\nChild:")
  s.chat_template = False        # True: wrap the prompt in the teacher's chat template
  s.n = 10 if ppo else 1
  s.temperature = 0.8 if ppo else 0.7
  s.top_p = 0.8 if ppo else 0.9
  s.top_k = 0
  s.max_new_tokens = 20 if ppo else 30
  s.stop = ("\n", "Mother:", "Child:")
  s.first_utterance = True
  s.lowercase = not ppo
  s.score_replies = ppo          # store each reply's teacher log-probability (confidence reward)
  s.seed = 0
  s.chunk = 16                   # turns per generation batch and per append
  return s


def teacher(mode: str, purpose: str) -> ml_collections.ConfigDict:
  """A teacher-LM mode's config (`teacher_replies`, `synthetic_pairs`): the teacher and its reply settings."""
  c = ml_collections.ConfigDict()
  c.mode = mode
  c.teacher = "smollm2"          # smollm2 | a .gguf file | a HF directory | hf:<repo id> (the study: Llama-3.2-3B)
  c.cache_dir = ""               # converted GGUF teachers ("" = $LLAMALOGUE_CACHE or ~/.cache/llamalogue)
  c.dtype = "float32"
  c.distributed = distributed()
  c.update(reply_settings(purpose))
  return c


def dpo(pairs: str, tiny: bool = False) -> ml_collections.ConfigDict:
  """The study's DPO run (STUDY.md §5) on `pairs` (configs/dpo_natural.py, configs/dpo_synthetic.py).

  β 0.1, sigmoid loss, lr 5e-6 decaying linearly to 0 without warmup, effective batch 32, 10 epochs
  over the first 18,000 pairs (5,630 steps); the reference is a frozen copy of the initial model, its
  log-probabilities computed once and cached (DIR/reference_logps.npz). Produces DIR/checkpoints
  (exact resume: rerun the command), DIR/tb, DIR/metrics.jsonl (trl's names: rewards/chosen,
  rewards/margins, rewards/accuracies, logps/chosen, ...), DIR/dpo_curves.png beside the study's
  logged curves, and DIR/eval/comparison.md: dialogue minimal pairs, Zorro and BLiMP-filtered for
  the base and the result. `tiny`: a CPU-sized run of a few steps.
  """
  c = ml_collections.ConfigDict()
  c.mode = "dpo"
  c.seed = 42
  c.init_from = ""                # our pre-training run or checkpoint, a HF directory, or hf:<repo id>
  # A pairs file (`data:` allowed; the study's JSON/CSV or JSONL {prompt, chosen, rejected}), hf:<dataset id>,
  # or `heldout_a`: built from the base's own held-out split (which also gives a held-out benchmark).
  c.pairs = pairs
  c.pairs_offset = 0
  c.pairs_limit = 18_000          # the study: the first 18,000 pairs
  c.pairs_data_dir = ""           # heldout_a: prepared data dir ("" = <init_from run>/data)
  c.on_error = "raise"            # raise: a bad pair row stops with its file and row | skip: counted and reported
  c.tokenization = "benchmark"    # benchmark: `prompt + " " + reply` as dialogue MP scores it | trl: trl 0.19.1's
  c.model = ml_collections.ConfigDict()
  c.model.dtype = "auto"          # bf16 compute on GPU/TPU, fp32 on CPU (params fp32)
  c.mesh = mesh()
  c.distributed = distributed()

  c.dpo = ml_collections.ConfigDict()
  c.dpo.beta = 0.1
  c.dpo.loss_type = "sigmoid"     # sigmoid | ipo | hinge
  c.dpo.label_smoothing = 0.0     # conservative DPO (sigmoid only), as trl
  c.dpo.pairs_per_row = 0         # pairs laid end to end in one token row; 0: ~128 tokens a row (rl/dpo.py)

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 10
  c.train.max_steps = 0           # 0: epochs x ceil(pairs / batch_size)
  c.train.batch_size = 32         # pairs per optimizer step (the study's effective batch)
  c.train.accum_steps = 1         # micro-batches per step
  c.train.eval_batch_size = 64    # pairs per reference forward pass
  c.train.log_every = 10
  c.train.eval_every = 0
  c.train.checkpoint_every = 500
  c.train.keep_latest = 2
  c.train.peak_flops = 0.0

  # trl / HF Trainer defaults as the study ran them: AdamW, linear decay to 0, no warmup, no weight decay.
  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.lr = 5e-6
  c.optimizer.schedule = "linear"
  c.optimizer.warmup_steps = 0
  c.optimizer.min_lr_ratio = 0.0
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.weight_decay = 0.0
  c.optimizer.grad_clip = 1.0

  # Held-out pair building (pairs=heldout_a), as configs/pairs.py.
  c.build = ml_collections.ConfigDict()
  c.build.seed = 42
  c.build.match = "word"
  c.build.overlap = "tokens"
  c.build.min_words = 3
  c.build.eval_fraction = 0.3
  c.build.adult_roles = "Mother,Father,Grandmother,Grandfather,Investigator,Adult,Teacher,Caretaker"

  # After training: base vs. result (evaluation/run.py; "" = no evaluation).
  c.eval = ml_collections.ConfigDict()
  c.eval.tasks = "dialogue_word,dialogue_token,zorro,blimp_filtered"
  c.eval.max_items_per_task = 0   # 0 = every item
  c.eval.convention = "study"
  if tiny:
    c.pairs_limit = 64
    c.train.epochs = 1
    c.train.batch_size = 8
    c.train.eval_batch_size = 16
    c.train.log_every = 2
    c.train.checkpoint_every = 4
    c.optimizer.lr = 1e-4
    c.eval.max_items_per_task = 40
  return c


def ppo(reward: str, tiny: bool = False) -> ml_collections.ConfigDict:
  """The study's PPO run (STUDY.md §6, trl 0.8.6) with `reward` (configs/ppo_<reward>.py).

  Batch 16, mini-batch 4, 4 PPO epochs, lr 1.41e-5, adaptive KL (0.2 -> target 6, horizon 10,000),
  γ 1, λ 0.95, clip 0.2, vf 0.1 (the confidence run: mini-batch 2, lr 5e-6, `abs` KL, KL init 0.02);
  queries `*MOT: <utt> *CHI:` from held-out split B, ≤ 20 new tokens at top-p 0.9. Offline the
  teacher / judge is SmolLM2-135M-Instruct (packaged GGUF) and the embedder the packaged
  all-MiniLM-L6-v2; online set --config.reward.teacher=hf:... (the study: Llama-3.2-3B; judge
  OLMo-2-1124-7B-Instruct). Produces DIR/checkpoints (exact resume), DIR/tb and DIR/metrics.jsonl
  with trl's names (env/reward_mean, objective/kl, ppo/loss/policy, ...), sample replies in
  DIR/samples.jsonl, DIR/ppo_reward.png beside the study's reward log, DIR/eval/comparison.md.
  `tiny`: offline on CPU, a few steps.
  """
  c = ml_collections.ConfigDict()
  c.mode = "ppo"
  c.seed = 42
  c.init_from = ""                # our pre-training run or checkpoint, a HF directory, or hf:<repo id>
  c.prompts = ""                  # mother turns: "" = held-out split B of the base's data; a file or data dir
  c.max_prompts = 0               # 0 = every turn
  c.response = "reply"            # reply: the parsed child reply, re-encoded | raw: the sampled tokens as they are
  c.on_nan_reward = "error"       # error: stop naming the reply | zero: count it and use 0
  c.on_empty_batch = "skip"       # skip: a batch with no parsed reply leaves the state unchanged (counted) | error
  c.model = ml_collections.ConfigDict()
  c.model.dtype = "auto"
  c.mesh = mesh()
  c.distributed = distributed()

  c.rollout = ml_collections.ConfigDict()
  c.rollout.max_new_tokens = 20
  c.rollout.temperature = 1.0
  c.rollout.top_p = 0.9
  c.rollout.top_k = 0

  c.ppo = ml_collections.ConfigDict()   # rl/ppo.py PPOConfig (trl 0.8.6 names and defaults)
  c.ppo.batch_size = 16
  c.ppo.mini_batch_size = 4
  c.ppo.ppo_epochs = 4
  c.ppo.learning_rate = 1.41e-5
  c.ppo.adap_kl_ctrl = True
  c.ppo.init_kl_coef = 0.2
  c.ppo.kl_penalty = "kl"         # kl | abs | mse | full
  c.ppo.target = 6.0
  c.ppo.horizon = 10_000.0
  c.ppo.gamma = 1.0
  c.ppo.lam = 0.95
  c.ppo.cliprange = 0.2
  c.ppo.cliprange_value = 0.2
  c.ppo.vf_coef = 0.1

  c.reward = ml_collections.ConfigDict()  # rl/rewards.py default_config()
  c.reward.name = reward          # bleu | semsim | llm_score | confidence | curriculum (with reward.curriculum)
  c.reward.curriculum = ""        # phases "name:steps,..." cycled over the global step ("" = off; STUDY.md §8.1)
  c.reward.curriculum_scale = True  # curriculum: each phase's reward mapped to [0, 1] by rl/rewards.py RANGES
  c.reward.replies = ""           # teacher-reply cache; "" = generate for the prompts into DIR/teacher_replies
  c.reward.reference_index = 0
  c.reward.teacher = "smollm2"    # the study: hf:meta-llama/Llama-3.2-3B
  c.reward.judge = "smollm2"      # the study: hf:allenai/OLMo-2-1124-7B-Instruct (PyTorch)
  c.reward.embedder = "minilm"
  c.reward.judge_scoring = "first_number"  # the study's | expected: Σ d·P(d) of the judge's first token (a graded
                                           # reward from a small judge that seldom writes a number, e.g. SmolLM2)
  c.reward.cache_dir = ""
  c.reward.dtype = "float32"
  c.reward.on_missing = "error"
  c.reward.replies_settings = reply_settings("ppo")   # how the teacher writes its replies when reward.replies is ""

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 1
  c.train.max_steps = 0           # 0: epochs x prompts // batch_size
  c.train.log_every = 1
  c.train.log_samples_every = 10
  c.train.eval_every = 0
  c.train.checkpoint_every = 100
  c.train.keep_latest = 2
  c.train.peak_flops = 0.0

  c.eval = ml_collections.ConfigDict()
  c.eval.tasks = "dialogue_word,dialogue_token,zorro"
  c.eval.max_items_per_task = 0
  c.eval.convention = "study"
  if reward == "confidence":      # the study's confidence run
    c.ppo.mini_batch_size = 2
    c.ppo.learning_rate = 5e-6
    c.ppo.kl_penalty = "abs"
    c.ppo.init_kl_coef = 0.02
  if tiny:
    c.max_prompts = 32
    c.train.max_steps = 4
    c.train.checkpoint_every = 2
    c.train.log_samples_every = 2
    c.reward.replies_settings.n = 4
    c.reward.replies_settings.max_new_tokens = 12
    c.eval.max_items_per_task = 40
  return c
