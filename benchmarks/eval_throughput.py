"""Items/s of our jitted scorer vs minicons on the same exported model and the same items.

  python benchmarks/eval_throughput.py [--init_from=HF_DIR] [--pairs=512] [--minicons_batch=32]

Without --init_from, a random model of the `tiny` preset's shape (hidden 256, 4 layers)
with a byte-level BPE tokenizer trained on the benchmark texts is exported to a temp
dir. Items are dialogue minimal pairs and BLiMP pairs (an item = one pair = two texts),
all scored with the study convention (minicons `sequence_score`, sum, bow_correction=True).

The baseline is minicons called as the study's scripts call it (one dialogue string,
or one BLiMP pair, per call). minicons with `--minicons_batch` texts per call is timed
too and reported in the JSON line (`ratio_vs_batched`): on CPU both sides run the
same matmuls at about the same speed, so batched minicons is much closer. Ours is
timed warm (after one compile pass, `ours_cold_s`). The last line is
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
  scorer.clear_cache()                  # score every text again, with the compiled programs
  start = time.perf_counter()
  scores = scorer.score(texts)
  return cold, time.perf_counter() - start, scores


def time_minicons(model_dir: pathlib.Path, pairs: list[tuple[str, str]], n_dialogue: int, batch: int):
  """minicons as the study's scripts call it, and batched; seconds and scores of each.

  The study (evaluate_dialogue_minpairs.py) scores each dialogue string in its own
  call; evaluate_BLIMP.py / evaluate_zorro.py score each pair in one call. `batch`
  texts per call is the faster way to use minicons, reported beside it.
  """
  from minicons import scorer as mscorer
  lm = mscorer.IncrementalLMScorer(str(model_dir), device="cpu")
  run = lambda chunk: lm.sequence_score(list(chunk), reduction=lambda x: x.sum(0).item(), bow_correction=True)
  run(pairs[0])                         # warm-up
  start = time.perf_counter()
  study = [s for good, bad in pairs[:n_dialogue] for s in run([good]) + run([bad])]
  study += [s for p in pairs[n_dialogue:] for s in run(p)]
  study_s = time.perf_counter() - start
  texts = [t for p in pairs for t in p]
  start = time.perf_counter()
  batched = [s for i in range(0, len(texts), batch) for s in run(texts[i:i + batch])]
  return study_s, np.array(study), time.perf_counter() - start, np.array(batched)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--init_from", default="", help="a HF model directory (default: a random tiny model)")
  ap.add_argument("--pairs", type=int, default=512, help="pairs per source (dialogue, BLiMP)")
  ap.add_argument("--minicons_batch", type=int, default=32)
  args = ap.parse_args()
  pairs = load_pairs(args.pairs)
  texts = [t for p in pairs for t in p]
  with tempfile.TemporaryDirectory() as tmp:
    model_dir = pathlib.Path(args.init_from) if args.init_from else build_model(pathlib.Path(tmp), texts)
    cold, ours_s, ours = time_ours(model_dir, texts)
    study_s, study, batched_s, batched = time_minicons(model_dir, pairs, len(pairs) // 2, args.minicons_batch)
  n = len(pairs)
  decide = lambda s: scoring.choice_correct(np.stack([s[0::2], s[1::2]], 1))
  print(json.dumps({
      "items": n, "texts": len(texts), "ours_cold_s": round(cold, 2), "ours_warm_s": round(ours_s, 2),
      "minicons_study_calls_s": round(study_s, 2), "minicons_batched_s": round(batched_s, 2),
      "minicons_batch": args.minicons_batch,
      "ratio_vs_batched": round(batched_s / ours_s, 2), "ratio_cold_vs_study_calls": round(study_s / cold, 2),
      "max_abs_diff_nats": float(max(np.abs(ours - study).max(), np.abs(ours - batched).max())),
      "same_decisions": bool((decide(ours) == decide(study)).all() and (decide(ours) == decide(batched)).all()),
      "cpu_count": os.cpu_count()}))
  ours_ips, base_ips = n / ours_s, n / study_s
  print(f"ratio={ours_ips / base_ips:.2f} ours={ours_ips:.1f} baseline={base_ips:.1f} unit=items/s")


if __name__ == "__main__":
  main()
