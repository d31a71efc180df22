"""evaluation/stats.py: intervals equal scipy's on known counts, the exact McNemar test is the binomial test of
the discordant pairs, the bootstraps are reproducible by seed, equal a plain resampling bootstrap and cover a
known value at about the nominal rate; the study's item counts are the ones its published numbers imply."""

import csv

import numpy as np
import pytest
from scipy.stats import binomtest, spearmanr

from evaluation import report, stats, uncertainty
from llamalogue import paths


@pytest.mark.parametrize("k,n", [(0, 1), (0, 10), (1, 10), (5, 10), (10, 10), (3, 7), (57, 100), (4853, 7548),
                                 (29_900, 46_000), (1, 4311)])
def test_wilson_equals_scipy(k, n):
  ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
  assert stats.wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)
  ci90 = binomtest(k, n).proportion_ci(confidence_level=0.9, method="wilson")
  assert stats.wilson(k, n, 0.9) == pytest.approx((ci90.low, ci90.high), abs=1e-12)


@pytest.mark.parametrize("model_only,base_only", [(0, 0), (0, 7), (3, 10), (5, 5), (12, 30), (40, 25), (1, 0)])
def test_exact_mcnemar_is_a_binomial_test_of_the_discordant_pairs(model_only, base_only):
  n = model_only + base_only
  expected = 1.0 if n == 0 else binomtest(model_only, n, 0.5).pvalue
  assert stats.mcnemar_exact(model_only, base_only) == pytest.approx(expected, rel=1e-12)
  # The same counts through paired_effect: 11 pairs both right, 6 both wrong around the discordant ones.
  base = np.array([0] * model_only + [1] * base_only + [1] * 11 + [0] * 6)
  model = np.array([1] * model_only + [0] * base_only + [1] * 11 + [0] * 6)
  e = stats.paired_effect({"a": model}, {"a": base})
  assert (e["model_only"], e["base_only"]) == (model_only, base_only)
  assert e["p_mcnemar"] == pytest.approx(expected, rel=1e-12)
  assert e["difference"] == pytest.approx((model_only - base_only) / base.size)


def test_mover_is_newcombes_method_10():
  """Newcombe (1998), Statistics in Medicine 17:873, example (a): 56/70 − 48/80, method 10: 0.0524 to 0.3339."""
  lo, hi = stats.mover_difference(56 / 70, stats.wilson(56, 70), 48 / 80, stats.wilson(48, 80))
  assert (round(lo, 4), round(hi, 4)) == (0.0524, 0.3339)


def _sample(rng, sizes_and_rates):
  return {f"s{i}": rng.random(n) < p for i, (n, p) in enumerate(sizes_and_rates)}


def test_bootstrap_is_reproducible_by_seed():
  data = _sample(np.random.default_rng(0), [(50, 0.6), (30, 0.8), (70, 0.4)])
  a, b = stats.accuracy(data, seed=3), stats.accuracy(data, seed=3)
  assert a == b and a["interval_method"] == stats.STRATIFIED
  assert stats.accuracy(data, seed=4)["interval"] != a["interval"]
  base = {k: v[::-1] for k, v in data.items()}
  assert stats.paired_effect(data, base, seed=5) == stats.paired_effect(data, base, seed=5)
  # Sub-task order does not matter: strata are taken sorted.
  assert stats.accuracy(dict(reversed(list(data.items()))), seed=3) == a


def test_multinomial_bootstrap_equals_resampling_items():
  """Resampling items within strata, done the plain way, has the same replicate distribution."""
  rng = np.random.default_rng(1)
  data = {"a": (rng.random(40) < 0.7).astype(float), "b": rng.choice([-1.0, 0.0, 1.0], 25, p=[0.2, 0.5, 0.3])}
  fast = stats.stratified_bootstrap(data, reps=20_000, seed=2)
  plain_rng = np.random.default_rng(9)
  plain = np.stack([x[plain_rng.integers(0, x.size, size=(20_000, x.size))].mean(1) for x in data.values()]).mean(0)
  assert fast.mean() == pytest.approx(plain.mean(), abs=0.003)
  assert fast.std() == pytest.approx(plain.std(), rel=0.03)
  assert np.quantile(fast, [0.025, 0.975]) == pytest.approx(np.quantile(plain, [0.025, 0.975]), abs=0.01)


