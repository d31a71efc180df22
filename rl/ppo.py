"""Proximal Policy Optimization for a Llama with a value head, following trl 0.8.6's PPOTrainer.

Pure numerics of arrays plus two jitted functions the PPO loop calls once per batch:

* `score_rollout(params, ref_params, tokens_BxL, masks_BxL)` -> old log-probs, reference
  log-probs, values and the per-token KL penalty (trl's `batched_forward_pass` + `_kl_penalty`);
* `ppo_update(state, rollout, rng)` -> rewards with the KL penalty (`compute_rewards`), GAE
  (`compute_advantages`), `ppo_epochs` epochs of shuffled mini-batches (`loss`,
  `train_minibatch`) in one `lax.scan`, trl's statistics, and the adaptive KL update.

Layout. A row of `tokens_BxL` is query ++ response ++ padding (right padding, the row starts at
position 0; the model is causal, so padding is never seen by a real token). Every per-token
array is aligned with the tokens: at index t it holds log p(token_t | tokens_<t), the value
of the state before token t (the value head on the hidden state at t-1) and the entropy of
that next-token distribution; index 0 has no context and is 0. `masks_BxL` is 1 on the response
tokens that count (trl's `masks` with `response_masks`); trl's `[B, L-1]` arrays equal ours
`[:, 1:]`. The policy is `{'policy': Llama params, 'value_head': ValueHead params}`; the frozen
reference is the same Llama graphdef with other params.

Kept from trl 0.8.6: `whiten_rewards`, `max_grad_norm`, `ratio_threshold` (default 10: a
mini-batch whose mean ratio exceeds it gets a zero loss; Adam still steps, as in trl). Not
carried over (all off by default there): score scaling / normalisation / clipping,
`early_stopping`, gradient accumulation inside a mini-batch.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from llamalogue import model as model_lib
from llamalogue import ops
from llamalogue import sharding as sharding_lib
from llamalogue import step as step_lib
from llamalogue.errors import ConfigError

KL_PENALTIES = ("kl", "abs", "mse", "full")


@dataclasses.dataclass(frozen=True)
class PPOConfig:
  """trl 0.8.6 `PPOConfig` fields (its defaults, except the study's batch sizes, STUDY.md §6)."""
  batch_size: int = 16
  mini_batch_size: int = 4
  ppo_epochs: int = 4
  learning_rate: float = 1.41e-5
  max_grad_norm: float | None = None   # trl 0.8.6: None (no clipping)
  adap_kl_ctrl: bool = True
  init_kl_coef: float = 0.2
  kl_penalty: str = "kl"
  target: float = 6.0
  horizon: float = 10_000.0
  gamma: float = 1.0
  lam: float = 0.95
  cliprange: float = 0.2
  cliprange_value: float = 0.2
  vf_coef: float = 0.1
  ratio_threshold: float = 10.0
  whiten_rewards: bool = False
  value_dropout: float = 0.1           # trl ValueHead `summary_dropout_prob`

  def validate(self) -> "PPOConfig":
    if self.kl_penalty not in KL_PENALTIES:
      raise ConfigError(f"config.ppo.kl_penalty: {self.kl_penalty!r} is not one of {KL_PENALTIES}")
    if self.mini_batch_size < 1 or self.batch_size % self.mini_batch_size:
      raise ConfigError(f"config.ppo.batch_size: {self.batch_size} is not a multiple of "
                        f"mini_batch_size={self.mini_batch_size}")
    if not 0.0 <= self.value_dropout < 1.0:
      raise ConfigError(f"config.ppo.value_dropout: {self.value_dropout} is not in [0, 1)")
    return self


# ---------------------------------------------------------------------------- trl.core helpers

def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """trl.core.masked_mean; an all-zero mask gives 0, not 0/0. A mini-batch whose rows all hold empty
  replies (`response="reply"`: a reply that parses to nothing has no tokens) adds no loss and no gradient."""
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def masked_var(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Unbiased (Bessel-corrected) variance over the masked entries, as trl.core.masked_var (0 for
  fewer than two entries, where trl's correction divides by zero)."""
  centered = x - masked_mean(x, mask)
  n = jnp.sum(mask)
  return masked_mean(centered ** 2, mask) * jnp.where(n > 1, n / jnp.maximum(n - 1, 1.0), 0.0)


def masked_whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True) -> jax.Array:
  """(x - mean) / sqrt(var + 1e-8) over the masked entries; `shift_mean=False` adds the mean back."""
  mean, var = masked_mean(x, mask), masked_var(x, mask)
  whitened = (x - mean) * jax.lax.rsqrt(var + 1e-8)
  return whitened if shift_mean else whitened + mean


# ---------------------------------------------------------------------------- value head and forward

def init_value_head(hidden_size: int, rng: jax.Array) -> dict:
  """trl's `ValueHead.summary` = torch `nn.Linear(D, 1)` with its default init U(±1/√D)."""
  bound = 1.0 / math.sqrt(hidden_size)
  k_w, k_b = jax.random.split(rng)
  return {"summary": {
      "kernel": jax.random.uniform(k_w, (hidden_size, 1), jnp.float32, -bound, bound),
      "bias": jax.random.uniform(k_b, (1,), jnp.float32, -bound, bound)}}


def value_head(vh_params: dict, hidden_BxTxD: jax.Array, dropout_rng: jax.Array | None = None,
               dropout_rate: float = 0.0) -> jax.Array:
  """Dropout (train mode only: a key is given) then Linear(D, 1), in float32: values `[B, T]`."""
  h = hidden_BxTxD.astype(jnp.float32)
  if dropout_rng is not None and dropout_rate > 0.0:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, h.shape)
    h = jnp.where(keep, h / (1.0 - dropout_rate), 0.0)
  w = vh_params["summary"]
  return model_lib.matmul_2d(h, w["kernel"])[..., 0] + w["bias"][0]


def _policy_forward(graphdef: nnx.GraphDef, llama_params: dict, tokens_BxL: jax.Array, entropy: bool = False):
  """The model's one forward: hidden states at positions 0..L-2 and the log-probabilities of tokens 1..L-1
  (`ops.token_logprobs`: chunked, never all float32 logits at once)."""
  model = nnx.merge(graphdef, llama_params)
  hidden_BxTxD = model.hidden(tokens_BxL)[:, :-1]
  stats = ops.token_logprobs(hidden_BxTxD, model.head_kernel(), tokens_BxL[:, 1:], entropy=entropy)
  return model, hidden_BxTxD, stats


def _align(x_BxT: jax.Array) -> jax.Array:
  """Per-position `[B, L-1]` (predicting token t+1) -> token-aligned `[B, L]` (index 0 = 0)."""
  return jnp.pad(x_BxT, ((0, 0), (1, 0)))


def policy_outputs(graphdef: nnx.GraphDef, params: dict, tokens_BxL: jax.Array,
                   dropout_rng: jax.Array | None = None, dropout_rate: float = 0.0):
  """(logprobs_BxL, values_BxL, entropy_BxL), token-aligned, from ONE forward of the policy.

  `params = {'policy', 'value_head'}`. With `dropout_rng` the value head is in train mode.
  """
  _, hidden, stats = _policy_forward(graphdef, params["policy"], tokens_BxL, entropy=True)
  values = value_head(params["value_head"], hidden, dropout_rng, dropout_rate)
  return _align(stats["logprobs"]), _align(values), _align(stats["entropy"])


# ---------------------------------------------------------------------------- rewards and advantages

def kl_penalty(logprobs: jax.Array, ref_logprobs: jax.Array, kind: str) -> jax.Array:
  """trl `_kl_penalty` from log-probabilities of the sampled tokens (`kl`, `abs`, `mse`).

  `full` needs whole distributions: `score_rollout` computes it with `ops.kl_divergence`.
  """
  d = logprobs - ref_logprobs
  if kind == "kl":
    return d
  if kind == "abs":
    return jnp.abs(d)
  if kind == "mse":
    return 0.5 * d * d
  raise ConfigError(f"config.ppo.kl_penalty: {kind!r} has no per-token form; 'full' is computed from both heads")


def compute_rewards(scores_B: jax.Array, kls_BxL: jax.Array, masks_BxL: jax.Array, kl_coef: jax.Array):
  """(rewards, non_score_rewards) `[B, L]`: -kl_coef·KL per token, the score added on the last masked token."""
  non_score = -kl_coef * kls_BxL
  length = masks_BxL.shape[1]
  last_B = jnp.argmax(jnp.where(masks_BxL > 0, jnp.arange(length), -1), axis=1)
  rewards = non_score + jax.nn.one_hot(last_B, length, dtype=non_score.dtype) * scores_B[:, None]
  return rewards, non_score


def gae(values_BxL: jax.Array, rewards_BxL: jax.Array, gamma: float, lam: float) -> jax.Array:
  """Generalised advantage estimation over the whole row (trl: no mask inside the recursion)."""
  next_values = jnp.pad(values_BxL[:, 1:], ((0, 0), (0, 1)))
  deltas_LxB = (rewards_BxL + gamma * next_values - values_BxL).T

  def step(last, delta_B):
    last = delta_B + gamma * lam * last
    return last, last

  _, adv_LxB = jax.lax.scan(step, jnp.zeros_like(deltas_LxB[0]), deltas_LxB, reverse=True)
  return adv_LxB.T


def compute_advantages(values_BxL, rewards_BxL, masks_BxL, gamma: float = 1.0, lam: float = 0.95,
                       whiten_rewards: bool = False):
  """trl `compute_advantages`: (masked values, whitened advantages, returns = advantages + values)."""
  values = values_BxL * masks_BxL
  rewards = rewards_BxL * masks_BxL
  if whiten_rewards:
    rewards = masked_whiten(rewards, masks_BxL, shift_mean=False)
  advantages = gae(values, rewards, gamma, lam)
  returns = advantages + values
  advantages = jax.lax.stop_gradient(masked_whiten(advantages, masks_BxL))
  return values, advantages, returns


# ---------------------------------------------------------------------------- losses and KL control

def ppo_loss(old_logprobs, values, logprobs, vpreds, entropy, masks, advantages, returns,
             cfg: PPOConfig) -> tuple[jax.Array, dict]:
  """trl `loss`: (pg_loss + vf_coef·vf_loss, stats named as trl's `ppo/...` keys). All arrays `[b, L]`."""
  vpred_clipped = jnp.clip(vpreds, values - cfg.cliprange_value, values + cfg.cliprange_value)
  vf_losses1 = (vpreds - returns) ** 2
  vf_losses2 = (vpred_clipped - returns) ** 2
  vf_loss = 0.5 * masked_mean(jnp.maximum(vf_losses1, vf_losses2), masks)
  vf_clipfrac = masked_mean((vf_losses2 > vf_losses1).astype(jnp.float32), masks)

  ratio = jnp.exp(logprobs - old_logprobs)
  pg_losses = -advantages * ratio
  pg_losses2 = -advantages * jnp.clip(ratio, 1.0 - cfg.cliprange, 1.0 + cfg.cliprange)
  pg_loss = masked_mean(jnp.maximum(pg_losses, pg_losses2), masks)
  pg_clipfrac = masked_mean((pg_losses2 > pg_losses).astype(jnp.float32), masks)

  skip = masked_mean(jax.lax.stop_gradient(ratio), masks) > cfg.ratio_threshold
  keep = 1.0 - skip.astype(jnp.float32)
  pg_loss, vf_loss = pg_loss * keep, vf_loss * keep
  loss = pg_loss + cfg.vf_coef * vf_loss

  sg = jax.lax.stop_gradient
  stats = {
      "ppo/loss/policy": pg_loss, "ppo/loss/value": vf_loss, "ppo/loss/total": loss,
      "ppo/policy/entropy": masked_mean(entropy, masks),
      "ppo/policy/approxkl": 0.5 * masked_mean((logprobs - old_logprobs) ** 2, masks),
      "ppo/policy/policykl": masked_mean(old_logprobs - logprobs, masks),
      "ppo/policy/clipfrac": pg_clipfrac,
      "ppo/policy/advantages_mean": masked_mean(advantages, masks),
      "ppo/returns/mean": masked_mean(returns, masks), "ppo/returns/var": masked_var(returns, masks),
      "ppo/val/vpred": masked_mean(vpreds, masks),
      "ppo/val/error": masked_mean((vpreds - returns) ** 2, masks),
      "ppo/val/clipfrac": vf_clipfrac,
      "ppo/val/mean": masked_mean(values, masks), "ppo/val/var": masked_var(values, masks),
  }
  return loss, jax.tree.map(sg, stats)


def kl_coef_update(kl_coef: jax.Array, current_kl: jax.Array, n_steps: int, cfg: PPOConfig) -> jax.Array:
  """trl `AdaptiveKLController.update` (value *= 1 + clip(kl/target - 1, ±0.2)·n/horizon); fixed: unchanged."""
  if not cfg.adap_kl_ctrl:
    return kl_coef
  error = jnp.clip(current_kl / cfg.target - 1.0, -0.2, 0.2)
  return kl_coef * (1.0 + error * n_steps / cfg.horizon)


# ---------------------------------------------------------------------------- state and jitted steps

def optimizer_settings(cfg: PPOConfig) -> ml_collections.ConfigDict:
  """trl 0.8.6's optimizer as `step.make_optimizer` settings: torch Adam(lr) (betas 0.9/0.999, eps 1e-8, no
  weight decay, a constant learning rate), gradient clipping only if `max_grad_norm` is set."""
  return ml_collections.ConfigDict(dict(lr=cfg.learning_rate, schedule="constant", warmup_steps=0, b1=0.9,
                                        b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=cfg.max_grad_norm or 0.0))


def make_optimizer(cfg: PPOConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(tx, lr schedule) of `optimizer_settings` (llamalogue/step.py's one optimizer)."""
  return step_lib.make_optimizer(optimizer_settings(cfg), 1)


def init_state(policy_params: dict, value_head_params: dict, tx: optax.GradientTransformation,
               cfg: PPOConfig) -> dict:
  """`{'params': {'policy', 'value_head'}, 'opt_state', 'step', 'kl_coef'}` (`step.init_state`)."""
  return step_lib.init_state({"policy": policy_params, "value_head": value_head_params}, tx,
                             kl_coef=jnp.asarray(cfg.init_kl_coef, jnp.float32))


def score_rollout(graphdef: nnx.GraphDef, cfg: PPOConfig, params: dict, ref_params: dict,
                  tokens_BxL: jax.Array, masks_BxL: jax.Array) -> dict:
  """Old log-probs, reference log-probs, values (eval mode) and KL penalty, token-aligned, zero off the mask."""
  model, hidden, stats = _policy_forward(graphdef, params["policy"], tokens_BxL)
  ref_model, ref_hidden, ref_stats = _policy_forward(graphdef, ref_params, tokens_BxL)
  logprobs, ref_logprobs = stats["logprobs"], ref_stats["logprobs"]
  if cfg.kl_penalty == "full":  # trl: F.kl_div(ref_logp, logp, log_target=True).sum(-1) = KL(policy || reference)
    kls = ops.kl_divergence(hidden, model.head_kernel(), ref_hidden, ref_model.head_kernel())
  else:
    kls = kl_penalty(logprobs, ref_logprobs, cfg.kl_penalty)
  values = value_head(params["value_head"], hidden)
  masks = masks_BxL.astype(jnp.float32)
  return {k: _align(v) * masks for k, v in
          (("logprobs", logprobs), ("ref_logprobs", ref_logprobs), ("values", values), ("kls", kls))}


def minibatch_order(rng: jax.Array, batch_size: int, mini_batch_size: int, epochs: int) -> jax.Array:
  """`[epochs · batch/mini, mini]` row indices: one permutation per epoch (trl's `np.random.permutation`)."""
  perms_ExB = jax.vmap(lambda k: jax.random.permutation(k, batch_size))(jax.random.split(rng, epochs))
  return perms_ExB.reshape(-1, mini_batch_size)


def ppo_update(graphdef: nnx.GraphDef, cfg: PPOConfig, tx: optax.GradientTransformation, state: dict,
               rollout: dict, rng: jax.Array) -> tuple[dict, dict]:
  """One trl `PPOTrainer.step` after the forward passes: (new state, scalar stats).

  `rollout`: `tokens` int `[B, L]`, `masks` `[B, L]`, `scores` `[B]`, and `score_rollout`'s
  `logprobs`, `ref_logprobs`, `values`, `kls` `[B, L]`. A non-finite loss or gradient anywhere
  returns the state unchanged with `finite=0`.
  """
  masks = rollout["masks"].astype(jnp.float32)
  batch_size = masks.shape[0]
  if batch_size != cfg.batch_size:
    raise ConfigError(f"config.ppo.batch_size: {cfg.batch_size}, but the rollout holds {batch_size} rows")
  scores = rollout["scores"].astype(jnp.float32)
  kl_coef = state["kl_coef"]
  rewards, non_score = compute_rewards(scores, rollout["kls"], masks, kl_coef)
  values, advantages, returns = compute_advantages(rollout["values"], rewards, masks, cfg.gamma, cfg.lam,
                                                   cfg.whiten_rewards)
  data = {"tokens": rollout["tokens"], "masks": masks, "logprobs": rollout["logprobs"], "values": values,
          "advantages": advantages, "returns": returns}
  order_rng, dropout_rng = jax.random.split(rng)
  order = minibatch_order(order_rng, batch_size, cfg.mini_batch_size, cfg.ppo_epochs)
  dropout_keys = jax.random.split(dropout_rng, order.shape[0])

  def loss_fn(params, mb, key):
    logprobs, vpreds, entropy = policy_outputs(graphdef, params, mb["tokens"], key, cfg.value_dropout)
    return ppo_loss(mb["logprobs"], mb["values"], logprobs, vpreds, entropy, mb["masks"], mb["advantages"],
                    mb["returns"], cfg)

  def train_minibatch(carry, xs):
    params, opt_state = carry
    idx, key = xs
    mb = jax.tree.map(lambda x: x[idx], data)
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, mb, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    finite = jnp.isfinite(loss) & jnp.isfinite(step_lib.global_norm(grads))
    return (optax.apply_updates(params, updates), opt_state), (stats, finite)

  (params, opt_state), (stats_T, finite_T) = jax.lax.scan(
      train_minibatch, (state["params"], state["opt_state"]), (order, dropout_keys))
  stats = jax.tree.map(jnp.mean, stats_T)
  stats["ppo/val/var_explained"] = 1.0 - stats["ppo/val/error"] / stats["ppo/returns/var"]

  kl_sum_B = jnp.sum(rollout["kls"] * masks, axis=1)
  mean_kl = jnp.mean(kl_sum_B)
  stats.update({
      "objective/kl": mean_kl,
      "objective/kl_coef": kl_coef,
      "objective/entropy": jnp.mean(jnp.sum(-rollout["logprobs"] * masks, axis=1)),
      "ppo/mean_non_score_reward": masked_mean(non_score, masks),
      "ppo/mean_scores": jnp.mean(scores),
      "ppo/std_scores": jnp.std(scores, ddof=1),
      "env/reward_mean": jnp.mean(scores),
      "env/reward_std": jnp.std(scores, ddof=1),
      "tokens/responses_len_mean": jnp.mean(jnp.sum(masks, axis=1)),
  })
  finite = jnp.all(finite_T)
  stats["finite"] = finite
  new_state = {"params": params, "opt_state": opt_state, "step": state["step"] + 1,
               "kl_coef": kl_coef_update(kl_coef, mean_kl, batch_size, cfg).astype(jnp.float32)}
  return step_lib.if_finite(finite, lambda _: new_state, state), stats


def jit_score_rollout(graphdef: nnx.GraphDef, cfg: PPOConfig, mesh=None, params_shardings=None,
                      ref_shardings=None):
  """`score_rollout(params, ref_params, tokens_BxL, masks_BxL) -> dict`, jitted (sharded when a mesh is given)."""
  cfg.validate()
  fn = lambda params, ref_params, tokens, masks: score_rollout(graphdef, cfg, params, ref_params, tokens, masks)
  if mesh is None:
    return jax.jit(fn)
  batch = sharding_lib.batch_sharding(mesh)
  return jax.jit(fn, in_shardings=(params_shardings, ref_shardings, batch, batch), out_shardings=batch)


def jit_ppo_update(graphdef: nnx.GraphDef, cfg: PPOConfig, tx: optax.GradientTransformation, mesh=None,
                   state_shardings=None):
  """`ppo_update(state, rollout, rng) -> (state, stats)`, jitted with the state donated."""
  cfg.validate()
  fn = lambda state, rollout, rng: ppo_update(graphdef, cfg, tx, state, rollout, rng)
  if mesh is None:
    return jax.jit(fn, donate_argnums=(0,))
  return jax.jit(fn, in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh),
                                   sharding_lib.replicated(mesh)),
                 out_shardings=(state_shardings, sharding_lib.replicated(mesh)), donate_argnums=(0,))
