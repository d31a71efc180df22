"""DPO training throughput in pairs/s: our DPO step vs trl 0.19.1's DPOTrainer (the study's trainer).

trl's `DPOTrainer` with `precompute_ref_log_probs=True` on a tiny random Llama of our `tiny`
shape (4 layers, 256 wide, exported as a Hugging Face LlamaForCausalLM), fp32 on CPU; only the
training steps are timed (not the reference log-prob precompute), the first step excluded as
warm-up. Pairs: the study's naturalistic training pairs; tokenizer: a byte-level BPE like ours
trained on them (or `--tokenizer DIR`).

  python benchmarks/dpo_throughput.py [--batch_size=8] [--steps=6] [--pairs=data:communicative_baby/...]

Ours: the jitted step of rl/dpo.py (policy forward + backward on chosen and rejected, AdamW,
reference log-probs computed beforehand), on the same model, pairs (trl's tokenization) and
batch, with main.py's malloc setting (trl keeps glibc's default, faster for it). Each side runs
in its own fresh process, `--repeats` times (default 3), alternating which goes first (on a shared
machine one run's rate moves by a third); the medians are compared.
Last line: ratio=<ours/trl> ours=<median pairs/s> baseline=<median pairs/s> unit=pairs/s.

trl 0.19.1 does not import under transformers 5 as it is; `import_trl` applies the three
smallest fixes that make it work, in this process only (see its docstring).
"""

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT_PAIRS = "data:communicative_baby/dpo_dataset/huggingface_dpo_format.json"


def import_trl():
  """trl (0.19.1, pinned in requirements.txt) made importable under transformers 5; returns the module.

  Three changes in transformers 5 break it; each fix is the smallest that restores 4.x behaviour:
  1. `MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES` was renamed `MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES`:
     the old name is aliased (trl only asks whether a model type is a vision model).
  2. `transformers.utils.import_utils._is_package_available` returns an (available, version)
     tuple, always truthy, so trl believes every optional package (mergekit, ...) is installed:
     trl's `_<pkg>_available` flags are set back to the booleans.
  3. Models lost their `warnings_issued` dict, which `DPOTrainer.__init__` writes to:
     `prepare_model` gives the model one before it is handed to the trainer.
  The loss, tokenization and training code of trl run unchanged.
  """
  import transformers.models.auto.modeling_auto as auto
  if not hasattr(auto, "MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES"):
    auto.MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES = auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
  import trl.import_utils as trl_imports
  for name in dir(trl_imports):
    value = getattr(trl_imports, name)
    if name.startswith("_") and name.endswith("_available") and isinstance(value, tuple):
      setattr(trl_imports, name, bool(value[0]))
  import trl
  import trl.trainer.dpo_trainer  # noqa: F401  (fails here, not later, if a fix is missing)
  return trl


def prepare_model(model):
  """A transformers model as trl 0.19.1's trainers expect it (fix 3 of `import_trl`)."""
  if not hasattr(model, "warnings_issued"):
    model.warnings_issued = {}
  return model


def tiny_model_dir(out_dir, tokenizer_dir, vocab_size: int, seed: int = 0) -> pathlib.Path:
  """A random Llama of our `tiny` preset shape, exported as a HF directory (with the tokenizer)."""
  import dataclasses
  from flax import nnx
  from llamalogue import hf, model as model_lib
  cfg = dataclasses.replace(model_lib.PRESETS["tiny"], vocab_size=vocab_size)
  return hf.export(model_lib.Llama(cfg, rngs=nnx.Rngs(seed)), out_dir, tokenizer_dir=tokenizer_dir)


