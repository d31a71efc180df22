"""CHAT main-tier cleaning (llamalogue/data/chat.py), by convention and on real transcripts."""

import re
import warnings

import pytest

from llamalogue import paths
from llamalogue.data import chat

CASES = [
    # plain text passes through; words are counted
    ("what is that ?", "what is that ?"),
    ("I'm gonna get 'em .", "I'm gonna get 'em ."),
    # retracing and repetition drop the retraced material
    ("it [/] it looks like a gun .", "it looks like a gun ."),
    ("<I want> [//] I need that .", "I need that ."),
    ("<I want <the> [/] the> [//] I need it .", "I need it ."),
    ("he [///] she went home .", "she went home ."),
    ("<the dog> [/-] the cat .", "the cat ."),
    ("the dog [/] dog .", "the dog ."),
    ("<is it> [/?] is it mine ?", "is it mine ?"),
    # replacements replace, [x N] keeps one copy, other codes go
    ("dat [: that] is mine .", "that is mine ."),
    ("I goed [: went] [*] home .", "I went home ."),
    ("<wan to> [: want to] go .", "want to go ."),
    ("more [x 3] juice .", "more juice ."),
    ("look [!] at it [!!] .", "look at it ."),
    ("the red [= the red car] one .", "the red one ."),
    ("nice [=! laughs] kitty .", "nice kitty ."),
    ("my ball [=? bell] .", "my ball ."),
    ("yes [+ IMIT] .", "yes ."),
    ("go there [% loud] .", "go there ."),
    ("<I know> [>] you do .", "I know you do ."),
    ("<no> [<] okay .", "no okay ."),
    ("sure [?] thing .", "sure thing ."),
    ("what [^ microphone noise] now ?", "what now ?"),
    ("the movement[?] here .", "the movement here ."),
    # events, fillers, fragments, unintelligible, omitted words, pauses
    ("&=laughs that's funny .", "that's funny ."),
    ("&-um I think &+fr so .", "I think so ."),
    ("&um (.) okay .", "okay ."),
    ("xxx the ball .", "the ball ."),
    ("give me yyy www toy .", "give me toy ."),
    ("what 0is that ?", "what that ?"),
    ("go (..) away (...) now (1.5) (2:03.) .", "go away now ."),
    # completions, form markers, compounds, lengthening, CA marks, quotes
    ("I wan(t) (be)cause it(s) hot .", "I want because its hot ."),
    ("Sessy@f said bow+wow@o .", "Sessy said bow wow ."),
    ("hola@s:spa amigo@s:spa .", "hola amigo ."),
    ("he said bedtɘ@u to me .", "he said to me ."),
    ("Kit_Kat and ice+cream .", "Kit Kat and ice cream ."),
    ("o:h no:: .", "oh no ."),
    ("ge^errrer@o .", "geerrrer ."),
    ("‹Mom ,› is this for eyes ?", "Mom , is this for eyes ?"),
    ("she said “I'm sorry” .", "she said I'm sorry ."),
    # tags and vocatives become commas; linkers go
    ("it's nice „ isn't it ?", "it's nice , isn't it ?"),
    ("Mommy ‡ come here .", "Mommy , come here ."),
    ("+< yes I can .", "yes I can ."),
    ("++ the big one .", "the big one ."),
    ("+^ right .", "right ."),
    ('+" I want it .', "I want it ."),
    ("+, and then .", "and then ."),
    # +... style terminators become punctuation
    ("and then +...", "and then ."),
    ("what did +/.", "what did ."),
    ("where is the +//?", "where is the ?"),
    ("who is +/?", "who is ?"),
    ("really +!?", "really ?"),
    ("he said +\"/.", "he said ."),
    ("so +..?", "so ?"),
    ("no no +//.", "no no ."),
    # time marks, doubled and missing punctuation
    ("bye ! \x15123_456\x15", "bye !"),
    ("all \x15100_200\x15 done .", "all done ."),
    ("yes , , okay .", "yes , okay ."),
    (", well .", "well ."),
    ("no ,", "no ."),
    ("hi there", "hi there ."),
]


@pytest.mark.parametrize("raw,expected", CASES)
def test_clean_convention(raw, expected):
  text, words, reason = chat.clean(raw)
  assert reason is None
  assert text == expected
  assert words == chat.count_words(expected)


