"""The folder name an evaluation gives a model (DIR/eval/<name>/), without importing the scorer."""

import pathlib
import re

CONTAINERS = ("checkpoints", "milestones", "latest")
_SEED_DIR = re.compile(r"^seed_\d+$")


def run_root(path: pathlib.Path) -> pathlib.Path:
  """The run directory above `checkpoints/[milestones|latest]/...` containers."""
  path = pathlib.Path(path).expanduser().resolve()
  while path.name in CONTAINERS and path.parent != path:
    path = path.parent
  return path


def checkpoint_name(init_from: str) -> str:
  """A folder name for a model: `hf:org/x` -> `org_x`; `<run>/checkpoints/.../<c>` -> `<run>-<c>`;
  a seed run `<stage>/seed_<k>` -> `<stage>-seed_<k>` (seed runs of two stages must not collide)."""
  if init_from.startswith("hf:"):
    return init_from[3:].replace("/", "_")
  p = pathlib.Path(init_from).expanduser().resolve()
  if p.parent.name in CONTAINERS:
    return f"{run_root(p.parent).name}-{p.name}"
  if _SEED_DIR.match(p.name):
    return f"{p.parent.name}-{p.name}"
  return p.name
