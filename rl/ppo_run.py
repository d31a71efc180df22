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
import json
import pathlib
import time

import jax
import numpy as np

from llamalogue.errors import ConfigError, DataError, LlamalogueError
from rl import ppo

SPEAKER = "*CHI:"


def query(mother: str) -> str:
  return f"*MOT: {mother} {SPEAKER}"


def child_reply(continuation: str) -> str:
  """The first child utterance of a continuation of `... *CHI:`: up to the next `*XXX:` tag."""
  from llamalogue.sampling import first_stop, SPEAKER_TAG
  return continuation[:first_stop(continuation, (SPEAKER_TAG,))].strip()


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


def pack_rows(queries: list[list[int]], responses: list[list[int]], pad_id: int, multiple: int = 16):
  """(tokens `[B, L]`, masks `[B, L]`): query ++ response ++ right padding, mask on the response."""
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


def load_prompts(config, workdir) -> list[str]:
  """Mother turns from `config.prompts` ("" = held-out split B of the base's prepared data)."""
  from rl import teacher as teacher_lib
  spec = config.prompts
  if not spec:
    from evaluation.run import run_root
    spec = str(run_root(pathlib.Path(config.init_from)) / "data")
  return teacher_lib.read_prompts(spec, config.max_prompts)


def make_rewards(config, workdir, prompts: list[str]):
  """The run's `rewards.Curriculum`: `reward.name` throughout, or each reward of `reward.curriculum` built once.

  The rewards share one teacher-reply cache and one loaded model per spec (teacher, judge);
  teacher replies they need are generated once into DIR/teacher_replies (resumable).
  """
  from configs import teacher_replies as replies_config
  from rl import rewards, teacher as teacher_lib
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
  if set(names) & {"bleu", "semsim", "confidence"} and not rc.replies:
    settings_cfg = replies_config.get_config()
    settings_cfg.update(rc.replies_settings.to_dict())
    teacher = model(rc.teacher)
    settings = teacher_lib.reply_settings(settings_cfg)
    path = teacher_lib.cache_path(workdir, teacher, settings)
    from llamalogue.paths import atomic_write
    atomic_write(path.with_suffix(".json"), json.dumps({"teacher": teacher.identity(), "settings": settings}, indent=2))
    cache = teacher_lib.ReplyCache(path)
    t0 = time.time()
    new = teacher_lib.fill_cache(teacher, prompts, cache, settings, settings_cfg.chunk)
    if new:
      print(f"ppo: teacher {teacher.spec} wrote {settings['n']} replies for {new} turns in {time.time() - t0:.0f} s "
            f"-> {path}")
    overrides["replies"] = str(path)
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
  import hashlib
  from llamalogue.paths import atomic_write
  from rl import pairs as pairs_lib, teacher as teacher_lib
  loaded = pairs_lib.load_pairs(spec)
  rows = {}
  for p in loaded:
    rows.setdefault(teacher_lib.mother_turn(p.prompt), pairs_lib.body(p.chosen))
  key = hashlib.sha256(str(loaded.source).encode()).hexdigest()[:10]
  path = pathlib.Path(workdir) / "teacher_replies" / f"pairs-{key}.jsonl"
  atomic_write(path, "".join(json.dumps({"prompt": m, "replies": [r]}, ensure_ascii=False) + "\n"
                             for m, r in rows.items()))
  atomic_write(path.with_suffix(".json"), json.dumps({"teacher": {"name": f"chosen replies of {loaded.source}"},
                                                      "settings": {"n": 1}}, indent=2))
  return path


