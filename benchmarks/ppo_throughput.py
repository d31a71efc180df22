"""PPO step time on the tiny setup, split by phase, and the rollout beside the bare sampler.

A random Llama of our `tiny` shape (4 layers, 256 wide; a byte-level BPE trained on the study's
pairs), the study's PPO settings (batch 16, mini-batch 4, 4 PPO epochs, <= 20 new tokens, top-p
0.9), mother turns and Llama-3.2-3B teacher replies from the study's released synthetic pairs
(the BLEU reward's references), on CPU. Each step of rl/ppo_run.py is timed by phase: rollout
(sampling + cutting the reply), reward, the reference/value forward, the update. The first step
(compiles) is left out. Then the bare jitted sampler (`sampling.sample_tokens`) runs on the same
model, prompts and settings, with the same number of new tokens per row on average.

  python benchmarks/ppo_throughput.py [--steps=6]

Last line: ratio=<rollout tokens/s / sampler tokens/s> ours=<rollout tok/s> baseline=<sampler tok/s> unit=tokens/s
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SYNTHETIC = "data:communicative_baby/dpo_dataset/synthetic_dpo_format.json"


def main(argv=None) -> float:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=6, help="PPO steps, the first untimed")
  parser.add_argument("--vocab", type=int, default=1024)
  args = parser.parse_args(argv)
  import dataclasses
  import jax
  import numpy as np
  from flax import nnx
  from configs import ppo_bleu
  from evaluation import testing
  from llamalogue import hf, model as model_lib, paths, sampling, sharding, step
  from rl import ppo, ppo_run, rewards, teacher as teacher_lib

  rows = json.loads(paths.resolve(SYNTHETIC, "synthetic pairs").read_text())
  mothers = list(dict.fromkeys(teacher_lib.mother_turn(r["prompt"]) for r in rows))[:16 * args.steps]
  replies = {teacher_lib.mother_turn(r["prompt"]): r["chosen"] for r in rows}
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    texts = [f"*MOT: {m} *CHI: {replies[m]}" for m in mothers] + [r["rejected"] for r in rows[:2000]]
    testing.make_tokenizer(tmp / "tok", texts, args.vocab)
    tok = hf.load_tokenizer(tmp / "tok")
    cfg = dataclasses.replace(model_lib.PRESETS["tiny"], vocab_size=len(tok))
    graphdef, params = step.split_model(model_lib.Llama(cfg, rngs=nnx.Rngs(0)))
    cache_file = tmp / "replies.jsonl"
    cache_file.write_text("".join(json.dumps({"prompt": m, "replies": [replies[m]]}) + "\n" for m in mothers))
    reward = rewards.Curriculum((("bleu", 1),), {"bleu": rewards.BleuReward(teacher_lib.ReplyCache(cache_file))},
                                scale=False)
    config = ppo_bleu.get_config()
    config.init_from = "(benchmark: random tiny model)"
    pcfg = ppo_run.ppo_config(config.ppo)
    mesh = sharding.make_mesh(1, 1, devices=jax.devices()[:1])
    tx, _ = ppo.make_optimizer(pcfg)
    policy = jax.tree.map(lambda x: x.copy(), params)  # the update donates the state: the reference keeps its own
    state = ppo.init_state(policy, ppo.init_value_head(cfg.hidden_size, jax.random.key(1)), tx, pcfg)
    shardings = sharding.tree_shardings(state, mesh)
    state = jax.device_put(state, shardings)  # laid out as the run's jitted init lays it out (no recompile later)
    roll = ppo_run.Rollouts(config, graphdef, params, tok, reward, pcfg, tx, mesh, shardings, tmp / "samples.jsonl")
    phases = {k: [] for k in ("rollout", "reward", "forward", "update")}
    tokens, t_compile = [], time.perf_counter()
    for i in range(args.steps):
      state, m = roll(state, mothers[16 * i:16 * (i + 1)])
      if i == 0:
        t_compile = time.perf_counter() - t_compile
        continue
      for k in phases:
        phases[k].append(float(m[f"time/{k}_s"]))
      tokens.append(float(m["perf/rollout_tokens_per_s"]) * float(m["time/rollout_s"]))
    step_s = {k: float(np.mean(v)) for k, v in phases.items()}
    rollout_tps = sum(tokens) / sum(phases["rollout"])
    new_per_row = int(round(sum(tokens) / len(tokens) / 16))

    # The bare sampler: same model, prompts and settings, no text handling.
    q = [tok(ppo_run.query(m))["input_ids"] for m in mothers[:16]]
    p = -(-max(map(len, q)) // 16) * 16
    prompt = np.zeros((16, p), np.int32)
    for b, ids in enumerate(q):
      prompt[b, p - len(ids):] = ids
    lens = np.array([len(x) for x in q], np.int32)
    run = lambda k: sampling.sample_tokens(state["params"]["policy"], graphdef, prompt, lens, jax.random.key(k),
                                           max_new_tokens=max(new_per_row, 1), top_p=0.9, eos_id=-1)
    jax.block_until_ready(run(0))
    t0 = time.perf_counter()
    reps = 5
    for k in range(reps):
      out = jax.block_until_ready(run(k + 1))
    sampler_tps = reps * float(np.sum(np.asarray(out["lengths"]))) / (time.perf_counter() - t0)

  total = sum(step_s.values())
  print(f"PPO step (tiny 4x256, batch 16, mini-batch 4, 4 epochs, BLEU), mean of {args.steps - 1} steps after a "
        f"first step of {t_compile:.1f} s (compiles): {total:.2f} s = {1 / total:.3f} steps/s")
  for k, v in step_s.items():
    print(f"  {k:8s} {v:7.3f} s  {100 * v / total:5.1f}%")
  print(f"slowest phase: {max(step_s, key=step_s.get)}")
  print(f"rollout: {rollout_tps:,.0f} generated tokens/s ({new_per_row} per row); bare sampler on the same batch: "
        f"{sampler_tps:,.0f} tokens/s")
  ratio = rollout_tps / sampler_tps
  print(f"ratio={ratio:.3f} ours={rollout_tps:.1f} baseline={sampler_tps:.1f} unit=tokens/s")
  return ratio


if __name__ == "__main__":
  main()
