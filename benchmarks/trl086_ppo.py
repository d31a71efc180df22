"""trl 0.8.6's PPOTrainer, one PPO step = `generate` + `step()`, timed; the baseline of benchmarks/ppo_throughput.py.

Runs in trl 0.8.6's own environment (transformers 4.46, torch 2.13 CPU, rich, tyro), which
benchmarks/ppo_throughput.py builds once and starts this script in; it imports nothing of
llamalogue but `llamalogue.runtime` (standard library only). The study's settings
(STUDY.md §6): `AutoModelForCausalLMWithValueHead` from a HF Llama directory, float32, on CPU,
the frozen reference trl makes itself (`create_reference_model`), trl's default Adam;
`PPOConfig(batch_size=16, mini_batch_size=4, ppo_epochs=4, learning_rate=1.41e-5, adaptive
KL 0.2 -> 6 over 10,000, gamma 1, lambda 0.95, clip 0.2, vf_coef 0.1)`; generation
`ppo_trainer.generate(queries, batch_size=16, return_prompt=False, do_sample=True, top_p=0.9,
top_k=0, max_new_tokens=20)`; the same constant score for every row; `ppo_trainer.step`.

  python benchmarks/trl086_ppo.py --model=DIR --queries=FILE [--threads=N] --steps=K
  python benchmarks/trl086_ppo.py --model=DIR --queries=FILE [--threads=N] --serve

`--queries`: a JSON list of token-id lists (the parent tokenizes, so both sides see the same
ids); step j takes rows 16j .. 16j+15, cycling. `--steps=K`: K steps, one JSON line on stdout.
`--serve`: one JSON line `{"ready": ..., "versions": ..., "threads": ...}`, then one command a
line on stdin: `run K` runs the next K steps and answers one JSON line
`{"step_s": [...], "generate_s": [...], "train_s": [...], "response_tokens": [...]}`;
`quit` (or end of input) exits. Everything else the libraries print goes to stderr.
"""

import argparse
import json
import os
import sys
import time

SETTINGS = dict(batch_size=16, mini_batch_size=4, ppo_epochs=4, learning_rate=1.41e-5, adap_kl_ctrl=True,
                init_kl_coef=0.2, kl_penalty="kl", target=6.0, horizon=10_000.0, gamma=1.0, lam=0.95,
                cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, seed=0)


def parse_args(argv=None) -> argparse.Namespace:
  """The command line; `--steps` or `--serve`, exactly one."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", required=True, help="a HF LlamaForCausalLM directory with its tokenizer")
  parser.add_argument("--queries", required=True, help="JSON list of token-id lists, 16 a step")
  parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: the cores this may use)")
  parser.add_argument("--max_new_tokens", type=int, default=20)
  parser.add_argument("--top_p", type=float, default=0.9)
  parser.add_argument("--score", type=float, default=1.0, help="the constant reward of every row")
  parser.add_argument("--keep_freed_memory", action="store_true",
                      help="glibc malloc as main.py's training modes set it (llamalogue/runtime.py)")
  mode = parser.add_mutually_exclusive_group(required=True)
  mode.add_argument("--steps", type=int, help="run this many steps, print one JSON line, exit")
  mode.add_argument("--serve", action="store_true", help="answer `run K` / `quit` commands on stdin")
  args = parser.parse_args(argv)
  if args.steps is not None and args.steps < 1:
    parser.error("--steps: need at least 1")
  if args.threads < 0:
    parser.error("--threads: 0 (all cores) or more")
  return args


def load_tokenizer(model_dir: str):
  """The directory's tokenizer under transformers 4.46.

  transformers 5 (which wrote it) names the class `TokenizersBackend`, unknown to 4.46: then
  tokenizer.json is read as a `PreTrainedTokenizerFast` with the special tokens of
  tokenizer_config.json. Only padding and EOS come from it: the queries arrive as ids.
  """
  import transformers
  path = os.path.join(model_dir, "tokenizer_config.json")
  config = json.loads(open(path).read()) if os.path.exists(path) else {}
  if config.get("tokenizer_class") != "TokenizersBackend":
    return transformers.AutoTokenizer.from_pretrained(model_dir)
  special = {k: v["content"] if isinstance(v, dict) else v for k, v in config.items()
             if k in ("bos_token", "eos_token", "pad_token", "unk_token") and v}
  return transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(model_dir, "tokenizer.json"), **special)


class Runner:
  """trl's PPOTrainer on the model; `run(k)` times the next k steps."""

  def __init__(self, args):
    import torch
    import transformers
    import trl
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    ids = json.loads(open(args.queries).read())
    if len(ids) < SETTINGS["batch_size"]:
      raise SystemExit(f"{args.queries}: {len(ids)} queries, need at least {SETTINGS['batch_size']}")
    self.queries = [torch.tensor(q, dtype=torch.long) for q in ids]
    tok = load_tokenizer(args.model)
    if tok.pad_token is None:
      tok.pad_token = tok.eos_token
    model = trl.AutoModelForCausalLMWithValueHead.from_pretrained(args.model, torch_dtype=torch.float32)
    config = trl.PPOConfig(**SETTINGS, log_with=None, accelerator_kwargs={"cpu": True})
    self.trainer = trl.PPOTrainer(config, model, ref_model=None, tokenizer=tok)
    self.gen_kwargs = dict(do_sample=True, top_p=args.top_p, top_k=0, min_length=-1,
                           max_new_tokens=args.max_new_tokens, pad_token_id=tok.pad_token_id)
    self.score = float(args.score)
    self.step_index = 0
    self.info = {"versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                              "torch": torch.__version__, "python": sys.version.split()[0]},
                 "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
                 "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(libgomp default)"),
                 "device": str(self.trainer.current_device),
                 "dtype": str(next(model.parameters()).dtype)}

  def run(self, k: int) -> dict:
    import torch
    out = {"step_s": [], "generate_s": [], "train_s": [], "response_tokens": []}
    b = SETTINGS["batch_size"]
    for _ in range(k):
      start = (self.step_index * b) % (len(self.queries) - len(self.queries) % b)
      queries = self.queries[start:start + b]
      self.step_index += 1
      t0 = time.perf_counter()
      responses = self.trainer.generate(queries, batch_size=b, return_prompt=False, **self.gen_kwargs)
      t1 = time.perf_counter()
      scores = [torch.tensor(self.score) for _ in responses]
      self.trainer.step(queries, responses, scores)
      t2 = time.perf_counter()
      out["step_s"].append(t2 - t0)
      out["generate_s"].append(t1 - t0)
      out["train_s"].append(t2 - t1)
      out["response_tokens"].append(sum(len(r) for r in responses) / len(responses))
    return out


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.keep_freed_memory:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from llamalogue import runtime
    kept = runtime.keep_freed_memory()
  else:
    kept = False
  reply, sys.stdout = sys.stdout, sys.stderr  # only our JSON lines on the real stdout

  def send(obj):
    reply.write(json.dumps(obj) + "\n")
    reply.flush()

  runner = Runner(args)
  runner.info["keep_freed_memory"] = kept
  if not args.serve:
    send({**runner.info, **runner.run(args.steps)})
    return
  send({"ready": True, **runner.info})
  for line in sys.stdin:
    cmd = line.split()
    if not cmd or cmd[0] == "quit":
      break
    if cmd[0] == "run" and len(cmd) == 2 and cmd[1].isdigit():
      send(runner.run(int(cmd[1])))
    else:
      send({"error": f"unknown command {line.strip()!r}: use `run K` or `quit`"})


if __name__ == "__main__":
  main()
