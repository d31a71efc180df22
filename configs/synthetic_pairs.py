"""Synthetic DPO pairs: chosen = a teacher LM's reply playing a young child, rejected unchanged.

  python main.py --config=configs/synthetic_pairs.py --config.pairs=NATURAL_PAIRS --workdir=DIR
  python main.py --config=configs/synthetic_pairs.py:tiny --workdir=DIR     # 4 pairs, SmolLM2, CPU, offline

NATURAL_PAIRS: a JSON list or JSONL file of `{"prompt": "*MOT: ...", "chosen": "*CHI: ...",
"rejected": "*CHI: ..."}` (default: the study's naturalistic set). The study's settings
(STUDY.md §5, the authors' generate_dpo_pref_from_file.py): one reply per turn, temperature 0.7,
top-p 0.9, <= 30 new tokens, stop at a newline / "Mother:" / "Child:", the first utterance,
lower-cased, tagged `*CHI: `. Writes DIR/synthetic_pairs.json (or .jsonl, as the input) and
the reply cache DIR/teacher_replies/ (resumable, as configs/teacher_replies.py).
"""

import ml_collections

SYSTEM = ("You are a young child having a conversation with your mother. When your mother says something, you "
          "should answer as a typical and natural-sounding child. Do NOT repeat her words. Instead, give a new, "
          "relevant answer that shows understanding. Keep it short and child-like.")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "synthetic_pairs"
  c.teacher = "smollm2"          # the study: hf:meta-llama/Llama-3.2-3B
  c.cache_dir = ""
  c.dtype = "float32"
  c.pairs = "data:communicative_baby/dpo_dataset/huggingface_dpo_format.json"
  c.max_pairs = 0                # 0 = every pair
  c.template = SYSTEM + "\nMother says: {mot}\nChild:"
  c.chat_template = False
  c.n = 1
  c.temperature = 0.7
  c.top_p = 0.9
  c.top_k = 0
  c.max_new_tokens = 30
  c.stop = ("\n", "Mother:", "Child:")
  c.first_utterance = True
  c.lowercase = True
  c.score_replies = False
  c.seed = 0
  c.chunk = 16
  if arg == "tiny":
    c.max_pairs = 4
  elif arg not in (None, ""):
    raise ValueError(f"configs/synthetic_pairs.py: unknown variant {arg!r} (use :tiny or nothing)")
  return c
