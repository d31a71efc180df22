"""CHAT main-tier cleaning: raw transcription line -> plain dialogue text.

`clean(raw)` turns a main tier such as
  `&=laughs <it does> [//] it (does) n(o)t [: not] go@f +...`
into `it does not go .` (words separated by single spaces, punctuation a
separate token, exactly one final `.`, `?` or `!`) and its lexical-word
count, or into `""` with a drop reason when no lexical word is left. Conventions follow the CHAT
manual (TalkBank): retracings and repetitions (`[/]`, `[//]`, `[///]`,
`[/-]`, `[/?]`) drop the retraced material, `[: x]` replaces the scoped
word(s) by `x`, `[x N]` keeps one copy, every other `[...]` code is removed,
`&=`/`&-`/`&+`/`&` events, fillers and fragments, `xxx`/`yyy`/`www`,
omitted `0word`s and pauses go, `(..)` completions and `@` markers are
resolved, `_`/`+` compounds become separate words, quotes and CA marks
go, `„` and `‡` become commas, `+...`-style terminators become `.`/`?`/`!`.
"""

import re

PUNCT = frozenset(".?!,")
TERMINATORS = frozenset(".?!")

# Drop reasons for a main tier that yields no lexical word.
UNINTELLIGIBLE = "unintelligible"        # only xxx / yyy / www material
NO_WORDS = "no_words"                    # only events, pauses, omitted words, punctuation
OTHER_LANGUAGE = "other_language"        # a [- lang] precode other than eng

_BULLET = re.compile("\x15[^\x15]*\x15")
_TOKEN = re.compile(r"\[[^\]]*\]|[^\s\[]+|\[")
_PAUSE = re.compile(r"\(\.+\)$|\([0-9:.]+\)$")
_RETRACE = frozenset(("[/]", "[//]", "[///]", "[/-]", "[/?]"))
_UNINTELLIGIBLE = frozenset(("xxx", "yyy", "www", "xx", "yy"))
_LINKERS = frozenset(("+<", "++", "+^", '+"', "+,", "+≋", "+≈", "+"))
_COMMA_MARKS = frozenset(("„", "‡", ",", ";", "‚"))
_PLAIN = re.compile(r"[A-Za-z][A-Za-z']*")
_STRIP_CHARS = "‹›“”\"〔〕⌈⌉⌊⌋"
_MARKS = frozenset("<>" + _STRIP_CHARS)
# Characters kept inside a word; everything else (CA marks, stress, `:`
# lengthening, `^` pauses, parentheses of completions) is deleted.
_WORD_JUNK = re.compile(r"[^\w'\-]|[_ˈˌː]", re.UNICODE)
# Most main tiers are plain words and a terminator: they need no parsing.
_SIMPLE = re.compile(r"(?:[A-Za-z][A-Za-z']* )+[.?!]")
_HAS_UNINTELLIGIBLE = re.compile(r"\b(?:xxx|yyy|www|xx|yy)\b", re.IGNORECASE)


def is_word(token: str) -> bool:
  """A lexical word: not punctuation, not a speaker tag."""
  return token not in PUNCT and not token.startswith("*")


def count_words(text: str) -> int:
  """Lexical words in cleaned text (tags `*MOT:` and punctuation excluded)."""
  return sum(1 for t in text.split() if is_word(t))


def _terminator(token: str) -> str | None:
  """`.`/`?`/`!` for a CHAT terminator (`+...`, `+/?`, `+"/.`, ...), else None."""
  if token in TERMINATORS:
    return token
  if token.startswith("+") and len(token) > 1 and token[-1] in ".?!…":
    if "?" in token:
      return "?"
    if "!" in token:
      return "!"
    return "."
  return None


def _clean_word(token: str) -> list[str]:
  """Plain words for one CHAT word token ([] when it is not speech)."""
  if token.startswith("&") or token.startswith("0"):
    return []
  token, _, marker = token.partition("@")
  if marker.startswith("u"):     # UNIBET phonological transcription, not a word
    return []
  if token.lower() in _UNINTELLIGIBLE:
    return []
  token = token.replace("_", " ").replace("+", " ").replace("~", " ")
  words = []
  for part in token.split():
    part = _WORD_JUNK.sub("", part).strip("-")
    if part and any(c.isalnum() for c in part):
      words.append(part)
  return words


