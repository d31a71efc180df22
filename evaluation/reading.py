"""The BabyLM 2025 reading task: word surprisal as a predictor of reading times and ERPs.

Reproduces `evaluation_pipeline/reading/run.py` of the BabyLM 2025 pipeline:
* surprisal of `word` after the context `item` (`get_p2`): the word is tokenized on
  its own *without* a leading space (as the pipeline does); its first token is
  scored after `item`, each later token after `item` + the decoded earlier tokens,
  re-tokenized; surprisal = -sum log p (nats). The same for `prev_word` after
  `prev_item` where given (spill-over).
* OLS per dependent variable: baseline = frequency, length, context length and
  their pairwise interactions; model = baseline + surprisal. Score = increase in
  R^2 relative to what the baseline leaves unexplained, in %: "eye tracking" is the
  mean over the four RT measures; "self-paced reading" uses the spill-over models.
The CSV is read with pandas as the pipeline does (an empty `item`, the word
"None" lost to NaN parsing, becomes "None" again).
"""

import math

import numpy as np

from llamalogue.errors import DataError
from evaluation import tasks as tasks_lib

VARIABLES = ("RTfirstfix", "RTfirstpass", "RTgopast", "RTrightbound", "self_paced_reading_time",
             "ELAN", "LAN", "N400", "P600", "EPNP", "PNP")
BASE = ("Subtlex_log10", "length", "context_length")
SPILL = ("Subtlex_log10", "length", "context_length", "prev_length", "prev_pred")
REL_PATH = "eval/babylm_2025/reading/reading_data.csv"


def load_frame(max_rows: int = 0):
  """The reading CSV as the pipeline reads it."""
  import pandas as pd
  path = tasks_lib.data_file(REL_PATH, "babylm")
  try:
    df = pd.read_csv(path, dtype={"item": str})
  except Exception as e:
    raise DataError(f"{path}: cannot parse CSV ({type(e).__name__}: {e})") from None
  missing = [c for c in ("item", "word", "prev_item", "prev_word", *BASE, "prev_length", *VARIABLES)
             if c not in df.columns]
  if missing:
    raise DataError(f"{path}: missing columns {missing}")
  df["item"] = df["item"].fillna("None")
  bad = df["word"].isna()
  if bad.any():
    raise DataError(f"{path}:{int(np.argmax(bad.to_numpy())) + 2}: empty 'word'")
  if max_rows:
    df = df.iloc[:max_rows].copy()
  return df, str(path)


def p2_requests(tokenizer, context: str, word: str) -> list[tuple[str, int]]:
  """The (context, next token id) steps whose log-probs sum to the pipeline's get_p2."""
  target = tokenizer(word, add_special_tokens=False)["input_ids"]
  if not target:
    raise DataError(f"reading: word {word!r} encodes to no tokens")
  steps = [(context, target[0])]
  sentence = context + tokenizer.decode(target[0])
  for token in target[1:]:
    piece = tokenizer.decode(token)
    steps.append((sentence, tokenizer(piece, add_special_tokens=False)["input_ids"][0]))
    sentence += piece
  return steps


def surprisals(scorer, df, progress=None) -> tuple[np.ndarray, np.ndarray]:
  """`pred` and `prev_pred` (nats) for every row; prev is NaN where the row has no previous item."""
  requests, owner = [], []
  for i, (item, word, prev_item, prev_word) in enumerate(
      zip(df["item"], df["word"], df["prev_item"], df["prev_word"])):
    for step in p2_requests(scorer.tokenizer, item, str(word)):
      requests.append(step)
      owner.append((i, 0))
    if isinstance(prev_item, str):
      for step in p2_requests(scorer.tokenizer, prev_item, str(prev_word)):
        requests.append(step)
        owner.append((i, 1))
  logp = scorer.next_token_logprobs([c for c, _ in requests], [t for _, t in requests], progress)
  sums = np.zeros((len(df), 2))
  for (i, j), lp in zip(owner, logp):
    sums[i, j] += lp
  pred, prev = -sums[:, 0], -sums[:, 1]
  prev[[not isinstance(x, str) for x in df["prev_item"]]] = np.nan
  return pred, prev


