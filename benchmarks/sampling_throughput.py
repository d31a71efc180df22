"""Generated tokens/s of our jitted sampler vs Hugging Face `generate` (PyTorch CPU), one run.

Same random model for both (a HF LlamaForCausalLM, imported with llamalogue.hf): 4 layers,
256 wide, 4 heads, vocab 8192; batch 16, prompts of 32 tokens, 64 new tokens, top-p 0.9,
temperature 1, no EOS (every row generates all 64), do_sample. Our compile time is printed
separately; throughput is the median of timed calls after a warm-up. PyTorch runs with 1
thread and with one per core; the baseline is the faster of the two (on a busy machine
its multi-threaded runs can be several times slower).

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


def time_ours(model, prompts, new: int, top_p: float, reps: int):
  graphdef, params = nnx.split(model)
  b, p = prompts.shape
  args = (jnp.asarray(prompts), jnp.full((b,), p, jnp.int32))
  run = lambda seed: jax.block_until_ready(sampling.sample_tokens(
      params, graphdef, *args, jax.random.key(seed), max_new_tokens=new, top_p=top_p)["tokens"])
  t0 = time.perf_counter()
  run(0)
  first = time.perf_counter() - t0
  times = []
  for i in range(reps):
    t0 = time.perf_counter()
    out = run(i + 1)
    times.append(time.perf_counter() - t0)
  assert out.shape == (b, new)
  steady = float(np.median(times))
  return b * new / steady, first - steady


def time_hf(ref, prompts, new: int, top_p: float, reps: int):
  import torch
  x = torch.tensor(prompts, dtype=torch.long)
  mask = torch.ones_like(x)

  def run():
    with torch.no_grad():
      return ref.generate(x, attention_mask=mask, do_sample=True, top_p=top_p, top_k=0, temperature=1.0,
                          max_new_tokens=new, pad_token_id=0, eos_token_id=None)

  run()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    out = run()
    times.append(time.perf_counter() - t0)
  assert out.shape == (x.shape[0], x.shape[1] + new)
  return x.shape[0] * new / float(np.median(times))


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
    ref, ours = make_models(args.vocab, 256, 4, 4, 688, d)
  print(f"device: {jax.devices()[0].device_kind}; model 4 layers x 256, vocab {args.vocab}; batch {args.batch}, "
        f"prompt {args.prompt}, {args.new} new tokens, top-p {args.top_p}, no EOS", flush=True)
  ours_tps, compile_s = time_ours(ours, prompts, args.new, args.top_p, args.reps)
  print(f"ours: {ours_tps:,.0f} tokens/s (median of {args.reps} calls); compile (first call minus a timed one) "
        f"{compile_s:.2f} s", flush=True)
  base_tps = float("nan")
  if not args.no_baseline:
    import torch
    for threads in sorted({1, os.cpu_count()}):   # the baseline is HF's faster thread setting
      torch.set_num_threads(threads)
      tps = time_hf(ref, prompts, args.new, args.top_p, max(1, args.reps // 2))
      print(f"HF generate (PyTorch {torch.__version__}, {threads} thread(s)): {tps:,.0f} tokens/s", flush=True)
      base_tps = tps if not base_tps >= tps else base_tps
  print(f"ratio={ours_tps / base_tps:.3f} ours={ours_tps:.1f} baseline={base_tps:.1f} unit=tokens/s")


if __name__ == "__main__":
  main()
