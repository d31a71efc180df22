"""rl.dpo.dpo_loss: ln 2 when policy = reference, hand-computed values, and equality with trl 0.19.1's
own `DPOTrainer.dpo_loss` (called unbound on a minimal trainer-like object) on the same log-probs."""

import math
import types

import jax
import numpy as np
import pytest
import torch

from llamalogue.errors import ConfigError
from rl.dpo import dpo_loss

# One pair, by hand: h = (pc - pr) - (rc - rr) = (-10 + 12) - (-11 + 11.5) = 1.5; beta = 0.1, beta*h = 0.15.
PC, PR, RC, RR = -10.0, -12.0, -11.0, -11.5


def one(loss_type: str, beta: float = 0.1, label_smoothing: float = 0.0):
  losses, metrics = dpo_loss(np.array([PC]), np.array([PR]), np.array([RC]), np.array([RR]), beta=beta,
                             loss_type=loss_type, label_smoothing=label_smoothing)
  return float(losses[0]), {k: float(v[0]) for k, v in metrics.items()}


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.3])
def test_sigmoid_is_ln2_when_policy_equals_reference(label_smoothing):
  rng = np.random.default_rng(0)
  chosen, rejected = -rng.random(8) * 40, -rng.random(8) * 40
  losses, metrics = dpo_loss(chosen, rejected, chosen, rejected, beta=0.1, label_smoothing=label_smoothing)
  np.testing.assert_allclose(np.asarray(losses), math.log(2), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(metrics["rewards/margins"]), 0.0)
  np.testing.assert_array_equal(np.asarray(metrics["rewards/accuracies"]), 0.0)   # a tie is not a win


def test_hand_computed_values():
  # sigmoid: -log sigmoid(0.15) = log(1 + e^-0.15) = 0.62096...
  loss, m = one("sigmoid")
  assert loss == pytest.approx(0.6209570, abs=1e-6)
  # conservative DPO, eps = 0.1: 0.9 * log(1 + e^-0.15) + 0.1 * log(1 + e^0.15) = 0.63596...
  loss, _ = one("sigmoid", label_smoothing=0.1)
  assert loss == pytest.approx(0.9 * 0.6209570 + 0.1 * 0.7709570, abs=1e-6)
  assert loss == pytest.approx(0.6359570, abs=1e-6)
  # ipo: (h - 1 / (2 beta))^2 = (1.5 - 5)^2 = 12.25
  assert one("ipo")[0] == pytest.approx(12.25, abs=1e-5)
  # hinge: max(0, 1 - beta h) = 0.85; with beta = 1: max(0, 1 - 1.5) = 0
  assert one("hinge")[0] == pytest.approx(0.85, abs=1e-6)
  assert one("hinge", beta=1.0)[0] == 0.0
  # rewards: beta (policy - reference) per reply
  assert m["rewards/chosen"] == pytest.approx(0.1, abs=1e-6)
  assert m["rewards/rejected"] == pytest.approx(-0.05, abs=1e-6)
  assert m["rewards/margins"] == pytest.approx(0.15, abs=1e-6)
  assert m["rewards/accuracies"] == 1.0 and m["logps/chosen"] == PC and m["logps/rejected"] == PR


def trl_dpo_loss(loss_type, beta, label_smoothing, *logps):
  """trl 0.19.1's `DPOTrainer.dpo_loss` itself, on an object with the attributes it reads."""
  from benchmarks.dpo_throughput import import_trl
  trainer_cls = import_trl().DPOTrainer
  fake = types.SimpleNamespace(accelerator=types.SimpleNamespace(device=torch.device("cpu")), reference_free=False,
                               f_divergence_type="reverse_kl", f_divergence_params=None, beta=beta,
                               loss_type=loss_type, label_smoothing=label_smoothing)
  losses, chosen_rewards, rejected_rewards = trainer_cls.dpo_loss(fake, *(torch.tensor(x) for x in logps))
  return losses.numpy(), chosen_rewards.numpy(), rejected_rewards.numpy()


@pytest.mark.parametrize("loss_type,beta,label_smoothing", [
    ("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.2), ("ipo", 0.1, 0.0), ("ipo", 0.5, 0.0),
    ("hinge", 0.1, 0.0), ("hinge", 2.0, 0.0)])
def test_equals_trl_dpo_loss(loss_type, beta, label_smoothing):
  rng = np.random.default_rng(1)
  ref_c, ref_r = (-rng.random(64) * 60).astype(np.float32), (-rng.random(64) * 60).astype(np.float32)
  pol_c = (ref_c + rng.normal(0, 3, 64)).astype(np.float32)
  pol_r = (ref_r + rng.normal(0, 3, 64)).astype(np.float32)
  pol_c[:4], pol_r[:4] = ref_c[:4], ref_r[:4]               # a few pairs where policy = reference
  want, want_c, want_r = trl_dpo_loss(loss_type, beta, label_smoothing, pol_c, pol_r, ref_c, ref_r)
  if loss_type == "hinge" and beta >= 1:
    assert 0 < (want == 0).sum() < len(want)                 # both sides of the hinge are exercised
  fn = jax.jit(lambda *x: dpo_loss(*x, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing))
  losses, m = fn(pol_c, pol_r, ref_c, ref_r)
  np.testing.assert_allclose(np.asarray(losses), want, rtol=2e-6, atol=2e-6)
  np.testing.assert_allclose(np.asarray(m["rewards/chosen"]), want_c, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(m["rewards/rejected"]), want_r, rtol=1e-6, atol=1e-6)
  # trl's get_batch_loss_metrics: accuracies = chosen > rejected, margins = chosen - rejected.
  np.testing.assert_array_equal(np.asarray(m["rewards/accuracies"]), (want_c > want_r).astype(np.float32))
  np.testing.assert_allclose(np.asarray(m["rewards/margins"]), want_c - want_r, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(m["logps/chosen"]), pol_c)


def test_unknown_loss_type():
  with pytest.raises(ConfigError, match=r"config\.dpo\.loss_type: 'robust' is not one of"):
    one("robust")