@pytest.mark.parametrize("raw,reason", [
    ("xxx .", chat.UNINTELLIGIBLE),
    ("yyy yyy !", chat.UNINTELLIGIBLE),
    ("<xxx> [/] www .", chat.UNINTELLIGIBLE),
    ("0 .", chat.NO_WORDS),
    ("0 [=! smiles] .", chat.NO_WORDS),
    ("&=laughs .", chat.NO_WORDS),
    ("&mm (.) .", chat.NO_WORDS),
    ("+...", chat.NO_WORDS),
    ("", chat.NO_WORDS),
    ("[- spa] hola amigo .", chat.OTHER_LANGUAGE),
])
def test_clean_drops_with_reason(raw, reason):
  assert chat.clean(raw) == ("", 0, reason)


def test_english_precode_is_kept():
  assert chat.clean("[- eng] hello there .")[0] == "hello there ."


def test_count_words_skips_tags_and_punctuation():
  assert chat.count_words("*MOT: what is that ? *CHI: a gun , yes .") == 6


# Anything CHAT-specific that must never survive cleaning.
_JUNK = re.compile(r"[\[\]<>&@()+_“”„‡‹›\x15:^]|\b(?:xxx|yyy|www)\b|(?:^| )0\w")


def _check_clean_output(raw: str, text: str) -> None:
  assert not _JUNK.search(text), (raw, text)
  assert text == text.strip() and "  " not in text, (raw, text)
  tokens = text.split(" ")
  assert tokens[-1] in chat.TERMINATORS, (raw, text)
  assert not any(t in chat.TERMINATORS for t in tokens[:-1]), (raw, text)
  assert tokens[0] not in chat.PUNCT, (raw, text)
  assert not any(a in chat.PUNCT and b in chat.PUNCT for a, b in zip(tokens, tokens[1:])), (raw, text)


@pytest.mark.parametrize("raw,expected", CASES)
def test_clean_output_shape(raw, expected):
  _check_clean_output(raw, chat.clean(raw)[0])


def test_clean_real_transcripts_leave_no_chat_codes():
  """Every main tier of a few real corpora: no codes survive, nothing is silently empty."""
  root = paths.data_root() / "childes"
  zips = [root / "Eng-NA" / "Bliss.zip", root / "Eng-UK" / "Wooten.zip", root / "Eng-NA" / "Brown-Eve.zip"]
  if not all(z.exists() for z in zips):
    pytest.skip(f"real CHILDES ZIPs not found under {root}")
  import pylangacq
  n = kept = 0
  for z in zips:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      reader = pylangacq.read_chat(str(z), strict=False)
    for u in reader.utterances():
      if u.participant is None:
        continue
      raw = u.tiers[u.participant]
      text, words, reason = chat.clean(raw)
      n += 1
      if reason is None:
        kept += 1
        _check_clean_output(raw, text)
        assert words == chat.count_words(text) > 0
      else:
        assert text == "" and reason in (chat.UNINTELLIGIBLE, chat.NO_WORDS, chat.OTHER_LANGUAGE)
  assert n > 20_000 and kept / n > 0.85


@pytest.mark.skipif(not (paths.data_root() / "childes").exists(), reason="no CHILDES data")
def test_speaker_tag_matches_every_speaker_code_of_the_data():
  """The one speaker-tag pattern (llamalogue/data/units.py) recognises every code the CHILDES transcripts use
  (MOT, CHI, SI1, TO2, AD1, AT, ...), so a sampled reply is cut at a sibling's turn as at the mother's."""
  import zipfile
  from llamalogue.data.units import SPEAKER_TAG
  codes = set()
  main_tier = re.compile(rb"^\*([^:\t ]+):", re.M)
  for z in sorted((paths.data_root() / "childes").rglob("*.zip")):
    with zipfile.ZipFile(z) as f:
      for name in f.namelist():
        if name.endswith(".cha"):
          codes.update(m.group(1).decode("utf-8", "replace") for m in main_tier.finditer(f.read(name)))
  assert len(codes) > 300 and {"MOT", "CHI", "SI1", "TO2", "AD1"} <= codes
  for code in sorted(codes):
    text = f"my ball . *{code}: no mine ."
    m = SPEAKER_TAG.search(text)
    assert m is not None and m.group(0) == f"*{code}:", code
  assert SPEAKER_TAG.search("a * b : c") is None and SPEAKER_TAG.search("*mot: hi") is None
