"""Teacher replies for the PPO rewards: n replies per mother turn, cached as JSONL (resumable).

  python main.py --config=configs/teacher_replies.py --config.prompts=FILE --workdir=DIR
  python main.py --config=configs/teacher_replies.py:tiny --workdir=DIR     # 4 turns, SmolLM2, CPU, offline

FILE: a text file of mother turns (one a line, `*MOT:` tag optional), a JSON/JSONL file of rows
with `prompt`, a prepared data dir (its heldout_b_dialogues.jsonl: the Mother's utterances of
> 3 tokens), or `data:...`. The study's settings (configs/base.py `reply_settings("ppo")`,
STUDY.md §6): 10 samples per turn, temperature 0.8, top-p 0.8, <= 20 new tokens, stop at a
newline / "Mother:" / "Child:", the first utterance kept. The teacher was Llama-3.2-3B
(`--config.teacher=hf:meta-llama/Llama-3.2-3B` online); offline it is SmolLM2-135M-Instruct.
Writes DIR/teacher_replies/<teacher>-<key>.jsonl, one row per turn
`{"prompt", "replies", "raw", "logps"}` (`logps`: the teacher's summed log-probability of each
reply given the bare turn, for the confidence reward), and <...>.json with the settings.
The key hashes the teacher and every setting; rerunning skips turns already written.
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  tiny = base.variant(arg, "configs/teacher_replies.py") == "tiny"
  c = base.teacher("teacher_replies", "ppo")
  c.prompts = "data:communicative_baby/dpo_dataset/huggingface_dpo_format_eval.json" if tiny else ""
  c.max_prompts = 4 if tiny else 0   # 0 = every turn
  return c