def test_bootstrap_covers_a_known_proportion_at_the_nominal_rate():
  """300 samples of two sub-tasks (true accuracies 0.3 and 0.7, mean 0.5): the 95% interval covers 0.5 in
  [90%, 99%] of them (fixed seed, so this cannot flake)."""
  rng = np.random.default_rng(123)
  hits = 0
  for rep in range(300):
    iv = stats.accuracy(_sample(rng, [(60, 0.3), (40, 0.7)]), reps=1000, seed=rep)["interval"]
    hits += iv[0] <= 0.5 <= iv[1]
  assert 0.90 <= hits / 300 <= 0.99, hits


def test_paired_bootstrap_covers_a_known_difference():
  """Pairs with P(both right) 0.5, P(model only) 0.15, P(base only) 0.05: true difference 0.10."""
  rng = np.random.default_rng(7)
  hits = 0
  for rep in range(300):
    cat = rng.choice(4, size=120, p=[0.5, 0.15, 0.05, 0.3])
    model, base = np.isin(cat, (0, 1)), np.isin(cat, (0, 2))
    iv = stats.paired_effect({"a": model}, {"a": base}, reps=1000, seed=rep)["interval"]
    hits += iv[0] <= 0.10 <= iv[1]
  assert 0.90 <= hits / 300 <= 0.99, hits


def test_accuracy_one_set_is_wilson_and_seeds_pool_items():
  one = stats.accuracy({"x": np.array([1, 1, 0, 1, 0, 1, 1, 1])})
  assert one["interval_method"] == stats.WILSON and one["correct"] == 6 and one["items"] == 8
  assert one["interval"] == pytest.approx(stats.wilson(6, 8))
  subs = stats.accuracy({"a": np.ones(10), "b": np.zeros(30)})
  assert subs["score"] == 0.5 and subs["interval"] == [0.5, 0.5]  # mean of sub-tasks, not of items
  seeds = stats.accuracy({"x": np.array([[1, 1, 0, 0], [1, 0, 0, 0]])})
  assert seeds["seeds"] == 2 and seeds["score"] == 0.375 and seeds["interval_method"] == stats.SEEDS_POOLED
  e = stats.paired_effect({"x": np.array([[1, 1, 0, 0], [1, 0, 1, 0]])}, {"x": np.array([1, 0, 0, 0])})
  assert e["seeds"] == 2 and e["difference"] == pytest.approx(0.25)
  assert (e["model_only"], e["base_only"]) == (2, 0)  # every (seed, item) pair counted
  with pytest.raises(ValueError, match="4 model items against 3 base items"):
    stats.paired_effect({"x": np.ones(4)}, {"x": np.ones(3)})


def test_spearman_bootstrap_brackets_the_sample_rho():
  rng = np.random.default_rng(2)
  x = rng.random(60)
  y = x + rng.normal(0, 0.3, 60)
  lo, hi = stats.bootstrap_spearman(x, y, seed=1)
  assert lo < spearmanr(x, y)[0] < hi and (lo, hi) == stats.bootstrap_spearman(x, y, seed=1)
  result = {"name": "wug", "kind": "correlation"}
  preds = [{"task": "wug", "uid": f"wug/w/{i}", "prob_first": float(a), "ratio": float(b)} for i, (a, b) in
           enumerate(zip(x, y))]
  assert uncertainty.attach(result, preds)["interval"] == list(stats.bootstrap_spearman(x, y))  # seed 0
  assert result["interval_method"] == stats.SPEARMAN


def test_attach_gives_task_and_subtask_intervals():
  preds = [{"task": "zorro", "uid": f"zorro/{s}/{i}", "correct": ok}
           for s, oks in (("a", [1, 1, 0, 1]), ("b", [0, 0, 1])) for i, ok in enumerate(oks)]
  res = {"name": "zorro", "kind": "choice", "subtasks": {"a": {"accuracy": 0.75, "items": 4},
                                                         "b": {"accuracy": 1 / 3, "items": 3}}}
  uncertainty.attach(res, preds)
  assert res["correct"] == 4 and res["interval_method"] == stats.UNSTRATIFIED   # 4 and 3 items: too few within
  assert res["subtasks"]["b"]["interval"] == pytest.approx(stats.wilson(1, 3))
  assert res["interval"][0] < (0.75 + 1 / 3) / 2 < res["interval"][1]


