"""Talk to a model: sample continuations of a prompt.

  python main.py --config=configs/sample.py --config.init_from=runs/tiny \
      --config.prompt="*MOT: what is that ? *CHI:" --workdir=runs/tiny_samples
  python main.py --config=configs/sample.py --config.init_from=X --config.greedy=True --workdir=DIR

`init_from`: one of our checkpoints or run directories (newest checkpoint), a Hugging Face
model directory, or hf:<repo> (llamalogue.hf.load). Prints `num_samples` continuations
(one with greedy=True), each cut at the first stop string, with its token count and
log-probability, and writes them to DIR/samples.jsonl.
"""

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  base.variant(arg, "configs/sample.py", allowed=())
  c = ml_collections.ConfigDict()
  c.mode = "sample"
  c.distributed = base.distributed()
  c.init_from = ""
  c.dtype = "float32"
  c.prompt = "*MOT: what is that ? *CHI:"
  c.num_samples = 5
  c.max_new_tokens = 40
  c.greedy = False
  c.temperature = 1.0
  c.top_p = 0.9
  c.top_k = 0                    # 0: no top-k filter
  c.seed = 0
  c.stop = "\\n"                 # comma-separated plain stop strings, Python escapes allowed ("" for none)
  c.stop_at_speaker_tag = True   # also stop at the next speaker's tag (llamalogue/data/units.py SPEAKER_TAG)
  return c