class Rollouts:
  """The PPO step the run scaffold calls: `(state, mothers) -> (state, metrics)`; phase times in metrics.

  `reward` is a `rewards.Curriculum`: the reward of a step is a function of the global step in
  `state` (restored from the checkpoint), so a resumed run scores every step as an uninterrupted one.
  A curriculum run logs `env/reward_phase`, the index of the step's reward in `reward.names`.
  """

  def __init__(self, config, graphdef, ref_params, tokenizer, reward, cfg: ppo.PPOConfig, mesh, shardings,
               samples_path: pathlib.Path):
    from llamalogue import sharding as sharding_lib
    self.config, self.graphdef, self.ref_params, self.tok, self.reward, self.cfg = (
        config, graphdef, ref_params, tokenizer, reward, cfg)
    self.key = jax.random.key(config.seed)
    self.score = ppo.jit_score_rollout(graphdef, cfg, mesh, shardings["params"],
                                       sharding_lib.tree_shardings(ref_params, mesh))
    self.update = ppo.jit_ppo_update(graphdef, cfg, ppo.make_optimizer(cfg), mesh, shardings)
    self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    self.counts = {"nan_rewards": 0, "empty_replies": 0, "empty_batches": 0}
    self.samples_path = samples_path
    self.last_samples = []
    self.prompt_len = 0  # the longest query so far, bucketed: one sampler compile for the run

  def _prompt_len(self, queries) -> int:
    from evaluation.scoring import bucket_len
    longest = max(len(self.tok(q)["input_ids"]) for q in queries)
    self.prompt_len = max(self.prompt_len, bucket_len(longest, 16), 32)
    return self.prompt_len

  def __call__(self, state, mothers: list[str]):
    from llamalogue import sampling
    c = self.config
    step = int(jax.device_get(state["step"]))
    key = jax.random.fold_in(self.key, step)
    t0 = time.perf_counter()
    queries = [query(m) for m in mothers]
    stops = sampling.speaker_stops(queries) if c.response == "reply" else ()
    gens = sampling.generate((self.graphdef, state["params"]["policy"]), self.tok, queries,
                             rng=jax.random.fold_in(key, 0), max_new_tokens=c.rollout.max_new_tokens,
                             temperature=c.rollout.temperature, top_p=c.rollout.top_p, top_k=c.rollout.top_k,
                             stop=stops, batch_size=len(queries), min_prompt_len=self._prompt_len(queries))
    replies = [child_reply(g.text) for g in gens]
    t1 = time.perf_counter()
    scores, phase = self.reward(step, mothers, replies)
    phase_metrics = {"env/reward_phase": float(phase)} if c.reward.curriculum else {}
    bad = ~np.isfinite(scores)
    if bad.any():
      if c.on_nan_reward == "error":
        i = int(np.argmax(bad))
        raise LlamalogueError(f"ppo: reward {self.reward.names[phase]} returned {scores[i]} at step {step + 1} for "
                              f"the reply {replies[i]!r} to {mothers[i]!r}; set config.on_nan_reward=zero to count "
                              "and use 0")
      self.counts["nan_rewards"] += int(bad.sum())
      scores = np.where(bad, 0.0, scores).astype(np.float32)
    t2 = time.perf_counter()
    q_ids = [self.tok(q)["input_ids"] for q in queries]
    if c.response == "reply":
      r_ids = [self.tok(" " + r, add_special_tokens=False)["input_ids"] if r else [] for r in replies]
    else:
      r_ids = [list(g.token_ids) for g in gens]
    empty = sum(not r for r in r_ids)
    self.counts["empty_replies"] += empty
    self.last_samples = [{"step": step + 1, "mother": m, "reply": r, "score": float(s)}
                         for m, r, s in zip(mothers, replies, scores)]
    if empty == len(r_ids):  # nothing to learn from: the state stays, the step counts
      if c.on_empty_batch == "error":
        raise LlamalogueError(f"ppo: no reply parsed in the whole batch at step {step + 1} (e.g. {gens[0].text!r}); "
                              "set config.on_empty_batch=skip to count and go on")
      self.counts["empty_batches"] += 1
      state = dict(state, step=state["step"] + 1)
      return state, {"finite": np.bool_(True), "env/reward_mean": float(np.mean(scores)), **phase_metrics,
                     **self._counts()}
    tokens, masks = pack_rows(q_ids, r_ids, self.pad_id)
    rollout = dict(self.score(state["params"], self.ref_params, tokens, masks), tokens=tokens, masks=masks,
                   scores=scores)
    jax.block_until_ready(rollout)
    t3 = time.perf_counter()
    state, stats = self.update(state, rollout, jax.random.fold_in(key, 1))
    jax.block_until_ready(stats)
    t4 = time.perf_counter()
    gen_tokens = int(sum(len(g.token_ids) for g in gens))
    stats = dict(stats, **phase_metrics, **self._counts(), **{
        "time/rollout_s": t1 - t0, "time/reward_s": t2 - t1, "time/forward_s": t3 - t2, "time/update_s": t4 - t3,
        "perf/rollout_tokens_per_s": gen_tokens / max(t1 - t0, 1e-9)})
    return state, stats

  def _counts(self) -> dict:
    return {f"counts/{k}": float(v) for k, v in self.counts.items()}

  def write_samples(self, step: int, writer) -> None:
    with open(self.samples_path, "a") as f:
      for s in self.last_samples:
        f.write(json.dumps(s, ensure_ascii=False) + "\n")
    if writer is not None:
      text = "\n\n".join(f"*MOT: {s['mother']}  \n*CHI: {s['reply']}  (reward {s['score']:.3f})"
                         for s in self.last_samples[:8])
      writer.write_text(step, "samples/replies", text)


