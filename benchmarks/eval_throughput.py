"""Items/s of our jitted scorer vs minicons on the same exported model and the same items.

  python benchmarks/eval_throughput.py [--init_from=HF_DIR] [--pairs=256] [--minicons_batch=32]

Without --init_from, a random model of the `tiny` preset's shape (hidden 256, 4 layers)
with a byte-level BPE tokenizer trained on the benchmark texts is exported to a temp
dir. Items are dialogue minimal pairs and BLiMP pairs (an item = one pair = two texts),
both scored with the study convention (minicons `sequence_score`, sum,
bow_correction=True). Both sides are timed warm (ours after one compile pass,
reported separately). The last line is
  ratio=<ours/baseline> ours=<items/s> baseline=<items/s> unit=items/s
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from evaluation import scoring, tasks, testing  # noqa: E402


def load_pairs(n: int) -> list[tuple[str, str]]:
  """n dialogue pairs and n BLiMP pairs, spread over the files."""
  dialogue = tasks.load("dialogue_word").items
  blimp = tasks.load("blimp", lowercase="yes").items
  pick = lambda items: [it.texts for it in items[::max(1, len(items) // n)][:n]]
  return pick(dialogue) + pick(blimp)


def build_model(workdir: pathlib.Path, texts: list[str]) -> pathlib.Path:
  corpus = [t for it in tasks.load("dialogue_word").items for t in it.texts] + texts
  return testing.make_exported(workdir / "bench_hf", corpus, tokenizer_vocab=4096, hidden=256, layers=4,
                               heads=4, kv_heads=4, intermediate=688, init_std=0.05)


def time_ours(model_dir: pathlib.Path, texts: list[str]) -> tuple[float, float, np.ndarray]:
  from llamalogue import hf
  model, tok = hf.load(str(model_dir))
  scorer = scoring.Scorer.from_model(model, tok, convention="study")
  start = time.perf_counter()
  scorer.score(texts)                   # compiles one program per length bucket
  cold = time.perf_counter() - start
  start = time.perf_counter()
  scores = scorer.score(texts)
  return cold, time.perf_counter() - start, scores


def time_minicons(model_dir: pathlib.Path, texts: list[str], batch: int) -> tuple[float, np.ndarray]:
  from minicons import scorer as mscorer
  lm = mscorer.IncrementalLMScorer(str(model_dir), device="cpu")
  run = lambda chunk: lm.sequence_score(chunk, reduction=lambda x: x.sum(0).item(), bow_correction=True)
  run(texts[:batch])                    # warm-up
  start = time.perf_counter()
  scores = [s for i in range(0, len(texts), batch) for s in run(texts[i:i + batch])]
  return time.perf_counter() - start, np.array(scores)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--init_from", default="", help="a HF model directory (default: a random tiny model)")
  ap.add_argument("--pairs", type=int, default=256, help="pairs per source (dialogue, BLiMP)")
  ap.add_argument("--minicons_batch", type=int, default=32)
  args = ap.parse_args()
  pairs = load_pairs(args.pairs)
  texts = [t for p in pairs for t in p]
  with tempfile.TemporaryDirectory() as tmp:
    model_dir = pathlib.Path(args.init_from) if args.init_from else build_model(pathlib.Path(tmp), texts)
    cold, ours_s, ours = time_ours(model_dir, texts)
    base_s, base = time_minicons(model_dir, texts, args.minicons_batch)
  n = len(pairs)
  diff = float(np.max(np.abs(ours - base)))
  agree = bool((scoring.pair_correct(ours[0::2], ours[1::2]) == scoring.pair_correct(base[0::2], base[1::2])).all())
  print(json.dumps({"items": n, "texts": len(texts), "ours_cold_s": round(cold, 2), "ours_warm_s": round(ours_s, 2),
                    "minicons_s": round(base_s, 2), "minicons_batch": args.minicons_batch,
                    "max_abs_diff_nats": diff, "same_decisions": agree, "cpu_count": os.cpu_count()}))
  ours_ips, base_ips = n / ours_s, n / base_s
  print(f"ratio={ours_ips / base_ips:.2f} ours={ours_ips:.1f} baseline={base_ips:.1f} unit=items/s")


if __name__ == "__main__":
  main()
