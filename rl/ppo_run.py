"""The `ppo` mode: rollouts from mother prompts, one of the study's rewards, the jitted PPO update.

  python main.py --config=configs/ppo_bleu.py --config.init_from=RUN --workdir=DIR

Each step (STUDY.md §6): 16 mother turns -> queries `*MOT: <utt> *CHI:` -> up to 20 new
tokens, top-p 0.9, from the policy (llamalogue/sampling.py, params as an argument: no
recompile) -> the child's reply (the continuation cut at the next speaker tag) -> the reward
(rl/rewards.py; with `reward.curriculum`, that of the step's phase, STUDY.md §8.1) -> query ++
response rows -> old/reference log-probs and values (`ppo.score_rollout`) -> `ppo.ppo_update`
(4 epochs of shuffled mini-batches in one jit).
The response trained on is the re-encoded reply (`response=reply`) or the raw sampled
tokens (`response=raw`). Checkpoints, exact resume, the NaN stop, TensorBoard with trl's
names and the progress bar come from the shared run scaffold (llamalogue/loop.py); sample
replies go to DIR/samples.jsonl and TensorBoard text every `log_samples_every` steps.
"""

import dataclasses
import hashlib
import json
import pathlib
import time

import jax
import numpy as np

from llamalogue import checkpoint as ckpt_lib
from llamalogue import distributed
from llamalogue import loop, sampling
from llamalogue import sharding as sharding_lib
from llamalogue import step as step_lib
from llamalogue.data.units import SPEAKER_TAG
from llamalogue.errors import ConfigError, DataError, LlamalogueError
from llamalogue.metrics import MetricWriter
from llamalogue.paths import atomic_write
from llamalogue.shapes import bucket_len
from rl import curves, finetune, ppo, rewards
from rl import pairs as pairs_lib
from rl import teacher as teacher_lib

SPEAKER = "*CHI:"


def query(mother: str) -> str:
  return f"*MOT: {mother} {SPEAKER}"


def child_reply(continuation: str) -> str:
  """The first child utterance of a continuation of `... *CHI:`: up to the next speaker tag (`*MOT:`, `*SI1:`)."""
  return continuation[:sampling.first_stop(continuation, (SPEAKER_TAG,))].strip()


class PromptBatches:
  """Shuffled epochs over mother turns, `batch_size` a step; `state()`/`restore()` for exact resume."""

  def __init__(self, prompts: list[str], batch_size: int, seed: int):
    if len(prompts) < batch_size:
      raise ConfigError(f"config.ppo.batch_size={batch_size} but only {len(prompts)} prompts")
    self.prompts, self.batch_size, self.seed = prompts, batch_size, seed
    self.steps_per_epoch = len(prompts) // batch_size
    self.epoch, self.pos = 0, 0

  def state(self) -> dict:
    return {"epoch": self.epoch, "pos": self.pos, "n": len(self.prompts)}

  def restore(self, state: dict) -> None:
    if state.get("n", len(self.prompts)) != len(self.prompts):
      raise DataError(f"the checkpoint was trained on {state['n']} prompts, the config now gives "
                      f"{len(self.prompts)}; use another workdir for other prompts")
    self.epoch, self.pos = int(state["epoch"]), int(state["pos"])

  def next(self):
    order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.prompts))
    batch = [self.prompts[i] for i in order[self.pos:self.pos + self.batch_size]]
    self.pos += self.batch_size
    if self.pos + self.batch_size > len(self.prompts):
      self.epoch, self.pos = self.epoch + 1, 0
    return batch, {}


