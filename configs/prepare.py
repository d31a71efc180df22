"""Prepare the CHILDES data: transcripts -> dialogue triplets -> splits -> BPE -> tokens.

  python main.py --config=configs/prepare.py --workdir=runs/pretrain
  python main.py --config=configs/prepare.py:tiny --workdir=runs/tiny   # 4 small ZIPs, seconds

Reads `config.data.childes` (default: every TalkBank ZIP under $LLAMALOGUE_DATA/childes,
i.e. ../shared/data/childes) with pylangacq, cleans the CHAT main tiers, builds triplets
(`*MOT: what is that ? *CHI: it looks like a gun . *MOT: yes it does .`), splits the
transcripts (pre-training / held-out A / held-out B / valid), trains a byte-level BPE
tokenizer on the pre-training split and packs it into token arrays. Produces DIR/data/:
pretrain.txt, heldout_a.txt, heldout_b.txt, valid.txt (one unit per line),
heldout_{a,b}_dialogues.jsonl (utterance-level held-out transcripts), tokenizer.json and
its Hugging Face config files, train_/valid_tokens.npy and train_/valid_words.npy,
stats.json, summary.md and DONE. A second run with the same inputs and config reuses them;
pre-training runs this step itself when DIR/data is missing or stale.
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = "prepare"
  c.seed = 42
  c.distributed = base.distributed()
  c.data = base.data(tiny=base.variant(arg, "configs/prepare.py") == "tiny")
  return c
