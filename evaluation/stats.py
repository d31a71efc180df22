"""Uncertainty of evaluation results: intervals of accuracies and paired tests of effects.

Pure numpy/scipy (no jax), reproducible by seed. Proportions are on [0, 1]; the callers
turn them into percentage points.

* A proportion k/n (one benchmark without sub-tasks, or one sub-task): the Wilson score
  interval (`wilson`).
* The unweighted mean of sub-task accuracies (BLiMP, Zorro, EWoK, ...: what the BabyLM
  pipeline and the study report): a stratified bootstrap (`stratified_bootstrap`): items
  are resampled with replacement within each sub-task, the sub-task means averaged, the
  percentile interval of REPS replicates taken. Resampling n items of a stratum whose
  per-item values take m distinct values is the same as drawing the m counts from a
  multinomial(n, observed shares), which is how it is computed: exact, and fast for
  60,000 items. A sub-task of fewer than MIN_STRATUM items (a task cut down by
  `max_items_per_task`) is too small to resample within (one item: no variance at all);
  then all items are resampled as one set, each weighted 1 / (sub-tasks x items of its
  sub-task) so that the statistic is still the unweighted mean over sub-tasks.
* An effect, model − base on the same items: the exact McNemar test (`mcnemar_exact`, a
  two-sided binomial test of the discordant pairs at 1/2) and a paired bootstrap
  (`paired_effect`): per-item differences resampled within sub-tasks (the same rule for
  small sub-tasks), so the interval is that of the difference of the sub-task means.
* Several seeds of one model (arrays S x n): the per-item value is the mean over seeds;
  the bootstrap resamples items with all their seeds together (seeds share items, so
  (seed, item) pairs are not independent); McNemar counts every (seed, item) pair
  (pooled), which treats them as independent: read its p-value as optimistic when the
  seeds agree item by item.
* A Spearman correlation (wug): a bootstrap over items (`bootstrap_spearman`).
* Two results without shared items (ours against a published number): MOVER / Newcombe's
  square-and-add of the two intervals (`mover_difference`), which assumes independent
  samples and is conservative for results on the same items.
"""

import math

import numpy as np
from scipy import stats as sps

CONFIDENCE = 0.95
REPS = 2000
SEED = 0
MIN_STRATUM = 10   # fewer items in a sub-task: resample all items as one weighted set

WILSON = "Wilson score interval"
_WITHIN = f"{REPS:,} resamples of items within each sub-task, seed {SEED}"
_ACROSS = (f"{REPS:,} resamples of all items as one set, seed {SEED}, each weighted 1 / (sub-tasks × items of its "
           f"sub-task): a sub-task has fewer than {MIN_STRATUM} items")
STRATIFIED = f"stratified bootstrap ({_WITHIN}), percentile interval of the unweighted mean over sub-tasks"
UNSTRATIFIED = f"bootstrap ({_ACROSS}), percentile interval of the unweighted mean over sub-tasks"
SEEDS_POOLED = (f"bootstrap over items ({_WITHIN}; each item keeps all its seeds), percentile interval of the mean "
                "over seeds and sub-tasks")
SEEDS_UNSTRATIFIED = (f"bootstrap over items ({_ACROSS}; each item keeps all its seeds), percentile interval of "
                      "the mean over seeds and sub-tasks")
_MCNEMAR = "exact McNemar test (two-sided binomial test of the discordant pairs)"
PAIRED = f"paired bootstrap ({_WITHIN}) of the difference of sub-task means; {_MCNEMAR}"
PAIRED_UNSTRATIFIED = f"paired bootstrap ({_ACROSS}) of the difference of sub-task means; {_MCNEMAR}"
SPEARMAN = f"bootstrap over items ({REPS:,} resamples, seed {SEED}), percentile interval of Spearman rho"
MOVER = "MOVER (Newcombe's square-and-add of the two intervals; independent samples, conservative)"


def _z(confidence: float) -> float:
  return float(sps.norm.ppf(0.5 + confidence / 2))