def pack_rows(queries: list[list[int]], responses: list[list[int]], pad_id: int, multiple: int = 16,
              length: int = 0):
  """(tokens `[B, L]`, masks `[B, L]`): query ++ response ++ right padding, mask on the response; L is the
  longest row rounded up to `multiple`, or `length` when given (every process's rows of a global batch)."""
  if not length:
    length = max(len(q) + len(r) for q, r in zip(queries, responses))
    length = -(-length // multiple) * multiple
  tokens = np.full((len(queries), length), pad_id, np.int32)
  masks = np.zeros((len(queries), length), np.float32)
  for i, (q, r) in enumerate(zip(queries, responses)):
    tokens[i, :len(q) + len(r)] = q + r
    masks[i, len(q):len(q) + len(r)] = 1.0
  return tokens, masks


def ppo_config(c) -> ppo.PPOConfig:
  fields = {f.name for f in dataclasses.fields(ppo.PPOConfig)}
  unknown = sorted(set(c.keys()) - fields)
  if unknown:
    raise ConfigError(f"config.ppo.{unknown[0]}: not a PPO setting; choose from {sorted(fields)}")
  return ppo.PPOConfig(**{k: v for k, v in c.items()}).validate()


def load_prompts(config) -> list[str]:
  """Mother turns from `config.prompts` ("" = held-out split B of the base's prepared data)."""
  spec = config.prompts
  if not spec:
    data = None if config.init_from.startswith("hf:") else ckpt_lib.run_root(config.init_from) / "data"
    if data is None or not (data / "heldout_b_dialogues.jsonl").exists():
      raise ConfigError(f"config.prompts: no held-out split B beside {config.init_from} (it is not one of our "
                        "pre-training runs); pass --config.prompts=FILE (mother turns, a pair file or a prepared "
                        "data dir)")
    spec = str(data)
  return teacher_lib.read_prompts(spec, config.max_prompts)


def make_rewards(config, workdir, prompts: list[str]) -> rewards.Curriculum:
  """The run's `rewards.Curriculum`: `reward.name` throughout, or each reward of `reward.curriculum` built once.

  The rewards share one teacher-reply cache and one loaded model per spec (teacher, judge);
  teacher replies they need are generated once into DIR/teacher_replies (resumable).
  """
  rc = config.reward
  phases = rewards.parse_curriculum(rc.curriculum) if rc.curriculum else ((rc.name, 1),)
  names = list(dict.fromkeys(n for n, _ in phases))
  models = {}

  def model(spec):
    if spec not in models:
      models[spec] = teacher_lib.Teacher(spec, dtype=rc.dtype, cache_dir=rc.cache_dir)
    return models[spec]

  run_keys = ("name", "replies_settings", "curriculum", "curriculum_scale")
  overrides = {k: v for k, v in rc.items() if k not in run_keys}
  cache = None
  if set(names) & set(rewards.READS_REPLIES) and not rc.replies:
    s = rc.replies_settings
    cache = teacher_lib.replies_for(model(rc.teacher), prompts, teacher_lib.reply_settings(s), workdir, s.chunk,
                                    who="ppo")
    overrides["replies"] = str(cache.path)
  if rc.replies.startswith("pairs:"):  # the chosen replies of a pair file (e.g. the study's synthetic pairs)
    overrides["replies"] = str(replies_from_pairs(rc.replies[len("pairs:"):], workdir))
  if cache is None:
    cache = rewards.reply_cache(names, overrides)
  built = {n: rewards.make_reward(n, overrides, cache=cache, teacher=model(rc.teacher) if n == "confidence"
                                  else model(rc.judge) if n == "llm_score" else None) for n in names}
  return rewards.Curriculum(phases, built, scale=bool(rc.curriculum) and rc.curriculum_scale)


def replies_from_pairs(spec: str, workdir) -> pathlib.Path:
  """A teacher-reply cache from a pair file's chosen replies (one per mother turn), in DIR/teacher_replies.

  The study's synthetic pairs hold one Llama-3.2-3B reply per mother turn: with
  `reward.replies=pairs:data:communicative_baby/dpo_dataset/synthetic_dpo_format.json` the BLEU and
  semantic-similarity rewards compare with the study's own teacher, offline.
  """
  loaded = pairs_lib.load_pairs(spec)
  rows = {}
  for p in loaded:
    rows.setdefault(teacher_lib.mother_turn(p.prompt), pairs_lib.body(p.chosen))
  key = hashlib.sha256(str(loaded.source).encode()).hexdigest()[:10]
  path = pathlib.Path(workdir) / "teacher_replies" / f"pairs-{key}.jsonl"
  if distributed.is_lead():
    atomic_write(path, "".join(json.dumps({"prompt": m, "replies": [r]}, ensure_ascii=False) + "\n"
                               for m, r in rows.items()))
    atomic_write(path.with_suffix(".json"), json.dumps({"teacher": {"name": f"chosen replies of {loaded.source}"},
                                                        "settings": {"n": 1}}, indent=2))
  distributed.barrier("replies from pairs")
  return path


class Rollouts:
  """The PPO step the run scaffold calls: `(state, mothers) -> (state, metrics)`; phase times in metrics.

  `reward` is a `rewards.Curriculum`: the reward of a step is a function of the global step in
  `state` (restored from the checkpoint), so a resumed run scores every step as an uninterrupted one.
  A curriculum run logs `env/reward_phase`, the index of the step's reward in `reward.names`.
  """

  def __init__(self, config, graphdef, ref_params, tokenizer, reward, cfg: ppo.PPOConfig, tx, mesh, shardings,
               samples_path: pathlib.Path):
    self.config, self.graphdef, self.ref_params, self.tok, self.reward, self.cfg = (
        config, graphdef, ref_params, tokenizer, reward, cfg)
    self.key = jax.random.key(config.seed)
    ref_shardings = sharding_lib.tree_shardings(ref_params, mesh)
    self.ref_params = distributed.to_global(ref_params, ref_shardings)
    self.score = ppo.jit_score_rollout(graphdef, cfg, mesh, shardings["params"], ref_shardings)
    self.batch_sharding = sharding_lib.batch_sharding(mesh)
    self.update = ppo.jit_ppo_update(graphdef, cfg, tx, mesh, shardings)
    self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    self.counts = {"nan_rewards": 0, "empty_replies": 0, "empty_batches": 0}
    self.samples_path = samples_path
    self.last_samples = []
    self.prompt_len = 0  # the longest query so far, bucketed: one sampler compile for the run

  def _prompt_len(self, queries) -> int:
    longest = max(len(self.tok(q)["input_ids"]) for q in queries)
    self.prompt_len = max(self.prompt_len, bucket_len(longest, 16), 32)
    return self.prompt_len

  def state(self) -> dict:
    """Host-side state a checkpoint keeps (llamalogue/loop.py `Task.host`): counters, the sampler's prompt
    bucket, each reward's counters and caches (every process's: each scores its own rows); a resumed run
    continues them as an uninterrupted one."""
    return {"counts": dict(self.counts), "prompt_len": self.prompt_len,
            "rewards": distributed.allgather_json("ppo reward state", self.reward.state())}

  def restore(self, state: dict) -> None:
    self.counts.update(state["counts"])
    self.prompt_len = int(state["prompt_len"])
    saved = state.get("rewards") or [state["reward"]]
    if len(saved) == jax.process_count():
      self.reward.restore(saved[jax.process_index()])
    else:  # another process count: process 0 carries the counters on, every process gets the merged caches
      self.reward.restore(rewards.merge_states(saved, keep_counts=distributed.is_lead()))

  def stats(self) -> dict:
    """The rewards' counters summed over the processes."""
    return rewards.sum_counts(distributed.allgather_json("ppo reward stats", self.reward.stats()))

  def __call__(self, state, mothers: list[str]):
    """One PPO step on the batch `mothers`. With several processes each samples, parses and scores its own
    rows (`distributed.my_rows`; its draws keyed by the row, so the rollout is the one a single process
    would make), the rows are assembled into global arrays, and the update is one global step."""
    c = self.config
    step = int(jax.device_get(state["step"]))
    key = jax.random.fold_in(self.key, step)
    t0 = time.perf_counter()
    rows = distributed.my_rows(len(mothers))
    queries_all = [query(m) for m in mothers]
    mine = [mothers[i] for i in rows]
    queries = [queries_all[i] for i in rows]
    stops = sampling.speaker_stops(queries_all) if c.response == "reply" else ()
    gens = sampling.generate((self.graphdef, distributed.local_replica(state["params"]["policy"])), self.tok,
                             queries, rng=jax.random.fold_in(key, 0), max_new_tokens=c.rollout.max_new_tokens,
                             temperature=c.rollout.temperature, top_p=c.rollout.top_p, top_k=c.rollout.top_k,
                             stop=stops, batch_size=len(queries), min_prompt_len=self._prompt_len(queries_all),
                             row_offset=int(rows[0]) if len(rows) else 0)
    replies = [child_reply(g.text) for g in gens]
    t1 = time.perf_counter()
    scores, phase = self.reward(step, mine, replies)
    phase_metrics = {"env/reward_phase": float(phase)} if c.reward.curriculum else {}
    t2 = time.perf_counter()
    q_ids = [self.tok(q)["input_ids"] for q in queries]
    if c.response == "reply":
      r_ids = [self.tok(" " + r, add_special_tokens=False)["input_ids"] if r else [] for r in replies]
    else:
      r_ids = [list(g.token_ids) for g in gens]
    bad = ~np.isfinite(scores)
    local = {"bad": [[mine[i], replies[i], float(scores[i])] for i in np.flatnonzero(bad)],
             "empty": sum(not r for r in r_ids), "length": max((len(q) + len(r) for q, r in zip(q_ids, r_ids)), default=0),
             "samples": [{"step": step + 1, "mother": m, "reply": r, "score": float(x) if np.isfinite(x) else None}
                         for m, r, x in zip(mine, replies, scores)],
             "tokens": int(sum(len(g.token_ids) for g in gens)), "first": gens[0].text if gens else ""}
    every = distributed.allgather_json("ppo rollout", local)     # one small exchange per step
    nan_rows = [b for e in every for b in e["bad"]]
    if nan_rows:
      if c.on_nan_reward == "error":
        mother, reply, value = nan_rows[0]
        raise LlamalogueError(f"ppo: reward {self.reward.names[phase]} returned {value} at step {step + 1} for "
                              f"the reply {reply!r} to {mother!r}; set config.on_nan_reward=zero to count "
                              "and use 0")
      self.counts["nan_rewards"] += len(nan_rows)
      scores = np.where(bad, 0.0, scores).astype(np.float32)
    empty = sum(e["empty"] for e in every)
    self.counts["empty_replies"] += empty
    self.last_samples = [dict(x, score=0.0 if x["score"] is None else x["score"]) for e in every for x in e["samples"]]
    if empty == len(mothers):  # nothing to learn from: the state stays, the step counts
      if c.on_empty_batch == "error":
        raise LlamalogueError(f"ppo: no reply parsed in the whole batch at step {step + 1} (e.g. "
                              f"{every[0]['first']!r}); set config.on_empty_batch=skip to count and go on")
      self.counts["empty_batches"] += 1
      state = dict(state, step=state["step"] + 1)
      return state, {"finite": np.bool_(True), "env/reward_mean": float(np.mean([x["score"] for x in self.last_samples])),
                     **phase_metrics, **self._counts()}
    multiple = 16
    length = -(-max(e["length"] for e in every) // multiple) * multiple   # one global row length
    tokens, masks = pack_rows(q_ids, r_ids, self.pad_id, multiple, length=length)
    tokens, masks, scores = (self._global(x) for x in (tokens, masks, np.asarray(scores, np.float32)))
    rollout = dict(self.score(state["params"], self.ref_params, tokens, masks), tokens=tokens, masks=masks,
                   scores=scores)
    jax.block_until_ready(rollout)
    t3 = time.perf_counter()
    state, stats = self.update(state, rollout, jax.random.fold_in(key, 1))
    jax.block_until_ready(stats)
    t4 = time.perf_counter()
    gen_tokens = sum(e["tokens"] for e in every)
    stats = dict(stats, **phase_metrics, **self._counts(), **{
        "time/rollout_s": t1 - t0, "time/reward_s": t2 - t1, "time/forward_s": t3 - t2, "time/update_s": t4 - t3,
        "perf/rollout_tokens_per_s": gen_tokens / max(t1 - t0, 1e-9)})
    return state, stats

  def _global(self, x: np.ndarray):
    """This process's rows as its part of a global batch array (one process: the array as it is)."""
    if jax.process_count() == 1:
      return x
    return jax.make_array_from_process_local_data(self.batch_sharding, x)

  def _counts(self) -> dict:
    return {f"counts/{k}": float(v) for k, v in self.counts.items()}

  def write_samples(self, step: int, writer) -> None:
    if not distributed.is_lead():
      return
    with open(self.samples_path, "a") as f:
      for s in self.last_samples:
        f.write(json.dumps(s, ensure_ascii=False) + "\n")
    if writer is not None:
      text = "\n\n".join(f"*MOT: {s['mother']}  \n*CHI: {s['reply']}  (reward {s['score']:.3f})"
                         for s in self.last_samples[:8])
      writer.write_text(step, "samples/replies", text)


def _validate(config) -> None:
  if config.response not in ("reply", "raw"):
    raise ConfigError(f"config.response: {config.response!r} is not reply or raw")
  if config.on_nan_reward not in ("error", "zero"):
    raise ConfigError(f"config.on_nan_reward: {config.on_nan_reward!r} is not error or zero")
  if config.on_empty_batch not in ("error", "skip"):
    raise ConfigError(f"config.on_empty_batch: {config.on_empty_batch!r} is not error or skip")
  rc = config.reward
  if rc.name not in (*rewards.NAMES, "curriculum"):
    raise ConfigError(f"config.reward.name: {rc.name!r} is not one of {(*rewards.NAMES, 'curriculum')}")
  if rc.name == "curriculum" and not rc.curriculum:
    raise ConfigError("config.reward.curriculum: empty with config.reward.name=curriculum; give phases name:steps, "
                      "e.g. confidence:25,semsim:25")
  if rc.curriculum and rc.name != "curriculum":
    raise ConfigError(f"config.reward.curriculum: set with config.reward.name={rc.name!r}; a curriculum run has "
                      "reward.name=curriculum (configs/ppo_curriculum.py)")
  if rc.curriculum:
    rewards.parse_curriculum(rc.curriculum)


KEPT = ("env/reward_mean", "env/reward_std", "env/reward_phase", "objective/kl", "objective/kl_coef",
        "objective/entropy", "ppo/loss/policy", "ppo/loss/value", "ppo/loss/total", "ppo/policy/clipfrac",
        "ppo/policy/approxkl", "ppo/policy/entropy", "ppo/returns/mean", "ppo/val/vpred",
        "ppo/mean_non_score_reward", "tokens/responses_len_mean")   # trl's names, logged each step


def run(config, workdir: str) -> dict:
  """The `ppo` mode: PPO from `init_from` with `config.reward.name` (or its curriculum), then base-vs-result
  evaluation."""
  _validate(config)
  cfg = ppo_config(config.ppo)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  base = finetune.load_base(config)
  prompts = load_prompts(config)
  reward = make_rewards(config, workdir, prompts)
  batches = PromptBatches(prompts, cfg.batch_size, config.seed)
  total_steps = config.train.max_steps or config.train.epochs * batches.steps_per_epoch
  mesh = finetune.make_mesh(config)
  tx, schedule = ppo.make_optimizer(cfg)
  vh_key = jax.random.fold_in(jax.random.key(config.seed), 1 << 20)
  layout = step_lib.state_layout(
      lambda p, k: ppo.init_state(p, ppo.init_value_head(base.cfg.hidden_size, k), tx, cfg), mesh, base.params, vh_key)
  rollouts = Rollouts(config, base.graphdef, base.params, base.tokenizer, reward, cfg, tx, mesh, layout.shardings,
                      workdir / "samples.jsonl")
  text_writer = MetricWriter(workdir, subdir="tb", jsonl=False) if jax.process_index() == 0 else None

  def scalars(m, step):
    return {k: float(v) for k, v in m.items() if np.ndim(v) == 0 and k != "finite"
            and (k in KEPT or k.startswith(("time/", "counts/", "perf/")))}

  def on_log(step, state, m):
    if config.train.log_samples_every and step % config.train.log_samples_every == 0:
      rollouts.write_samples(step, text_writer)

  def finish(summary, state):
    rc = config.reward
    totals = rollouts.stats()
    stats = ({"curriculum": rc.curriculum, "scale": rc.curriculum_scale, "rewards": totals} if rc.curriculum
             else totals[rc.name])
    if jax.process_index() == 0:
      rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if l.strip()]
      label = f"curriculum {rc.curriculum}{' on [0, 1]' if rc.curriculum_scale else ''}" if rc.curriculum else rc.name
      curves.plot_ppo({label: rows}, workdir / "ppo_reward.png")
    return {"reward": {"name": rc.name, **stats, **rollouts.counts}}

  task = loop.Task(
      name=f"ppo-{config.reward.name}", batches=batches, layout=layout, step=rollouts, schedule=schedule,
      scalars=scalars, on_log=on_log, host=rollouts,
      meta={"reward": config.reward.name, "response": config.response, "ppo": dataclasses.asdict(cfg)})
  try:
    return finetune.run(config, workdir, base, task, total_steps, finish=finish)
  finally:
    if text_writer:
      text_writer.close()