def test_published_intervals_use_the_study_item_counts():
  assert report.published_interval("dialogue_word", 64.3) == pytest.approx(
      [100 * x for x in stats.wilson(round(0.643 * 7548), 7548)])
  assert report.published_interval("blimp", 56.0) is None


@pytest.mark.skipif(not (paths.data_root() / report.REFERENCE_DIR).is_dir(), reason="no study data")
def test_study_item_counts_are_what_its_published_fractions_imply():
  """Every accuracy the study released is k / n for a whole k at our n (lexical decision: n inferred so)."""
  root = paths.data_root() / report.REFERENCE_DIR
  checks = [("ppo_lexical_decision_results.csv", "Accuracy", None, 4_311), ("ppo_zorro_results.csv", "OverallAccuracy",
            None, 46_000), ("ppo_dialogue_min_pairs_llamalogue.csv", "Accuracy", "Words", 7_548),
            ("ppo_dialogue_min_pairs_llamalogue.csv", "Accuracy", "Tokens", 7_520)]
  for name, col, dataset, n in checks:
    with (root / name).open(newline="") as f:
      values = [float(r[col]) for r in csv.DictReader(f) if dataset in (None, r.get("Dataset"))]
    assert values, name
    for v in values:
      assert abs(v * n - round(v * n)) < 1e-6, (name, v, n)
  assert report.STUDY_ITEMS == {"dialogue_word": 7_548, "dialogue_token": 7_520, "zorro": 46_000,
                                "lexical_decision": 4_311}
  if (paths.data_root() / "eval" / "zorro").is_dir():   # and they are the sizes of the sets we score
    from evaluation import tasks
    for name in ("dialogue_word", "dialogue_token", "zorro"):
      assert len(tasks.load(name).items) == report.STUDY_ITEMS[name], name


def test_tiny_subtasks_are_resampled_as_one_weighted_set():
  """One item per sub-task (a task cut down to a few items) leaves nothing to resample within a sub-task; the
  bootstrap then resamples all items, weighted so that its mean is still the unweighted sub-task mean."""
  one_each = {f"s{i}": np.array([ok]) for i, ok in enumerate([1, 1, 0, 1, 0, 1])}
  acc = stats.accuracy(one_each)
  assert acc["interval_method"] == stats.UNSTRATIFIED and acc["interval"][0] < 4 / 6 < acc["interval"][1]
  uneven = {"a": np.array([1, 1, 1, 0]), "b": np.array([0, 1]), "c": np.ones(30)}
  strata, within = stats.resampling_strata(uneven)
  assert not within and strata["all items"].mean() == pytest.approx((0.75 + 0.5 + 1.0) / 3)
  assert stats.stratified_bootstrap(strata, reps=20_000).mean() == pytest.approx((0.75 + 0.5 + 1.0) / 3, abs=0.005)
  e = stats.paired_effect(one_each, {k: 1 - v for k, v in one_each.items()})
  assert e["method"] == stats.PAIRED_UNSTRATIFIED and e["interval"][0] < e["difference"] < e["interval"][1]
  big = {"a": np.ones(10), "b": np.zeros(12)}
  assert stats.resampling_strata(big)[1] and stats.accuracy(big)["interval_method"] == stats.STRATIFIED


def test_weighted_bootstrap_of_tiny_subtasks_is_not_too_narrow():
  """8 sub-tasks of 5 items (true mean 0.55): resampling across sub-tasks adds their spread, so it covers at
  least the nominal rate (measured 99%: conservative, never the zero-width interval of a 1-item stratum)."""
  rng = np.random.default_rng(5)
  ps = [0.2, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.3]
  hits = 0
  for rep in range(300):
    iv = stats.accuracy({f"s{i}": rng.random(5) < p for i, p in enumerate(ps)}, reps=1000, seed=rep)["interval"]
    hits += iv[0] <= np.mean(ps) <= iv[1]
  assert 0.90 <= hits / 300 <= 1.0, hits


def test_malformed_predictions_line_names_the_file_and_line(tmp_path):
  from llamalogue.errors import DataError
  f = tmp_path / "predictions.jsonl"
  f.write_text('{"task": "x", "uid": "x/a/0", "correct": true}\n{"task": \n')
  with pytest.raises(DataError, match=r"predictions.jsonl:2: malformed predictions line"):
    uncertainty.read_predictions(f)
  assert uncertainty.read_predictions(tmp_path / "missing.jsonl") is None