def wilson(k: float, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
  """Wilson score interval of the proportion k/n (no continuity correction); (nan, nan) if n = 0."""
  if n <= 0:
    return float("nan"), float("nan")
  z = _z(confidence)
  p = k / n
  denom = 1 + z * z / n
  center = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  lo = 0.0 if k <= 0 else max(0.0, center - half)
  hi = 1.0 if k >= n else min(1.0, center + half)
  return lo, hi


def mover_difference(p1: float, ci1, p2: float, ci2) -> tuple[float, float]:
  """Interval of p1 − p2 from the two estimates' own intervals (MOVER; Newcombe 1998 method 10
  when both are Wilson intervals). Assumes independent samples."""
  (l1, u1), (l2, u2) = ci1, ci2
  d = p1 - p2
  return d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


def mcnemar_exact(model_only: int, base_only: int) -> float:
  """Two-sided exact McNemar p-value: a binomial test of `model_only` successes in the discordant
  pairs (model right and base wrong, or the reverse) at probability 1/2."""
  n = model_only + base_only
  if n == 0:
    return 1.0
  return float(min(1.0, 2.0 * sps.binom.cdf(min(model_only, base_only), n, 0.5)))


def percentile(replicates: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
  """The central `confidence` percentile interval of bootstrap replicates (nan replicates ignored)."""
  a = (1 - confidence) / 2
  reps = np.asarray(replicates, dtype=np.float64)
  reps = reps[~np.isnan(reps)]
  if not reps.size:
    return float("nan"), float("nan")
  lo, hi = np.quantile(reps, [a, 1 - a])
  return float(lo), float(hi)


def stratified_bootstrap(values_by_stratum: dict[str, np.ndarray], reps: int = REPS,
                         seed: int = SEED) -> np.ndarray:
  """Replicates (reps,) of the unweighted mean over strata of each stratum's mean, items resampled
  with replacement within their stratum. Strata are taken in sorted order (reproducible by seed)."""
  rng = np.random.default_rng(seed)
  total = np.zeros(reps)
  strata = [np.asarray(values_by_stratum[k], dtype=np.float64).ravel() for k in sorted(values_by_stratum)]
  strata = [x for x in strata if x.size]
  for x in strata:
    vals, counts = np.unique(x, return_counts=True)
    if len(vals) == 1:
      total += vals[0]
      continue
    draws_RxM = rng.multinomial(x.size, counts / x.size, size=reps)
    total += draws_RxM @ vals / x.size
  return total / max(1, len(strata))


def resampling_strata(values_by_subtask: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
  """The strata to resample within, and whether they are the sub-tasks. If a sub-task has fewer than
  MIN_STRATUM items, one stratum of all items, item i of sub-task k scaled by N / (K n_k): the mean over all
  N items is then the unweighted mean over the K sub-tasks, in the data and in every resample's expectation."""
  arrays = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in values_by_subtask.items()}
  arrays = {k: v for k, v in arrays.items() if v.size}
  if len(arrays) <= 1 or min(v.size for v in arrays.values()) >= MIN_STRATUM:
    return arrays, True
  n_all = sum(v.size for v in arrays.values())
  scaled = [v * n_all / (len(arrays) * v.size) for _, v in sorted(arrays.items())]
  return {"all items": np.concatenate(scaled)}, False


def _as_seeds(a) -> np.ndarray:
  """Per-item correctness as a (seeds, items) array of 0/1."""
  a = np.asarray(a, dtype=np.float64)
  return a[None, :] if a.ndim == 1 else a


def accuracy(correct_by_subtask: dict[str, np.ndarray], confidence: float = CONFIDENCE,
             reps: int = REPS, seed: int = SEED) -> dict:
  """Accuracy (unweighted mean over sub-tasks) with its item count and 95% interval.

  `correct_by_subtask`: sub-task -> per-item correctness, (items,) or (seeds, items). One sub-task
  and one seed: Wilson; otherwise the stratified bootstrap (seeds: items keep all their seeds).
  """
  arrays = {k: _as_seeds(v) for k, v in correct_by_subtask.items() if np.size(v)}
  if not arrays:
    return {"score": None, "items": 0, "interval": None, "interval_method": None}
  seeds = {a.shape[0] for a in arrays.values()}
  if len(seeds) != 1:
    raise ValueError(f"every sub-task needs the same number of seeds, got {sorted(seeds)}")
  (n_seeds,) = seeds
  means = {k: float(a.mean()) for k, a in arrays.items()}
  score = float(np.mean(list(means.values())))
  items = int(sum(a.shape[1] for a in arrays.values()))
  out = {"score": score, "items": items, "seeds": n_seeds}
  if len(arrays) == 1 and n_seeds == 1:
    (a,) = arrays.values()
    k = int(a.sum())
    out.update(correct=k, interval=list(wilson(k, a.shape[1], confidence)), interval_method=WILSON)
    return out
  if n_seeds == 1:
    out["correct"] = int(sum(a.sum() for a in arrays.values()))
  strata, within = resampling_strata({k: a.mean(0) for k, a in arrays.items()})
  boot = stratified_bootstrap(strata, reps, seed)
  method = {(True, True): STRATIFIED, (True, False): UNSTRATIFIED, (False, True): SEEDS_POOLED,
            (False, False): SEEDS_UNSTRATIFIED}[(n_seeds == 1, within)]
  out.update(interval=list(percentile(boot, confidence)), interval_method=method)
  return out


def paired_effect(model_by_subtask: dict[str, np.ndarray], base_by_subtask: dict[str, np.ndarray],
                  confidence: float = CONFIDENCE, reps: int = REPS, seed: int = SEED) -> dict:
  """Effect model − base on the same items: difference of the sub-task-averaged accuracies, its
  paired-bootstrap interval, and the exact McNemar test on per-item correctness.

  `model_by_subtask[k]`: (items,) or (seeds, items) correctness, items in the order of
  `base_by_subtask[k]` (items,). With seeds, the difference is the mean over seeds, the bootstrap
  resamples items with all their seeds, and McNemar pools every (seed, item) pair.
  """
  keys = sorted(k for k in base_by_subtask if np.size(base_by_subtask[k]))
  if set(keys) != {k for k in model_by_subtask if np.size(model_by_subtask[k])}:
    raise ValueError("model and base must have the same sub-tasks")
  diffs, model_only, base_only, n_seeds, items = {}, 0, 0, None, 0
  for k in keys:
    m_SxN = _as_seeds(model_by_subtask[k])
    b_N = np.asarray(base_by_subtask[k], dtype=np.float64).ravel()
    if m_SxN.shape[1] != b_N.size:
      raise ValueError(f"sub-task {k}: {m_SxN.shape[1]} model items against {b_N.size} base items")
    if n_seeds not in (None, m_SxN.shape[0]):
      raise ValueError("every sub-task needs the same number of seeds")
    n_seeds = m_SxN.shape[0]
    diffs[k] = m_SxN.mean(0) - b_N
    model_only += int(((m_SxN == 1) & (b_N == 0)).sum())
    base_only += int(((m_SxN == 0) & (b_N == 1)).sum())
    items += b_N.size
  if not keys:
    return {"difference": None, "interval": None, "p_mcnemar": None, "items": 0}
  difference = float(np.mean([d.mean() for d in diffs.values()]))
  strata, within = resampling_strata(diffs)
  lo, hi = percentile(stratified_bootstrap(strata, reps, seed), confidence)
  return {"difference": difference, "interval": [lo, hi], "p_mcnemar": mcnemar_exact(model_only, base_only),
          "model_only": model_only, "base_only": base_only, "items": items, "seeds": n_seeds,
          "excludes_zero": bool(lo > 0 or hi < 0), "method": PAIRED if within else PAIRED_UNSTRATIFIED}


def bootstrap_spearman(x: np.ndarray, y: np.ndarray, confidence: float = CONFIDENCE, reps: int = REPS,
                       seed: int = SEED) -> tuple[float, float]:
  """Percentile interval of Spearman's rho of (x, y), items resampled with replacement."""
  x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
  if x.size < 3:
    return float("nan"), float("nan")
  idx_RxN = np.random.default_rng(seed).integers(0, x.size, size=(reps, x.size))
  rx, ry = sps.rankdata(x[idx_RxN], axis=1), sps.rankdata(y[idx_RxN], axis=1)
  rx -= rx.mean(1, keepdims=True)
  ry -= ry.mean(1, keepdims=True)
  denom = np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))
  with np.errstate(invalid="ignore", divide="ignore"):
    rho = np.where(denom > 0, (rx * ry).sum(1) / np.where(denom > 0, denom, 1), np.nan)
  return percentile(rho, confidence)
