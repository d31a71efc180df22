"""Direct Preference Optimization (Rafailov et al. 2023): the pure loss, the step and the `dpo` mode.

  python main.py --config=configs/dpo_natural.py --config.init_from=RUN --workdir=DIR

`dpo_loss` is a pure function of summed (or, for IPO, length-averaged) log-probabilities
of the chosen and rejected replies under the policy and the frozen reference model. It
follows trl 0.19.1's `DPOTrainer.dpo_loss` (the version the study used): the same loss
types, conservative DPO through `label_smoothing` inside the sigmoid loss, and the same
metric names. The reference log-probabilities are computed once and cached; the policy's
come from the model's one log-prob path (`Llama.logprobs`); the step is llamalogue/step.py's
sharded train step; the loop, checkpoints and evaluation are rl/finetune.py's.
"""

import hashlib
import io
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llamalogue import checkpoint as ckpt_lib
from llamalogue import distributed
from llamalogue import loop, ops, progress, shapes
from llamalogue import sharding as sharding_lib
from llamalogue import step as step_lib
from llamalogue.errors import ConfigError, DataError
from llamalogue.paths import atomic_write
from rl import curves, finetune
from rl import pairs as pairs_lib

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def dpo_loss(policy_chosen_B: jax.Array, policy_rejected_B: jax.Array, ref_chosen_B: jax.Array,
             ref_rejected_B: jax.Array, *, beta: float = 0.1, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0) -> tuple[jax.Array, dict]:
  """(per-pair losses `[B]`, per-pair metrics `{name: [B]}`) with trl's metric names.

  `sigmoid`: -(1-ε)·log σ(β·h) - ε·log σ(-β·h), h = (π_c - π_r) - (ref_c - ref_r);
  `ipo`: (h - 1/(2β))², on length-averaged log-probabilities (the caller passes those);
  `hinge`: max(0, 1 - β·h). Rewards are β·(π - ref) for each reply.
  """
  if loss_type not in LOSS_TYPES:
    raise ConfigError(f"config.dpo.loss_type: {loss_type!r} is not one of {LOSS_TYPES}")
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  pc, pr, rc, rr = f32(policy_chosen_B), f32(policy_rejected_B), f32(ref_chosen_B), f32(ref_rejected_B)
  h_B = (pc - pr) - (rc - rr)
  if loss_type == "sigmoid":
    losses_B = (-jax.nn.log_sigmoid(beta * h_B) * (1.0 - label_smoothing)
                - jax.nn.log_sigmoid(-beta * h_B) * label_smoothing)
  elif loss_type == "ipo":
    losses_B = (h_B - 1.0 / (2.0 * beta)) ** 2
  else:
    losses_B = jax.nn.relu(1.0 - beta * h_B)
  chosen_rewards_B = beta * (pc - rc)
  rejected_rewards_B = beta * (pr - rr)
  metrics = {
      "rewards/chosen": chosen_rewards_B,
      "rewards/rejected": rejected_rewards_B,
      "rewards/accuracies": (chosen_rewards_B > rejected_rewards_B).astype(jnp.float32),
      "rewards/margins": chosen_rewards_B - rejected_rewards_B,
      "logps/chosen": pc,
      "logps/rejected": pr,
  }
  return losses_B, metrics


# ----------------------------------------------------------------------------- the DPO step

