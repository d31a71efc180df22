"""Where transcripts come from: config.data.childes -> transcript items -> text.

A source is a TalkBank ZIP, a directory (searched recursively for `.cha` and
`.zip` files), a single transcript file, or an http(s) URL that
`pylangacq.read_chat` reads. Each transcript gets a stable id that does not
depend on where the data lives (the ZIP member path, the path relative to a
directory's parent, a file's name), so splits do not move with the data.
"""

import dataclasses
import os
import pathlib
import warnings
import zipfile
import zlib

from llamalogue import paths
from llamalogue.errors import DataError

CONFIG_KEY = "data.childes"


class BadFile(Exception):
  """One unreadable transcript or archive; skipped unless data.strict."""

  def __init__(self, name: str, reason: str):
    super().__init__(f"{name}: {reason}")
    self.name = name
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class Item:
  """One transcript: `id` (stable), where its bytes are, or its text (URLs)."""
  id: str
  path: str                     # file on disk (a .cha, or the ZIP)
  member: str | None = None     # ZIP member name
  text: str | None = None       # already-read text (URL sources)

  @property
  def name(self) -> str:
    """Human-readable location for messages."""
    return f"{self.path}:{self.member}" if self.member else self.path


def is_url(entry: str) -> bool:
  return entry.lower().startswith(("http://", "https://"))


def split_spec(spec: str) -> list[str]:
  """The comma-separated entries of config.data.childes."""
  entries = [e.strip() for e in str(spec).split(",") if e.strip()]
  if not entries:
    raise DataError(f"{CONFIG_KEY}: empty; give TalkBank ZIPs, directories, .cha files or URLs")
  return entries


def resolve_entries(spec: str) -> list[str | pathlib.Path]:
  """Entries as URLs (str) or existing local paths; DataError names a missing one."""
  out: list[str | pathlib.Path] = []
  for entry in split_spec(spec):
    if is_url(entry):
      out.append(entry)
    else:
      out.append(paths.resolve(entry, what=CONFIG_KEY))
  return out


def local_files(entry: pathlib.Path) -> list[tuple[pathlib.Path, str]]:
  """(file, id prefix) pairs under a local entry; DataError for an empty dir."""
  if entry.is_file():
    return [(entry, "")]
  if not entry.is_dir():
    raise DataError(f"{CONFIG_KEY}: not a file or directory: {entry}")
  found = sorted(p for p in entry.rglob("*")
                 if p.is_file() and p.suffix.lower() in (".cha", ".zip"))
  if not found:
    raise DataError(f"{CONFIG_KEY}: directory has no .cha or .zip files: {entry}")
  return [(p, str(p.relative_to(entry.parent).parent)) for p in found]


def zip_items(path: pathlib.Path) -> list[Item]:
  """Transcripts in a ZIP; BadFile if the archive itself is unreadable."""
  try:
    with zipfile.ZipFile(path) as z:
      names = [i.filename for i in z.infolist() if not i.is_dir()]
  except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
    raise BadFile(str(path), f"not a readable ZIP archive ({_short(e)})") from None
  names = [n for n in names
           if n.lower().endswith(".cha") and not n.startswith("__MACOSX/")]
  if not names:
    raise BadFile(str(path), "ZIP archive has no .cha files")
  return [Item(id=n, path=str(path), member=n) for n in sorted(names)]


def file_item(path: pathlib.Path, prefix: str) -> list[Item]:
  """A single transcript file, or a ZIP recognised by content."""
  if path.suffix.lower() == ".zip" or zipfile.is_zipfile(path):
    return zip_items(path)
  return [Item(id=os.path.join(prefix, path.name) if prefix else path.name, path=str(path))]


def url_items(url: str) -> list[Item]:
  """Transcripts that `pylangacq.read_chat` fetches from a URL (online only)."""
  import pylangacq  # pylangacq: imported in the reader processes
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      chat = pylangacq.read_chat(url, strict=False)
  except Exception as e:  # network and format errors all end here
    raise BadFile(url, f"pylangacq could not read the URL ({_short(e)})") from None
  return [Item(id=f"{url}#{fid}", path=url, text=text)
          for fid, text in zip(chat.file_paths, chat.to_strs())]


def list_items(spec: str, strict: bool = False) -> tuple[list[Item], dict[str, str]]:
  """All transcript items of config.data.childes, plus {file: reason} skipped.

  Missing paths and empty directories are config mistakes: DataError always.
  An unreadable archive is a bad file: skipped, or DataError when `strict`.
  Duplicate ids (the same transcript twice) are skipped and reported.
  """
  items: list[Item] = []
  bad: dict[str, str] = {}

  def add(fn, *args):
    try:
      items.extend(fn(*args))
    except BadFile as e:
      if strict:
        raise DataError(str(e)) from None
      bad[e.name] = e.reason

  for entry in resolve_entries(spec):
    if isinstance(entry, str):
      add(url_items, entry)
      continue
    for path, prefix in local_files(entry):
      add(file_item, path, prefix)
  seen: set[str] = set()
  unique = []
  for item in items:
    if item.id in seen:
      bad[item.name] = f"duplicate transcript id {item.id!r} (listed twice?)"
      continue
    seen.add(item.id)
    unique.append(item)
  return unique, bad


_ZIPS: dict[str, zipfile.ZipFile] = {}


def read_bytes(item: Item) -> bytes:
  """Raw bytes of a transcript; BadFile if they cannot be read."""
  try:
    if item.member is None:
      return pathlib.Path(item.path).read_bytes()
    z = _ZIPS.get(item.path)
    if z is None:
      z = _ZIPS[item.path] = zipfile.ZipFile(item.path)
    return z.read(item.member)
  except (zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError, ValueError,
          NotImplementedError, RuntimeError) as e:
    raise BadFile(item.name, f"cannot read ({_short(e)})") from None


def read_text(item: Item) -> str:
  """The transcript as text; BadFile names the offending byte if not UTF-8."""
  if item.text is not None:
    return item.text
  data = read_bytes(item)
  try:
    return data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise BadFile(item.name, f"not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); "
                  "CHAT files must be UTF-8") from None


def close_zips() -> None:
  """Closes cached ZIP handles (the per-process cache of read_bytes)."""
  for z in _ZIPS.values():
    z.close()
  _ZIPS.clear()


def _short(e: BaseException) -> str:
  msg = str(e).strip().splitlines()
  return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__