def _split_marks(token: str) -> list[str]:
  """Splits `<`/`>` group marks off a token; drops quote and CA marks."""
  token = token.strip(_STRIP_CHARS)
  head = []
  while token.startswith("<"):
    head.append("<")
    token = token[1:].strip(_STRIP_CHARS)
  tail = []
  while token.endswith(">"):
    tail.append(">")
    token = token[:-1].strip(_STRIP_CHARS)
  return head + ([token] if token else []) + tail


def _annotation_words(bracket: str) -> list[str]:
  """Cleaned words of a `[: replacement]`."""
  inner = bracket[1:-1].lstrip(":").strip()
  out = []
  for tok in inner.split():
    out.extend(_clean_word(tok.strip(_STRIP_CHARS)))
  return out


def clean(raw: str) -> tuple[str, int, str | None]:
  """Cleans one raw main tier: (text, lexical words, None) or ("", 0, drop_reason)."""
  if "\x15" in raw:
    raw = _BULLET.sub(" ", raw)
  raw = raw.strip()
  if _SIMPLE.fullmatch(raw) and not _HAS_UNINTELLIGIBLE.search(raw):
    return raw, raw.count(" "), None
  out: list[str] = []          # words and punctuation, in order
  groups: list[int] = []       # start indices of open `<` groups
  scope = (0, 0)               # out[a:b] that the next [code] applies to
  saw_unintelligible = False
  for tok in _TOKEN.findall(raw):
    if tok.startswith("["):
      code = tok[1:-1].strip()
      if tok in _RETRACE:
        del out[scope[0]:]
        scope = (len(out), len(out))
      elif code.startswith(":"):
        out[scope[0]:] = _annotation_words(tok)
        scope = (scope[0], len(out))
      elif code.startswith("-") and code[1:].strip() not in ("", "eng"):
        return "", 0, OTHER_LANGUAGE
      continue
    if tok.startswith("+"):
      term = _terminator(tok)
      if term:
        out.append(term)
      elif tok not in _LINKERS and not tok.startswith(('+"', "+<", "+^")):
        out.extend(_clean_word(tok))
      scope = (len(out), len(out))
      continue
    if _PLAIN.fullmatch(tok):
      if tok.lower() in _UNINTELLIGIBLE:
        saw_unintelligible = True
        scope = (len(out), len(out))
      else:
        scope = (len(out), len(out) + 1)
        out.append(tok)
      continue
    pieces = _split_marks(tok) if tok[0] in _MARKS or tok[-1] in _MARKS else (tok,)
    for piece in pieces:
      if piece == "<":
        groups.append(len(out))
        continue
      if piece == ">":
        start = groups.pop() if groups else 0
        scope = (min(start, len(out)), len(out))
        continue
      start = len(out)
      if piece in TERMINATORS:
        out.append(piece)
      elif piece in _COMMA_MARKS:
        out.append(",")
      elif piece[0] == "(" and _PAUSE.match(piece) or piece[0] == "#":
        pass
      else:
        if piece.split("@", 1)[0].lower() in _UNINTELLIGIBLE:
          saw_unintelligible = True
        out.extend(_clean_word(piece))
      scope = (start, len(out))
  return _finish(out, saw_unintelligible)


def _finish(out: list[str], saw_unintelligible: bool) -> tuple[str, int, str | None]:
  """Normalises punctuation: no leading or doubled marks, one terminator."""
  n_words = sum(1 for t in out if t not in PUNCT)
  if not n_words:
    return "", 0, UNINTELLIGIBLE if saw_unintelligible else NO_WORDS
  words: list[str] = []
  for t in out:
    if t in PUNCT:
      if not words:
        continue
      if words[-1] in PUNCT:
        # A terminator wins over a comma; the first terminator wins otherwise.
        if words[-1] == "," and t != ",":
          words[-1] = t
        continue
    words.append(t)
  final = next((t for t in reversed(out) if t in TERMINATORS), ".")
  if words[-1] in PUNCT:
    words[-1] = final
  else:
    words.append(final)
  # Terminators inside an utterance (e.g. `+...` mid-tier) become commas.
  words = [("," if t in TERMINATORS else t) for t in words[:-1]] + words[-1:]
  return " ".join(words), n_words, None
