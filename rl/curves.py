"""Training curves as PNGs, ours beside the study's logged ones (communicative_baby/reference_results).

The study logged DPO every 10 steps over 5,630 steps and PPO rewards per batch; a run of
ours may be shorter or longer, so curves are drawn against the fraction of training done.
"""

import csv
import pathlib

from llamalogue import paths

DPO_REFERENCE = {"natural": "data:communicative_baby/reference_results/dpo_real_training_metrics.csv",
                 "synthetic": "data:communicative_baby/reference_results/dpo_synthetic_training_metrics.csv"}
PPO_REFERENCE = {"bleu": "data:communicative_baby/reference_results/ppo_reward_tracking_log_blue_1_best.csv",
                 "semsim": "data:communicative_baby/reference_results/ppo_reward_tracking_log_sem_1_best.csv",
                 "llm_score": "data:communicative_baby/reference_results/ppo_reward_tracking_log_score.csv"}


def read_csv(spec: str) -> list[dict] | None:
  """Rows of a reference CSV, None when the data root does not hold it."""
  try:
    path = paths.resolve(spec, "reference curve")
  except Exception:
    return None
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _series(rows: list[dict], key: str, step_key: str = "step") -> tuple[list[float], list[float]]:
  pts = [(float(r[step_key]), float(r[key])) for r in rows if r.get(key) not in (None, "") and r.get(step_key) not in (None, "")]
  if not pts:
    return [], []
  last = max(p[0] for p in pts) or 1.0
  return [p[0] / last for p in pts], [p[1] for p in pts]


def plot_dpo(rows: list[dict], out_png: str | pathlib.Path, references: dict | None = None,
             steps_per_epoch: int = 0) -> pathlib.Path:
  """Loss and reward accuracy of our DPO run against the study's logged curves, by epoch
  (`steps_per_epoch` > 0; else by fraction of training)."""
  import matplotlib  # matplotlib: only when a figure is drawn
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  references = DPO_REFERENCE if references is None else references
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, (ours_key, ref_key, title) in zip(axes, (("train/loss", "loss", "DPO loss"),
                                                   ("rewards/accuracies", "rewards/accuracies", "reward accuracy"))):
    xs, ys = _series(rows, ours_key)
    if steps_per_epoch:
      xs = [r["step"] / steps_per_epoch for r in rows if ours_key in r]
    ax.plot(xs, ys, label="llamalogue (ours)", lw=1.8)
    for name, spec in references.items():
      ref = read_csv(spec)
      if ref:
        rx, ry = _series(ref, ref_key)
        if steps_per_epoch:
          rx = [float(r["epoch"]) for r in ref if r.get(ref_key) not in (None, "")]
        ax.plot(rx, ry, "--", lw=1.2, label=f"study, {name}")
    ax.set_xlabel("epoch" if steps_per_epoch else "fraction of training")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  out_png = pathlib.Path(out_png)
  out_png.parent.mkdir(parents=True, exist_ok=True)
  tmp = out_png.with_name(f".{out_png.name}.tmp.png")
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  tmp.replace(out_png)
  return out_png


def _ppo_reference(spec: str) -> list[float]:
  """Average rewards per batch of a study PPO log (`epoch,batch,avg_reward`, header optional)."""
  try:
    path = paths.resolve(spec, "reference curve")
  except Exception:
    return []
  out = []
  with open(path, newline="") as f:
    for row in csv.reader(f):
      try:
        out.append(float(row[-1]))
      except (ValueError, IndexError):
        continue
  return out


def plot_ppo(runs: dict[str, list[dict]], out_png: str | pathlib.Path) -> pathlib.Path:
  """Mean reward per step of our PPO run(s), each beside the study's logged reward for the same reward."""
  import matplotlib  # matplotlib: only when a figure is drawn
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), squeeze=False)
  for ax, (name, rows) in zip(axes[0], runs.items()):
    pts = [(r["step"], r["env/reward_mean"]) for r in rows if "env/reward_mean" in r]
    if pts:
      ax.plot([p[0] for p in pts], [p[1] for p in pts], label="llamalogue (ours)", lw=1.6)
    ref = _ppo_reference(PPO_REFERENCE[name]) if name in PPO_REFERENCE else []
    if ref:
      ax.plot(range(1, len(ref) + 1), ref, "--", lw=1.2, label="study (its logged batches)")
    else:
      why = ("the study released no log for this reward" if name not in PPO_REFERENCE else
             "the study's released log for this reward is empty" if read_csv(PPO_REFERENCE[name]) is not None
             else "the study's log is not in the data folder")
      ax.text(0.5, 0.02, why, transform=ax.transAxes, ha="center", fontsize=8, color="grey")
    ax.set_title(f"PPO reward: {name}")
    ax.set_xlabel("step (batch of 16)")
    ax.set_ylabel("mean reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  out_png = pathlib.Path(out_png)
  tmp = out_png.with_name(f".{out_png.name}.tmp.png")
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  tmp.replace(out_png)
  return out_png