def _validate(config) -> None:
  if not config.get("init_from"):
    raise ConfigError("config.init_from: give the base model (our pre-training run or checkpoint, a HF directory "
                      "or hf:<repo id>)")
  if config.response not in ("reply", "raw"):
    raise ConfigError(f"config.response: {config.response!r} is not reply or raw")
  if config.on_nan_reward not in ("error", "zero"):
    raise ConfigError(f"config.on_nan_reward: {config.on_nan_reward!r} is not error or zero")
  if config.on_empty_batch not in ("error", "skip"):
    raise ConfigError(f"config.on_empty_batch: {config.on_empty_batch!r} is not error or skip")
  from rl import rewards
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


def run(config, workdir: str) -> dict:
  """The `ppo` mode: PPO from `init_from` with `config.reward.name` (or its curriculum), then base-vs-result
  evaluation."""
  from llamalogue import hf, loop, sharding as sharding_lib, step as step_lib
  from llamalogue.metrics import MetricWriter
  from llamalogue.paths import atomic_write
  from llamalogue.train import compute_dtype
  from rl import curves

  _validate(config)
  cfg = ppo_config(config.ppo)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  model, tokenizer = hf.load(config.init_from, compute_dtype(config.model.dtype))
  if tokenizer is None:
    raise ConfigError(f"config.init_from: {config.init_from} has no tokenizer beside it")
  graphdef, ref_params = step_lib.split_model(model)
  prompts = load_prompts(config, workdir)
  reward = make_rewards(config, workdir, prompts)
  batches = PromptBatches(prompts, cfg.batch_size, config.seed)
  total_steps = config.train.max_steps or config.train.epochs * batches.steps_per_epoch
  mesh = sharding_lib.make_mesh(config.mesh.data, config.mesh.fsdp)
  tx = ppo.make_optimizer(cfg)
  vh_key = jax.random.fold_in(jax.random.key(config.seed), 1 << 20)
  abstract = jax.eval_shape(lambda k: ppo.init_state(ref_params, ppo.init_value_head(model.cfg.hidden_size, k),
                                                     tx, cfg), vh_key)
  shardings = sharding_lib.tree_shardings(abstract, mesh)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  init = jax.jit(lambda p, k: ppo.init_state(p, ppo.init_value_head(model.cfg.hidden_size, k), tx, cfg),
                 out_shardings=shardings)
  rollouts = Rollouts(config, graphdef, ref_params, tokenizer, reward, cfg, mesh, shardings, workdir / "samples.jsonl")
  atomic_write(workdir / "run_config.json", config.to_json_best_effort(indent=2))
  text_writer = MetricWriter(workdir, subdir="tb", jsonl=False) if jax.process_index() == 0 else None

  keep = ("env/reward_mean", "env/reward_std", "env/reward_phase", "objective/kl", "objective/kl_coef",
          "objective/entropy", "ppo/loss/policy", "ppo/loss/value", "ppo/loss/total", "ppo/policy/clipfrac",
          "ppo/policy/approxkl", "ppo/policy/entropy", "ppo/returns/mean", "ppo/val/vpred",
          "ppo/mean_non_score_reward", "tokens/responses_len_mean")

  def scalars(m, step):
    return {k: float(v) for k, v in m.items() if np.ndim(v) == 0 and k != "finite"
            and (k in keep or k.startswith(("time/", "counts/", "perf/")))}

  def on_log(step, state, m):
    if config.train.log_samples_every and step % config.train.log_samples_every == 0:
      rollouts.write_samples(step, text_writer)

  task = loop.Task(
      name=f"ppo-{config.reward.name}", batches=batches, target=target, step=rollouts, scalars=scalars,
      init_state=lambda: init(ref_params, vh_key), on_log=on_log,
      meta={"seed": config.seed, "model": dataclasses.asdict(model.cfg), "init_from": config.init_from,
            "reward": config.reward.name, "response": config.response, "ppo": dataclasses.asdict(cfg)})
  tok_dir = hf.tokenizer_dir_for(config.init_from, tokenizer, workdir)
  try:
    summary, _ = loop.run_loop(workdir, loop.Settings.from_config(config.train, total_steps), task,
                               model_cfg=model.cfg, tokenizer_dir=tok_dir)
  finally:
    if text_writer:
      text_writer.close()
  rc = config.reward
  stats = ({"curriculum": rc.curriculum, "scale": rc.curriculum_scale, "rewards": reward.stats()} if rc.curriculum
           else reward.stats()[rc.name])
  summary["reward"] = {"name": rc.name, **stats, **rollouts.counts}
  if config.eval.tasks:
    from evaluation.run import evaluate_against_base
    summary["evaluation"] = evaluate_against_base(config.init_from, workdir, config.eval)
  if jax.process_index() == 0:
    atomic_write(workdir / "summary.json", json.dumps(summary, indent=2, default=str))
    rows = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if l.strip()]
    label = f"curriculum {rc.curriculum}{' on [0, 1]' if rc.curriculum_scale else ''}" if rc.curriculum else rc.name
    curves.plot_ppo({label: rows}, workdir / "ppo_reward.png")
  return summary
