"""Teacher replies for the PPO rewards: n replies per mother turn, cached as JSONL (resumable).

  python main.py --config=configs/teacher_replies.py --config.prompts=FILE --workdir=DIR
  python main.py --config=configs/teacher_replies.py:tiny --workdir=DIR     # 4 turns, SmolLM2, CPU, offline

FILE: a text file of mother turns (one a line, `*MOT:` tag optional), a JSON/JSONL file of rows
with `prompt`, a prepared data dir (its heldout_b_dialogues.jsonl: the Mother's utterances of
> 3 tokens), or `data:...`. The study's settings (STUDY.md §6): 10 samples per turn, temperature
0.8, top-p 0.8, <= 20 new tokens, stop at a newline / "Mother:" / "Child:", the first utterance
kept; prompt from the authors' answers_generation_vllm_fast.py. The teacher was Llama-3.2-3B
(`--config.teacher=hf:meta-llama/Llama-3.2-3B` online); offline it is SmolLM2-135M-Instruct.
Writes DIR/teacher_replies/<teacher>-<key>.jsonl, one row per turn
`{"prompt", "replies", "raw", "logps"}` (`logps`: the teacher's summed log-probability of each
reply given the bare turn, for the confidence reward), and <...>.json with the settings.
The key hashes the teacher and every setting; rerunning skips turns already written.
"""

import ml_collections

SYSTEM = ("You are a young child having a conversation with your mother. When your mother says something, you "
          "should answer as a typical kind and natural-sounding child. Do NOT repeat her words. Instead, give a "
          "new, relevant answer that shows understanding. Keep it short and child-like.")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "teacher_replies"
  c.teacher = "smollm2"          # smollm2 | a .gguf file | a HF directory | hf:<repo id>
  c.cache_dir = ""               # converted GGUF teachers ("" = $LLAMALOGUE_CACHE or ~/.cache/llamalogue)
  c.dtype = "float32"
  c.prompts = ""
  c.max_prompts = 0              # 0 = every turn
  c.template = SYSTEM + "\nMother says: {mot}\n Child answers:"
  c.chat_template = False        # True: wrap the prompt in the teacher's chat template
  c.n = 10
  c.temperature = 0.8
  c.top_p = 0.8
  c.top_k = 0
  c.max_new_tokens = 20
  c.stop = ("\n", "Mother:", "Child:")
  c.first_utterance = True
  c.lowercase = False
  c.score_replies = True         # store each reply's teacher log-probability (confidence reward)
  c.seed = 0
  c.chunk = 16                   # turns per generation batch and per append
  if arg == "tiny":
    c.prompts = "data:communicative_baby/dpo_dataset/huggingface_dpo_format_eval.json"
    c.max_prompts = 4
  elif arg not in (None, ""):
    raise ValueError(f"configs/teacher_replies.py: unknown variant {arg!r} (use :tiny or nothing)")
  return c