def design(df, columns: tuple[str, ...], extra: tuple[str, ...] = ()) -> np.ndarray:
  """Intercept, main effects, all pairwise interactions of `columns`, then `extra` columns."""
  cols = [np.ones(len(df))] + [df[c].to_numpy(float) for c in columns]
  for a in range(len(columns)):
    for b in range(a + 1, len(columns)):
      cols.append(df[columns[a]].to_numpy(float) * df[columns[b]].to_numpy(float))
  cols += [df[c].to_numpy(float) for c in extra]
  return np.stack(cols, axis=1)


def ols(y: np.ndarray, x: np.ndarray) -> dict:
  """Least squares with statsmodels' R^2 (centered) and AIC; coefficient, t and p of the last column."""
  from scipy import stats  # scipy: statistics of one task
  beta, _, rank, _ = np.linalg.lstsq(x, y, rcond=None)
  resid = y - x @ beta
  n, ssr = len(y), float(resid @ resid)
  tss = float(((y - y.mean()) ** 2).sum())
  llf = -n / 2 * (math.log(2 * math.pi) + math.log(max(ssr, 1e-300) / n) + 1)
  dof = n - rank
  if dof <= 0 or ssr <= 0:              # too few rows for this model (a capped quick run)
    return {"r2": float("nan"), "aic": float("nan"), "coef": float(beta[-1]), "t": float("nan"),
            "p": float("nan"), "n": n}
  cov = ssr / dof * np.linalg.pinv(x.T @ x)
  t = beta[-1] / math.sqrt(cov[-1, -1])
  return {"r2": 1 - ssr / tss, "aic": -2 * llf + 2 * rank, "coef": float(beta[-1]), "t": float(t),
          "p": float(2 * stats.t.sf(abs(t), dof)), "n": n}


def regressions(df, spillover: bool) -> list[dict]:
  """Per dependent variable: baseline vs. baseline + surprisal."""
  predictors = SPILL if spillover else BASE
  out = []
  for dv in VARIABLES:
    base_df = df[[dv, *predictors]].dropna()
    full_df = df[["pred", dv, *predictors]].dropna()
    base = ols(base_df[dv].to_numpy(float), design(base_df, predictors))
    full = ols(full_df[dv].to_numpy(float), design(full_df, predictors, ("pred",)))
    out.append({"variable": dv, "coefficient": full["coef"], "t": full["t"], "p_value": full["p"],
                "r2": full["r2"], "delta_r2": full["r2"] - base["r2"], "aic": full["aic"],
                "delta_aic": full["aic"] - base["aic"], "r2_baseline": base["r2"], "n": full["n"]})
  return out


def relative_gain(row: dict) -> float:
  """Share of the baseline's unexplained variance that surprisal explains, in %."""
  return row["delta_r2"] / (1 - row["r2_baseline"]) * 100


MIN_ROWS = 200  # a capped run still needs enough rows for 17-coefficient regressions


def evaluate(scorer, max_rows: int = 0, progress=None) -> dict:
  """Runs the reading task; returns the two headline scores and every regression.

  `max_rows` caps the rows for quick runs (at least MIN_ROWS; 0 = all).
  """
  df, path = load_frame(max(max_rows, MIN_ROWS) if max_rows else 0)
  pred, prev = surprisals(scorer, df, progress)
  df = df.assign(pred=pred, prev_pred=prev)
  plain, spill = regressions(df, False), regressions(df, True)
  eye = float(np.mean([relative_gain(r) for r in plain if r["variable"].startswith("RT")]))
  spr = [relative_gain(r) for r in spill if r["variable"] == "self_paced_reading_time"][0]
  corr = {v: float(df[["pred", v]].corr().iloc[0, 1]) for v in VARIABLES}
  return {"name": "reading", "benchmark": "Reading", "kind": "regression", "source": path, "rows": len(df),
          "subtasks": {"eye_tracking": eye, "self_paced_reading": float(spr)},
          "score": float(np.mean([eye, spr])), "metric": "R^2 gain over baseline (%)",
          "regressions": plain, "regressions_spillover": spill, "correlations": corr,
          "predictions": [{"uid": f"reading/{i}", "surprisal": float(p),
                           "prev_surprisal": None if math.isnan(q) else float(q)}
                          for i, (p, q) in enumerate(zip(pred, prev))],
          "notes": "BabyLM 2025 reading/run.py: word scored without a leading space, OLS in NumPy"}
