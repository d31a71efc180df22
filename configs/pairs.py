"""Preference pairs and dialogue minimal pairs from our own held-out split (rl/pairs.py).

  python main.py --config=configs/pairs.py --config.data_dir=runs/tiny --workdir=runs/tiny/pairs

`data_dir` is a prepared data dir (a prepare or pretrain workdir, or its data/). From its
`<split>_dialogues.jsonl`, every target-child utterance right after an adult turn, both with
>= `min_words` lexical words and sharing no word (`overlap`), is a real reply; its distractor
is a random child utterance of the split with the same length (STUDY.md §4). Whole adult turns
go either to training or to the benchmark. Writes DIR/pairs_train.jsonl (distractors matched
by `match`), DIR/pairs_eval_word.jsonl and DIR/pairs_eval_token.jsonl (JSONL {prompt, chosen,
rejected}; `configs/evaluate.py --config.tasks=dialogue_heldout --config.heldout_pairs=FILE`
scores them) and DIR/pairs_stats.json (counts, drops by reason, settings).
"""

import ml_collections

from configs import base

from rl import pairs


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  base.variant(arg, "configs/pairs.py", allowed=())
  c = ml_collections.ConfigDict()
  c.mode = "pairs"
  c.distributed = base.distributed()
  c.data_dir = ""                 # prepared data dir (`data:` allowed)
  c.split = "heldout_a"           # heldout_a: the split the study kept for pairs and minimal pairs
  c.seed = 42
  c.match = "word"                # training distractors: word (whitespace tokens, the study's) | token (subwords)
  c.overlap = "tokens"            # tokens: no shared whitespace token, punctuation included (as the release) | words
  c.min_words = 3                 # lexical words per turn (the released pairs have >= 3)
  c.eval_fraction = 0.3           # the study: 7,548 of 25,548 pairs for its benchmark
  c.adult_roles = ",".join(pairs.ADULT_ROLES)   # "Mother": the study's prompts
  return c