def trl_pairs_per_second(hf_model_dir, tokenizer, pairs, batch_size: int, steps: int) -> float:
  """Pairs/s of trl's DPOTrainer training steps (fp32, CPU), reference log-probs precomputed.

  `pairs`: `rl.pairs.Pair`s (or {prompt, chosen, rejected} dicts); the first
  `batch_size * steps` are used, one pass. The study's settings: sigmoid loss, beta 0.1,
  lr 5e-6 with linear decay, no warm-up. Timed: each step from `on_step_begin` to
  `on_step_end` (forward, backward, optimizer), the first step left out as warm-up.
  """
  import datasets
  import torch
  import transformers
  trl = import_trl()
  if steps < 2:
    raise ValueError("steps: need at least 2 (the first is warm-up)")
  rows = [p.record() if hasattr(p, "record") else dict(p) for p in pairs][:batch_size * steps]
  if len(rows) < batch_size * steps:
    raise ValueError(f"need {batch_size * steps} pairs for {steps} steps of {batch_size}, got {len(rows)}")
  durations = []

  class StepTimer(transformers.TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
      self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
      durations.append(time.perf_counter() - self.t0)

  torch.manual_seed(0)
  model = prepare_model(transformers.AutoModelForCausalLM.from_pretrained(str(hf_model_dir)).float())
  with tempfile.TemporaryDirectory() as out:
    args = trl.DPOConfig(
        output_dir=out, per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=5e-6,
        lr_scheduler_type="linear", warmup_steps=0, beta=0.1, loss_type="sigmoid",
        precompute_ref_log_probs=True, use_cpu=True, report_to=[], save_strategy="no",
        logging_steps=10 ** 6, disable_tqdm=True, dataloader_num_workers=0, seed=0)
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=tokenizer, callbacks=[StepTimer()])
    trainer.train()
  timed = durations[1:]
  return batch_size * len(timed) / sum(timed)


def ours_pairs_per_second(hf_model_dir, tokenizer, pairs, batch_size: int, steps: int) -> float:
  """Pairs/s of our DPO step (rl/dpo.py: policy forward + backward on chosen and rejected, cached reference).

  The same model, pairs, batch and settings as the baseline; the reference log-probs are
  computed once beforehand (as trl's precompute), only the steps are timed: each pair one packed
  row (its prompt once, both replies after it, rl/dpo.py `pack_pairs`), a batch's pairs end to end,
  ~128 tokens to a row, balanced and cut to a multiple of 16 as in a DPO run on one device (`batch_rows`;
  trl pads each side of a batch to its longest), every width's step compiled beforehand, the first step
  left out as on trl's side. Tokenization as trl's
  (`style="trl"`), so both sides see the same rows.
  """
  import jax
  import ml_collections
  import numpy as np
  from llamalogue import hf, step
  from rl import dpo, pairs as pairs_lib
  model, _ = hf.load(str(hf_model_dir))
  graphdef, params = step.split_model(model)
  enc = pairs_lib.encode_pairs(list(pairs)[:batch_size * steps], tokenizer, style="trl")
  arrays = dpo.pair_arrays(enc)
  ref = dpo.jit_reference_logps(graphdef, False)
  per_row = dpo.auto_pairs_per_row(batch_size, 1, float(arrays["lengths"].mean()))   # as a DPO run on one device
  refs = [ref(params, dpo.batch_rows(arrays, np.arange(i, i + batch_size), per_row))
          for i in range(0, len(enc.rows), batch_size)]
  arrays["ref_chosen"] = np.concatenate([np.asarray(c) for c, _ in refs])
  arrays["ref_rejected"] = np.concatenate([np.asarray(r) for _, r in refs])
  opt = ml_collections.ConfigDict(dict(lr=5e-6, warmup_steps=0, schedule="linear", min_lr_ratio=0.0, b1=0.9,
                                       b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=1.0))
  tx, _ = step.make_optimizer(opt, steps)
  loss_fn = dpo.make_loss_fn(graphdef, beta=0.1, loss_type="sigmoid", label_smoothing=0.0)
  train = jax.jit(lambda s, b: step.train_step(loss_fn, tx, s, b), donate_argnums=(0,))
  state = step.init_state(params, tx)
  batches = []
  for i in range(steps):     # the batch's packed pairs, `per_row` to a row, as rl/dpo.py's PairBatches
    batch = dpo.batch_rows(arrays, np.arange(i * batch_size, (i + 1) * batch_size), per_row)
    batch = {k: v[None] for k, v in batch.items()}
    batches.append(batch)
  for width in sorted({b["tokens"].shape[-1] for b in batches}):   # compile every shape first
    state, metrics = train(state, next(b for b in batches if b["tokens"].shape[-1] == width))
  jax.block_until_ready(metrics)
  durations = []
  for batch in batches:
    t0 = time.perf_counter()
    state, metrics = train(state, batch)
    jax.block_until_ready(metrics)
    durations.append(time.perf_counter() - t0)
  timed = durations[1:]
  return batch_size * len(timed) / sum(timed)


