"""Per-task results of an unfinished evaluation: a stopped evaluation (SIGTERM, a crash) resumes at the
task it was in.

`evaluate_checkpoint` (evaluation/run.py) keeps each finished task in OUT/partial/<task>.json, written
atomically, with the key it was computed under: the model (`init_from` and the newest modification
time of its files, so a retrained model is scored again) and the evaluation settings. A rerun with the
same key reuses them; the folder is removed once results.json is written.
"""

import json
import os
import pathlib
import shutil

from llamalogue.paths import atomic_write

PARTIAL = "partial"


def model_stamp(init_from: str) -> dict:
  """What identifies the model's files: the newest mtime and the file count under its checkpoints (or
  its directory); `hf:` ids are their own stamp."""
  if init_from.startswith("hf:"):
    return {"id": init_from}
  path = pathlib.Path(init_from).expanduser()
  root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
  if root.is_file():
    st = root.stat()
    return {"files": 1, "mtime_ns": st.st_mtime_ns}
  newest, count = 0, 0
  for folder, dirs, files in os.walk(root):
    dirs[:] = [d for d in dirs if d != "eval"]  # evaluation outputs written inside the model's folder
    for f in files:
      try:
        newest, count = max(newest, os.stat(os.path.join(folder, f)).st_mtime_ns), count + 1
      except OSError:
        continue
  return {"files": count, "mtime_ns": newest}


class TaskResults:
  """The finished tasks of one model's evaluation in `out_dir`, under one key."""

  def __init__(self, out_dir: pathlib.Path, init_from: str, settings: dict):
    self.dir = pathlib.Path(out_dir) / PARTIAL
    self.key = json.loads(json.dumps({"init_from": str(init_from), "settings": settings,
                                      "model": model_stamp(str(init_from))}))

  def _path(self, name: str) -> pathlib.Path:
    return self.dir / f"{name}.json"

  def get(self, name: str) -> tuple[dict, list] | None:
    """(result, predictions) of task `name` from an unfinished evaluation with the same key, else None."""
    try:
      saved = json.loads(self._path(name).read_text())
    except (OSError, ValueError):
      return None
    if saved.get("key") != self.key:
      return None
    print(f"evaluate: {self.dir.parent.name}: {name} reused from an unfinished evaluation ({self._path(name)})")
    return saved["result"], saved["predictions"]

  def put(self, name: str, result: dict, predictions: list) -> tuple[dict, list]:
    atomic_write(self._path(name), json.dumps({"key": self.key, "result": result, "predictions": predictions}))
    return result, predictions

  def count(self) -> int:
    return len(list(self.dir.glob("*.json"))) if self.dir.is_dir() else 0

  def clear(self) -> None:
    shutil.rmtree(self.dir, ignore_errors=True)
