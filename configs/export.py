"""Export a model to a Hugging Face directory (LlamaForCausalLM + tokenizer).

  python main.py --config=configs/export.py --config.init_from=runs/tiny --workdir=runs/tiny_hf

`init_from`: one of our checkpoints or run directories (newest checkpoint), a HF
directory, or hf:<repo>. The output loads with transformers' AutoModelForCausalLM and
AutoTokenizer `from_pretrained(DIR)`.
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  base.variant(arg, "configs/export.py", allowed=())
  c = ml_collections.ConfigDict()
  c.mode = "export"
  c.distributed = base.distributed()
  c.init_from = ""
  c.tokenizer_dir = ""            # "": the tokenizer saved with the checkpoint
  return c
