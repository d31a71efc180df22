"""Where data lives (`LLAMALOGUE_DATA`, else `../shared/data` beside the repo) and atomic writes."""

import os
import pathlib

from llamalogue.errors import DataError

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def data_root() -> pathlib.Path:
  """The data root: $LLAMALOGUE_DATA, or ../shared/data next to the checkout."""
  env = os.environ.get("LLAMALOGUE_DATA")
  if env:
    return pathlib.Path(env).expanduser()
  return (REPO_ROOT.parent / "shared" / "data").resolve()


def resolve(path: str, what: str = "path", must_exist: bool = True) -> pathlib.Path:
  """Resolves `path`; a leading `data:` means relative to `data_root()`.

  Raises DataError naming `what` (usually the config key) when the path is
  missing and `must_exist` is set.
  """
  if path.startswith("data:"):
    p = data_root() / path[len("data:"):].lstrip("/")
  else:
    p = pathlib.Path(path).expanduser()
  if must_exist and not p.exists():
    hint = ""
    if path.startswith("data:"):
      hint = f" (data root {data_root()}; set LLAMALOGUE_DATA to change it)"
    raise DataError(f"{what}: path does not exist: {p}{hint}")
  return p


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
  """Writes `data` to a temporary file beside `path`, then renames it over `path`.

  A reader (or a run killed half-way) sees the old file or the new one, never a mix.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
  try:
    if isinstance(data, bytes):
      tmp.write_bytes(data)
    else:
      tmp.write_text(data)
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
