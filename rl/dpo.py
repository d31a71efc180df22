"""Direct Preference Optimization (Rafailov et al. 2023): the pure loss.

`dpo_loss` is a pure function of summed (or, for IPO, length-averaged) log-probabilities
of the chosen and rejected replies under the policy and the frozen reference model. It
follows trl 0.19.1's `DPOTrainer.dpo_loss` (the version the study used): the same loss
types, conservative DPO through `label_smoothing` inside the sigmoid loss, and the same
metric names.
"""

import jax
import jax.numpy as jnp

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
    raise ValueError(f"loss_type {loss_type!r} is not one of {LOSS_TYPES}")
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