def _one_side(args) -> float:
  """A child run (`--side=ours|trl`): one side's pairs/s on the parent's model and tokenizer.

  Ours runs with main.py's malloc setting (llamalogue/runtime.py `keep_freed_memory`, before anything
  allocates), as a DPO run of ours has it; trl with glibc's default, as a trl run has it (the setting
  made trl's side slower here: one malloc arena for torch's threads).
  """
  if args.side == "ours":
    from llamalogue import runtime
    runtime.keep_freed_memory()
  from rl import pairs as pairs_lib
  from llamalogue import hf
  pairs = pairs_lib.load_pairs(args.pairs, limit=args.batch_size * args.steps)
  tokenizer = hf.load_tokenizer(args.tokenizer)
  fn = ours_pairs_per_second if args.side == "ours" else trl_pairs_per_second
  return fn(pathlib.Path(args.model_dir), tokenizer, pairs, args.batch_size, args.steps)


def _child(args, side: str, model_dir, tok_dir) -> float:
  cmd = [sys.executable, os.path.abspath(__file__), f"--side={side}", f"--model_dir={model_dir}",
         f"--tokenizer={tok_dir}", f"--pairs={args.pairs}", f"--batch_size={args.batch_size}", f"--steps={args.steps}"]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  last = proc.stdout.strip().splitlines()[-1:] or [""]
  if proc.returncode or not last[0].startswith("rate="):
    sys.exit(f"dpo_throughput: the {side} run failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
  return float(last[0].split("=", 1)[1])


def main(argv=None) -> float:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pairs", default=DEFAULT_PAIRS, help="pairs file (rl.pairs.load_pairs spec)")
  parser.add_argument("--tokenizer", default="", help="tokenizer dir; default: a byte-level BPE trained on the pairs")
  parser.add_argument("--vocab", type=int, default=1024, help="vocabulary of the trained BPE")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--steps", type=int, default=6, help="training steps, the first untimed")
  parser.add_argument("--repeats", type=int, default=3,
                      help="runs of each side, each in a fresh process, alternating which goes first; medians compared")
  parser.add_argument("--side", choices=("ours", "trl"), default="", help=argparse.SUPPRESS)
  parser.add_argument("--model_dir", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  if args.side:
    print(f"rate={_one_side(args)}")
    return 0.0
  import statistics
  import torch
  from evaluation import testing
  from llamalogue import hf
  from rl import pairs as pairs_lib
  pairs = pairs_lib.load_pairs(args.pairs, limit=args.batch_size * args.steps)
  rates = {"ours": [], "trl": []}
  with tempfile.TemporaryDirectory() as tmp:
    tok_dir = pathlib.Path(args.tokenizer) if args.tokenizer else pathlib.Path(tmp) / "tokenizer"
    if not args.tokenizer:
      texts = [t for p in pairs for t in (p.prompt + " " + p.chosen, p.prompt + " " + p.rejected)]
      testing.make_tokenizer(tok_dir, texts, args.vocab)
    tokenizer = hf.load_tokenizer(tok_dir)
    model_dir = tiny_model_dir(pathlib.Path(tmp) / "model", tok_dir, len(tokenizer))
    for r in range(args.repeats):
      for side in (("ours", "trl") if r % 2 == 0 else ("trl", "ours")):
        rates[side].append(_child(args, side, model_dir, tok_dir))
      print(f"repeat {r + 1}/{args.repeats}: ours {rates['ours'][-1]:.2f} pairs/s, trl {rates['trl'][-1]:.2f} pairs/s",
            flush=True)
  ours, rate = statistics.median(rates["ours"]), statistics.median(rates["trl"])
  print(f"ours (rl/dpo.py step, jax {__import__('jax').__version__}, {__import__('jax').default_backend()}): "
        f"median {ours:.2f} pairs/s")
  print(f"trl {import_trl().__version__} DPOTrainer, precompute_ref_log_probs=True: median {rate:.2f} pairs/s "
        f"(tiny Llama 4x256, vocab {len(tokenizer)}, batch {args.batch_size}, {args.steps - 1} timed steps, "
        f"{args.repeats} runs a side, fp32 CPU, {torch.get_num_threads()} torch threads)")
  print(f"ratio={ours / rate:.3f} ours={ours:.3f} baseline={rate:.3f} unit=pairs/s")
  return ours / rate


if __name__ == "__main__":
  main()
