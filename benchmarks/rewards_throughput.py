"""Items/s of each PPO reward on the tiny setup: which reward bounds a PPO step.

  python benchmarks/rewards_throughput.py [--teacher=smollm2] [--batch=16] [--repeats=3] [--workdir=DIR]

Setup: the SmolLM2-135M-Instruct teacher (GGUF, converted once), the packaged all-MiniLM-L6-v2,
`--batch` mother turns of the study's dialogue minimal pairs with the real child replies as the
replies to reward. The teacher's replies (STUDY.md §6 settings: 10 per turn, temperature 0.8,
top-p 0.8, <= 20 tokens) are generated first into a reply cache (timed, reported as
`teacher_replies_s`; reused from --workdir on a rerun). Each reward then scores the batch once
cold (compiles) and `--repeats` times warm; the median warm time counts. The LLM score's judge is
the same SmolLM2 (greedy, <= 10 tokens). The last line is
  ratio=<slowest/fastest> ours=<slowest items/s> baseline=<fastest items/s> unit=items/s
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

from configs import teacher_replies  # noqa: E402
from llamalogue import paths  # noqa: E402
from rl import rewards, teacher as teacher_lib  # noqa: E402

PAIRS = "data:communicative_baby/dpo_dataset/huggingface_dpo_format_eval.json"


def batch_items(n: int) -> tuple[list[str], list[str]]:
  """n distinct mother turns and the child's real reply to each."""
  rows = json.loads(paths.resolve(PAIRS, "pairs").read_text())
  seen, mothers, replies = set(), [], []
  for r in rows:
    m = teacher_lib.mother_turn(r["prompt"])
    if m not in seen:
      seen.add(m)
      mothers.append(m)
      replies.append(teacher_lib.mother_turn(r["chosen"]))
    if len(mothers) == n:
      break
  return mothers, replies


def time_reward(reward, mothers, replies, repeats: int) -> tuple[float, float, np.ndarray]:
  t0 = time.perf_counter()
  out = reward(mothers, replies)
  cold = time.perf_counter() - t0
  warm = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    again = reward(mothers, replies)
    warm.append(time.perf_counter() - t0)
  np.testing.assert_allclose(again, out, atol=1e-5)
  return cold, float(np.median(warm)), out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--teacher", default="smollm2")
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--workdir", default="")
  args = ap.parse_args()
  mothers, replies = batch_items(args.batch)
  with tempfile.TemporaryDirectory() as tmp:
    workdir = args.workdir or tmp
    t0 = time.perf_counter()
    teacher = teacher_lib.Teacher(args.teacher)
    load_s = time.perf_counter() - t0
    settings = teacher_lib.reply_settings(teacher_replies.get_config())
    cache = teacher_lib.ReplyCache(teacher_lib.cache_path(workdir, teacher, settings))
    t0 = time.perf_counter()
    new = teacher_lib.fill_cache(teacher, mothers, cache, settings, chunk=args.batch)
    replies_s = time.perf_counter() - t0
    config = {"replies": str(cache.path)}
    built = {"bleu": rewards.make_reward("bleu", config),
             "semsim": rewards.make_reward("semsim", config),
             "llm_score": rewards.make_reward("llm_score", config, teacher=teacher),
             "confidence": rewards.make_reward("confidence", config, teacher=teacher)}
    results = {}
    for name, reward in built.items():
      cold, warm, out = time_reward(reward, mothers, replies, args.repeats)
      results[name] = {"items_per_s": round(len(mothers) / warm, 2), "warm_s": round(warm, 3),
                       "cold_s": round(cold, 2), "mean_reward": round(float(out.mean()), 4),
                       "stats": reward.stats()}
  print(json.dumps({"batch": len(mothers), "teacher": args.teacher, "teacher_load_s": round(load_s, 1),
                    "teacher_replies_s": round(replies_s, 1), "turns_generated": new,
                    "replies_per_turn": settings["n"], "rewards": results, "cpu_count": os.cpu_count()}, indent=1))
  ips = {k: v["items_per_s"] for k, v in results.items()}
  slowest, fastest = min(ips, key=ips.get), max(ips, key=ips.get)
  print(f"slowest={slowest} fastest={fastest}")
  print(f"ratio={ips[slowest] / ips[fastest]:.4f} ours={ips[slowest]:.2f} baseline={ips[fastest]:.2f} unit=items/s")


if __name__ == "__main__":
  main()
