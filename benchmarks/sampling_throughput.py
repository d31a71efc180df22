"""Generated tokens/s of our jitted sampler vs Hugging Face `generate` (PyTorch CPU), one run.

Same random model for both (a HF LlamaForCausalLM, imported with llamalogue.hf): 4 layers,
256 wide, 4 heads, vocab 8192; batch 16, prompts of 32 tokens, 64 new tokens, top-p 0.9,
temperature 1, no EOS (every row generates all 64), do_sample. Our compile time is printed
separately; throughput is the median of timed calls after a warm-up, ours and HF's calls
interleaved so that both see the same machine load. PyTorch is probed with 1 thread and
with one per core and timed with the faster (on a busy machine its multi-threaded runs can
be many times slower).

  python benchmarks/sampling_throughput.py
  python benchmarks/sampling_throughput.py --batch=64 --new=128 --no-baseline     # e.g. on a GPU

Last line: ratio=<ours/baseline> ours=<tokens/s> baseline=<tokens/s> unit=tokens/s
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llamalogue import hf, sampling


def make_models(vocab: int, hidden: int, layers: int, heads: int, intermediate: int, directory: str):
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM
  torch.manual_seed(0)
  cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                    num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=512,
                    bos_token_id=None, eos_token_id=None, pad_token_id=0)
  ref = LlamaForCausalLM(cfg).eval()
  ref.save_pretrained(directory)
  ours, _ = hf.load(directory)
  return ref, ours


def ours_fn(model, prompts, new: int, top_p: float):
  """A call of our sampler (a new key each time) that blocks until done."""
  graphdef, params = nnx.split(model)
  b, p = prompts.shape
  args = (jnp.asarray(prompts), jnp.full((b,), p, jnp.int32))
  seeds = iter(range(1 << 30))

  def run():
    out = sampling.sample_tokens(params, graphdef, *args, jax.random.key(next(seeds)), max_new_tokens=new,
                                 top_p=top_p)["tokens"]
    assert jax.block_until_ready(out).shape == (b, new)
  return run


def hf_fn(ref, prompts, new: int, top_p: float):
  import torch
  x = torch.tensor(prompts, dtype=torch.long)
  mask = torch.ones_like(x)

  def run():
    with torch.no_grad():
      out = ref.generate(x, attention_mask=mask, do_sample=True, top_p=top_p, top_k=0, temperature=1.0,
                         max_new_tokens=new, pad_token_id=0, eos_token_id=None)
    assert out.shape == (x.shape[0], x.shape[1] + new)
  return run


def seconds(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--prompt", type=int, default=32)
  ap.add_argument("--new", type=int, default=64)
  ap.add_argument("--top-p", type=float, default=0.9)
  ap.add_argument("--vocab", type=int, default=8192)
  ap.add_argument("--reps", type=int, default=5)
  ap.add_argument("--no-baseline", action="store_true", help="skip PyTorch (e.g. on a GPU)")
  args = ap.parse_args()
  prompts = np.random.RandomState(0).randint(1, args.vocab, (args.batch, args.prompt)).astype(np.int32)
  with tempfile.TemporaryDirectory() as d:
    ref, model = make_models(args.vocab, 256, 4, 4, 688, d)
  print(f"device: {jax.devices()[0].device_kind}; model 4 layers x 256, vocab {args.vocab}; batch {args.batch}, "
        f"prompt {args.prompt}, {args.new} new tokens, top-p {args.top_p}, no EOS", flush=True)
  tokens = args.batch * args.new
  ours = ours_fn(model, prompts, args.new, args.top_p)
  first = seconds(ours)
  steady = seconds(ours)
  print(f"ours: compile (first call minus a timed one) {first - steady:.2f} s", flush=True)
  base_tps = float("nan")
  if args.no_baseline:
    ours_s = [seconds(ours) for _ in range(args.reps)]
  else:
    import torch
    base = hf_fn(ref, prompts, args.new, args.top_p)
    base()                                              # warm-up
    probe = {}
    for threads in sorted({1, os.cpu_count()}):        # HF's faster thread setting on this machine now
      torch.set_num_threads(threads)
      probe[threads] = seconds(base)
    threads = min(probe, key=probe.get)
    torch.set_num_threads(threads)
    print(f"HF generate (PyTorch {torch.__version__}) probe: " + ", ".join(
        f"{t} thread(s) {tokens / s:,.0f} tokens/s" for t, s in probe.items()) + f"; using {threads}", flush=True)
    ours_s, base_s = [], []
    for _ in range(args.reps):                          # interleaved, so both see the same machine load
      ours_s.append(seconds(ours))
      base_s.append(seconds(base))
    base_tps = tokens / float(np.median(base_s))
    print(f"HF generate: {base_tps:,.0f} tokens/s (median of {args.reps} calls)", flush=True)
  ours_tps = tokens / float(np.median(ours_s))
  print(f"ours: {ours_tps:,.0f} tokens/s (median of {args.reps} calls)", flush=True)
  print(f"ratio={ours_tps / base_tps:.3f} ours={ours_tps:.1f} baseline={base_tps:.1f} unit=tokens/s")


if __name__ == "__main__":
  main()