def both_sides_logps(params, graphdef, batch: dict, average: bool = False) -> tuple[jax.Array, jax.Array]:
  """(chosen `[b]`, rejected `[b]`) summed (or, `average`, mean) log-probabilities of each pair's replies,
  from one forward over the batch's packed rows (`batch_rows`: each pair's prompt once, both replies
  after it, `b / rows` pairs to a row; `valid` `[b]` gives b), in pair order (`pair_slot`)."""
  model = nnx.merge(graphdef, params)
  logp_RxL = model.logprobs(batch["tokens"], batch["targets"], batch["positions"], batch["segments"])["logprobs"]
  rows = batch["tokens"].shape[0]
  per_row = batch["valid"].shape[-1] // rows
  slot_RxLxK = (batch["segments"][..., None] // ops.SEGMENT_PARTS == jnp.arange(per_row)).astype(jnp.float32)
  pair_slot_b = batch["pair_slot"] % batch["valid"].shape[-1]   # slots within this micro-batch, in pair order

  def side(mask_RxL):
    mask_RxL = mask_RxL.astype(jnp.float32)
    total_b = jnp.einsum("rl,rlk->rk", logp_RxL * mask_RxL, slot_RxLxK).reshape(-1)
    if average:
      total_b = total_b / jnp.maximum(jnp.einsum("rl,rlk->rk", mask_RxL, slot_RxLxK).reshape(-1), 1.0)
    return total_b[pair_slot_b]

  return side(batch["chosen_mask"]), side(batch["rejected_mask"])


def make_loss_fn(graphdef, *, beta: float, loss_type: str, label_smoothing: float):
  """`loss_fn(params, micro) -> (loss_sum, pairs, metric sums)` for llamalogue/step.py's train step.

  `micro` holds the token rows of both sides, the cached reference log-probabilities
  `ref_chosen`/`ref_rejected` `[b]` and `valid` `[b]` (0 for the padding rows of an epoch's
  last, partial batch: they count for nothing).
  """
  average = loss_type == "ipo"  # trl averages the log-probabilities over the reply for IPO

  def loss_fn(params, micro):
    chosen_b, rejected_b = both_sides_logps(params, graphdef, micro, average)
    losses_b, metrics = dpo_loss(chosen_b, rejected_b, micro["ref_chosen"], micro["ref_rejected"], beta=beta,
                                 loss_type=loss_type, label_smoothing=label_smoothing)
    valid_b = micro["valid"].astype(jnp.float32)
    sums = {k: jnp.sum(v * valid_b) for k, v in metrics.items()}
    return jnp.sum(losses_b * valid_b), jnp.sum(valid_b), sums

  return loss_fn


def jit_reference_logps(graphdef, average: bool):
  """Jitted `(params, batch) -> (chosen [b], rejected [b])` for the frozen reference (params are an argument)."""
  return jax.jit(lambda params, batch: both_sides_logps(params, graphdef, batch, average))


# ----------------------------------------------------------------------------- data for the loop

PACKED = ("tokens", "positions", "segments", "targets", "chosen_mask", "rejected_mask")
PAD_SEGMENT = 3   # padding after a row's end: attends to the prompt and to itself, scores nothing


def _scored_end(mask_NxL: np.ndarray) -> np.ndarray:
  """`[N]`: one past each row's last scored target (1 for a row with none)."""
  scored = mask_NxL > 0
  return np.where(scored.any(axis=1), scored.shape[1] - np.argmax(scored[:, ::-1], axis=1), 1)


def pack_pairs(sides: dict) -> dict:
  """Each pair as one row: the positions both sides share, then the chosen branch, then the rejected one.

  `sides` holds `{chosen,rejected}_{inputs,targets,mask}` `[N, L]` (next-token rows, rl/pairs.py).
  The shared part is the longest prefix on which the two sides have the same inputs and the same
  targets (the prompt, up to the token before the replies part): causal attention gives its
  log-probabilities once for both. Each branch runs from there to its last scored target, its
  positions restarting where the shared part ends, and attends to the shared part and to itself
  only (`segments` 0 / 1 / 2, `ops.segment_mask`), so each side's log-probabilities are the ones its
  own row would give, with the prompt's tokens computed once. Returns `PACKED` arrays `[N, P]`
  (padding after each row's end: segment `PAD_SEGMENT`, masks 0) and `lengths` `[N]`.
  """
  ci, ct, cm = sides["chosen_inputs"], sides["chosen_targets"], sides["chosen_mask"]
  ri, rt, rm = sides["rejected_inputs"], sides["rejected_targets"], sides["rejected_mask"]
  n, width = ci.shape[0], max(ci.shape[1], ri.shape[1])
  pad = lambda a: np.pad(a, ((0, 0), (0, width - a.shape[1])))
  ci, ct, cm, ri, rt, rm = map(pad, (ci, ct, cm, ri, rt, rm))
  end_c, end_r = _scored_end(cm), _scored_end(rm)
  differ = (ci != ri) | (ct != rt)
  first_diff = np.where(differ.any(axis=1), np.argmax(differ, axis=1), width)
  shared = np.minimum(first_diff, np.minimum(end_c, end_r))
  lengths = end_c + end_r - shared
  p = int(lengths.max()) if n else 1
  out = {"tokens": np.zeros((n, p), np.int32), "targets": np.zeros((n, p), np.int32),
         "positions": np.zeros((n, p), np.int32), "segments": np.full((n, p), PAD_SEGMENT, np.int32),
         "chosen_mask": np.zeros((n, p), np.float32), "rejected_mask": np.zeros((n, p), np.float32)}
  for i in range(n):
    s, c, r = int(shared[i]), int(end_c[i]), int(end_r[i])
    mid, stop = c, c + r - s                     # chosen branch [s, mid), rejected branch [mid, stop)
    out["tokens"][i, :s], out["targets"][i, :s] = ci[i, :s], ct[i, :s]
    out["tokens"][i, s:mid], out["targets"][i, s:mid] = ci[i, s:c], ct[i, s:c]
    out["tokens"][i, mid:stop], out["targets"][i, mid:stop] = ri[i, s:r], rt[i, s:r]
    out["positions"][i, :stop] = np.concatenate([np.arange(c), np.arange(s, r)])
    out["segments"][i, :s], out["segments"][i, s:mid], out["segments"][i, mid:stop] = 0, 1, 2
    out["chosen_mask"][i, :s], out["chosen_mask"][i, s:mid] = cm[i, :s], cm[i, s:c]
    out["rejected_mask"][i, :s], out["rejected_mask"][i, mid:stop] = rm[i, :s], rm[i, s:r]
    out["tokens"][i, stop:] = out["tokens"][i, stop - 1] if stop else 0
  return {**out, "lengths": lengths.astype(np.int32)}


def pair_arrays(encoded) -> dict:
  """`pack_pairs` of an rl/pairs.py encoding (`encode_pairs`)."""
  sides = {}
  for side in ("chosen", "rejected"):
    s = getattr(encoded, side)
    sides.update({f"{side}_inputs": s.inputs, f"{side}_targets": s.targets, f"{side}_mask": s.loss_mask})
  return pack_pairs(sides)


def balance_rows(lengths: np.ndarray, pairs_per_row: int) -> np.ndarray:
  """`[n]`: the row (0 .. n / pairs_per_row - 1) of each of `n` pairs, `pairs_per_row` to a row, the longest
  first to the row holding the fewest tokens so far: the longest row, which sets the batch's width, is as
  short as this greedy rule makes it (on the study's pairs, 4 to a row: ~24% fewer tokens than in order)."""
  n = len(lengths)
  rows = n // pairs_per_row
  if pairs_per_row == 1 or rows == 1:
    return np.arange(n) // pairs_per_row
  row_of, loads, counts = np.empty(n, np.int64), np.zeros(rows, np.int64), np.zeros(rows, np.int64)
  for i in np.argsort(-np.asarray(lengths), kind="stable"):
    open_rows = np.flatnonzero(counts < pairs_per_row)
    r = open_rows[np.argmin(loads[open_rows])]
    row_of[i], loads[r], counts[r] = r, loads[r] + lengths[i], counts[r] + 1
  return row_of


def batch_rows(arrays: dict, idx: np.ndarray, pairs_per_row: int, groups: int = 1) -> dict:
  """The pairs `idx` of `pack_pairs` arrays as a step's token rows, `pairs_per_row` pairs end to end in
  each row (segment ids `4 * slot + part`, ops.segment_mask: a pair sees nothing of another).

  The pairs are split into `groups` consecutive chunks (the micro-batches, times the data-parallel
  shards of each: a chunk's pairs stay in its rows), and within a chunk each pair goes to a row by
  `balance_rows`; the rows are cut to a multiple of 16 tokens past the longest (then steps of x1.5
  above 256: `shapes.bucket_len`). Returns `PACKED` arrays `[len(idx) / pairs_per_row, width]`,
  `pair_slot` `[len(idx)]` (where pair i's sums are: row-major slot `row * pairs_per_row + k`,
  `both_sides_logps` reads them back in `idx` order) and `valid` `[len(idx)]` (ones; the caller zeroes
  padding pairs); every other `[N]` array (the cached reference) is taken at `idx`, in `idx` order.
  """
  n = len(idx)
  if n % (pairs_per_row * groups):
    raise ValueError(f"{n} pairs do not fill rows of {pairs_per_row} in {groups} groups")
  rows, lengths = n // pairs_per_row, arrays["lengths"][idx]
  chunk, chunk_rows = n // groups, rows // groups
  slot = np.empty(n, np.int64)
  for g in range(groups):
    pos = np.arange(g * chunk, (g + 1) * chunk)
    row_of = balance_rows(lengths[pos], pairs_per_row) + g * chunk_rows
    for r in range(g * chunk_rows, (g + 1) * chunk_rows):
      members = pos[row_of == r]                       # in idx order within the row
      slot[members] = r * pairs_per_row + np.arange(len(members))
  totals = np.zeros(rows, np.int64)
  np.add.at(totals, slot // pairs_per_row, lengths)
  width = shapes.bucket_len(int(totals.max()), 16, linear_units=16)
  out = {k: np.zeros((rows, width), arrays[k].dtype) for k in PACKED}
  out["segments"][:] = ops.SEGMENT_PARTS * pairs_per_row + PAD_SEGMENT   # padding: a group of its own
  ends = np.zeros(rows, np.int64)
  for i in np.argsort(slot):
    r, k = divmod(int(slot[i]), pairs_per_row)
    span = slice(ends[r], ends[r] + lengths[i])
    ends[r] += lengths[i]
    for key in PACKED:
      out[key][r, span] = arrays[key][idx[i], :lengths[i]]
    out["segments"][r, span] += ops.SEGMENT_PARTS * k
  out.update({k: v[idx] for k, v in arrays.items() if k not in PACKED and k != "lengths"})
  out["pair_slot"] = slot.astype(np.int32)
  out["valid"] = np.ones(n, np.float32)
  return out


class PairBatches:
  """Shuffled epochs over packed pairs as `[A, ...]` batches; `state()`/`restore()` for exact resume.

  Each epoch is a permutation drawn from (seed, epoch); an epoch's last, partial batch is
  filled with `valid=0` pairs (trl keeps the partial batch: 18,000 pairs at 32 give 563 steps).
  Each pair is packed once (`pack_pairs`: its prompt once, both replies after it) and each
  micro-batch's pairs are laid end to end, `pairs_per_row` to a row (`batch_rows`: balanced within
  each micro-batch's share of each data-parallel shard, the rows cut to a multiple of 16): the values
  of separate rows, a few step shapes, a fraction of the tokens.
  """

  def __init__(self, arrays: dict, batch_size: int, accum: int, seed: int, mesh=None, pairs_per_row: int = 1):
    self.arrays, self.batch_size, self.accum, self.seed = arrays, batch_size, accum, seed
    self.pairs_per_row = pairs_per_row
    # rows are balanced within each micro-batch's share of each shard
    self.groups = accum * (1 if mesh is None else sharding_lib.batch_shards(mesh))
    self.n = len(arrays["lengths"])
    self.steps_per_epoch = -(-self.n // batch_size)
    self.epoch, self.pos = 0, 0
    self.sharding = None if mesh is None else sharding_lib.batch_sharding(mesh, leading_dims=1)

  def state(self) -> dict:
    return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "n": self.n}

  def restore(self, state: dict) -> None:
    if state.get("n", self.n) != self.n:
      raise DataError(f"the checkpoint was trained on {state['n']} pairs, the config now gives {self.n}; "
                      "use another workdir for other data")
    self.epoch, self.pos = int(state["epoch"]), int(state["pos"])

  def _order(self):
    return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

  def next(self):
    idx = self._order()[self.pos:self.pos + self.batch_size]
    self.pos += self.batch_size
    if self.pos >= self.n:
      self.epoch, self.pos = self.epoch + 1, 0
    valid = np.zeros(self.batch_size, np.float32)
    valid[:len(idx)] = 1.0
    idx = np.concatenate([idx, np.full(self.batch_size - len(idx), idx[0])]).astype(np.int64)
    batch = batch_rows(self.arrays, idx, self.pairs_per_row, self.groups)
    batch["valid"] = valid
    batch = {k: v.reshape(self.accum, -1, *v.shape[1:]) for k, v in batch.items()}
    tokens = int(batch["tokens"].size)
    if self.sharding is not None:
      batch = {k: jax.device_put(v, self.sharding) for k, v in batch.items()}
    return batch, {"tokens": tokens}


# ----------------------------------------------------------------------------- the reference

def _fingerprint(*trees_and_arrays) -> str:
  """A digest of arrays (params, token rows): the reference cache is valid only for the same model and data."""
  h = hashlib.sha256()
  for tree in trees_and_arrays:
    for leaf in jax.tree.leaves(tree):
      a = np.ascontiguousarray(np.asarray(leaf))
      h.update(str((a.shape, a.dtype.str)).encode())
      h.update(a.tobytes())
  return h.hexdigest()[:16]


def reference_logps(ref_params, graphdef, arrays: dict, *, average: bool, batch_size: int, cache_path, key: str,
                    pairs_per_row: int = 1):
  """(chosen [N], rejected [N]) under the frozen reference, computed once and cached in `cache_path` (.npz).

  The cache is keyed by a digest of the reference parameters and the token rows; another
  model or other data recompute it. With several processes each computes its share of the
  batches on its own devices, the shares are gathered, and process 0 writes the cache.
  """
  cache_path = pathlib.Path(cache_path)
  if cache_path.exists():
    try:
      with np.load(cache_path) as z:
        if str(z["key"]) == key:
          return z["chosen"], z["rejected"]
    except Exception:  # a corrupt cache is recomputed
      pass
  fn = jit_reference_logps(graphdef, average)
  n = len(arrays["tokens"])
  both = np.zeros((2, n), np.float32)
  starts = np.arange(0, n, batch_size)[distributed.my_rows(-(-n // batch_size))]
  with progress.bar(len(starts), "reference log-probs", "batch") as bar:
    for start in starts:
      idx = np.arange(start, start + batch_size) % n  # a fixed shape: the tail wraps around
      c, r = fn(ref_params, batch_rows(arrays, idx, pairs_per_row))
      keep = min(batch_size, n - start)
      both[0, start:start + keep], both[1, start:start + keep] = np.asarray(c)[:keep], np.asarray(r)[:keep]
      bar.update(1)
  both = distributed.allgather(both).sum(axis=0)   # each row is non-zero on one process only: exact
  if distributed.is_lead():
    buf = io.BytesIO()
    np.savez(buf, key=np.array(key), chosen=both[0], rejected=both[1])
    atomic_write(cache_path, buf.getvalue())
  distributed.barrier("dpo reference cache")
  return both[0], both[1]


# ----------------------------------------------------------------------------- the `dpo` mode

def _pairs(config, workdir, tokenizer, init_from: str):
  """(pairs, description, held-out benchmark JSONL or '') from `config.pairs`."""
  spec = config.pairs
  if spec == "heldout_a":  # build from our own held-out split of the base's prepared data
    data_dir = config.get("pairs_data_dir") or str(ckpt_lib.run_root(init_from) / "data")
    built = pairs_lib.build_pairs(data_dir, pairs_lib.settings_from_config(config.build), tokenizer=tokenizer)
    written = pairs_lib.pair_files(pathlib.Path(workdir) / "pairs")
    if distributed.is_lead():
      pairs_lib.write_pairs(built, pathlib.Path(workdir) / "pairs")
    distributed.barrier("dpo held-out pairs")
    train = built["train"][config.pairs_offset:]
    if config.pairs_limit:
      train = train[:config.pairs_limit]
    return train, f"built from {data_dir} ({len(built['train'])} training pairs)", str(written["eval_word"])
  loaded = pairs_lib.load_pairs(spec, limit=config.pairs_limit, offset=config.pairs_offset, on_error=config.on_error)
  return loaded, loaded.source, ""


def _validate(config) -> None:
  t = config.train
  if t.batch_size % t.accum_steps:
    raise ConfigError(f"config.train.batch_size={t.batch_size} is not divisible by accum_steps={t.accum_steps}")
  if t.epochs < 1 and not t.max_steps:
    raise ConfigError(f"config.train.epochs={t.epochs} must be >= 1")
  if config.dpo.loss_type not in LOSS_TYPES:
    raise ConfigError(f"config.dpo.loss_type: {config.dpo.loss_type!r} is not one of {LOSS_TYPES}")
  if not 0.0 <= config.dpo.label_smoothing < 0.5:
    raise ConfigError(f"config.dpo.label_smoothing={config.dpo.label_smoothing} must be in [0, 0.5)")


def _encoded_arrays(config, workdir: pathlib.Path, base: finetune.Base):
  """(the pairs' packed rows, `pack_pairs`; the data description; the held-out benchmark)."""
  pairs, source, heldout = _pairs(config, workdir, base.tokenizer, base.spec)
  if not pairs:
    raise ConfigError(f"config.pairs: no usable pairs in {source}")
  encoded = pairs_lib.encode_pairs(pairs, base.tokenizer, style=config.tokenization, max_len=base.cfg.max_seq_len,
                                   on_error=config.on_error)
  if not len(encoded.rows):
    raise ConfigError(f"config.pairs: every pair of {source} was skipped while encoding")
  arrays = pair_arrays(encoded)
  info = {"source": source, "pairs": len(pairs), **encoded.counts, "packed_tokens": int(arrays["lengths"].sum()),
          "skipped_loading": dict(getattr(pairs, "skipped", {})), "skipped_encoding": dict(encoded.skipped)}
  return arrays, info, heldout


ROW_TOKENS = 128   # `pairs_per_row` 0: as many pairs to a row as fill about this many tokens on average


def auto_pairs_per_row(micro: int, shards: int, mean_length: float, row_tokens: int = ROW_TOKENS) -> int:
  """The most pairs to a row that divide each shard's share of a micro-batch and fill about `row_tokens`
  on average. Longer rows cost more than they save: attention over a row grows with its square, most
  of it masked (measured on XLA:CPU, tiny model, the study's pairs: 1, 2, 4, 8 pairs to a row took
  86, 76, 75, 82 ms a step for 349, 279, 262, 256 tokens)."""
  share = max(1, micro // shards)
  fits = [d for d in range(1, share + 1) if share % d == 0 and d * mean_length <= row_tokens]
  return max(fits, default=1)


def pairs_per_row(config, mesh, mean_length: float) -> int:
  """`config.dpo.pairs_per_row`, or (0) `auto_pairs_per_row` for this mesh and these pairs."""
  micro = config.train.batch_size // config.train.accum_steps
  shards = sharding_lib.batch_shards(mesh)
  per_row = config.dpo.get("pairs_per_row", 0) or auto_pairs_per_row(micro, shards, mean_length)
  if micro % per_row or (micro // per_row) % shards:
    raise ConfigError(f"config.dpo.pairs_per_row={per_row}: a micro-batch of {micro} pairs must fill whole rows, "
                      f"a multiple of the {shards} data-parallel shards")
  return per_row


def run(config, workdir: str) -> dict:
  """The `dpo` mode: fine-tune `init_from` on preference pairs, then evaluate base and result."""
  _validate(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  base = finetune.load_base(config)
  arrays, info, heldout = _encoded_arrays(config, workdir, base)
  if distributed.is_lead():
    atomic_write(workdir / "pairs_info.json", json.dumps(info, indent=2))

  d, t = config.dpo, config.train
  average = d.loss_type == "ipo"
  mesh = finetune.make_mesh(config)
  per_row = pairs_per_row(config, mesh, float(arrays["lengths"].mean()))
  key = _fingerprint(base.params, arrays, np.array([average]))
  arrays["ref_chosen"], arrays["ref_rejected"] = reference_logps(
      base.params, base.graphdef, arrays, average=average, batch_size=t.eval_batch_size,
      cache_path=workdir / "reference_logps.npz", key=key, pairs_per_row=math.gcd(per_row, t.eval_batch_size))

  batches = PairBatches(arrays, t.batch_size, t.accum_steps, config.seed, mesh, pairs_per_row=per_row)
  total_steps = t.max_steps or t.epochs * batches.steps_per_epoch
  tx, schedule = step_lib.make_optimizer(config.optimizer, total_steps)
  layout = step_lib.state_layout(lambda p: step_lib.init_state(p, tx), mesh, base.params)
  loss_fn = make_loss_fn(base.graphdef, beta=d.beta, loss_type=d.loss_type, label_smoothing=d.label_smoothing)
  names = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
           "logps/rejected")

  def scalars(m, step):
    return {"train/loss": float(m["loss"]), "train/grad_norm": float(m["grad_norm"]), **{k: float(m[k]) for k in names}}

  def finish(summary, state):
    if distributed.is_lead():
      plot_curves(workdir, batches.steps_per_epoch)
    return {"pairs": info}

  task = loop.Task(
      name="dpo", batches=batches, layout=layout, step=step_lib.jit_train_step(loss_fn, tx, mesh, layout.shardings),
      schedule=schedule, scalars=scalars,
      meta={"pairs": info["source"], "tokenization": config.tokenization, "reference_key": key})
  return finetune.run(config, workdir, base, task, total_steps, heldout=heldout, finish=finish)


def plot_curves(workdir, steps_per_epoch: int = 0) -> None:
  """DIR/dpo_curves.png: loss and reward accuracy against step, beside the study's logged curves when present."""
  rows = [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines() if l.strip()]
  curves.plot_dpo(rows, pathlib.Path(workdir) / "dpo_curves.png", steps_per_epoch=steps_per_epoch)
