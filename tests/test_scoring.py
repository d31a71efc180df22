"""The scorer against the real thing: minicons (study) and the BabyLM 2025 phrase-mask rule."""

import json

import numpy as np
import pytest

from evaluation import scoring, testing
from llamalogue import paths
from llamalogue.errors import ConfigError

DATA = paths.data_root()
HAVE_DATA = (DATA / "eval" / "blimp").is_dir() and (DATA / "communicative_baby").is_dir()


def sample_dialogue(n: int) -> list[tuple[str, str]]:
  """(good, bad) scored strings of n released word-matched pairs, or fixtures."""
  path = DATA / "communicative_baby/dpo_dataset/huggingface_dpo_format_eval.json"
  if not path.exists():
    return [(t, t.replace(" ", "  ", 1)) for t in testing.SAMPLE_TEXTS[:3]]
  rows = json.loads(path.read_text())[::max(1, 7548 // n)][:n]
  return [(r["prompt"] + " " + r["chosen"], r["prompt"] + " " + r["rejected"]) for r in rows]


def sample_blimp(n: int) -> list[tuple[str, str]]:
  files = sorted((DATA / "eval/blimp").glob("*.jsonl"))
  if not files:
    return [(testing.SAMPLE_TEXTS[3], testing.SAMPLE_TEXTS[4])]
  out = []
  for f in files[::max(1, len(files) // n)][:n]:
    rec = json.loads(f.read_text().splitlines()[0])
    out.append((rec["sentence_good"], rec["sentence_bad"]))
  return out


def training_texts() -> list[str]:
  texts = list(testing.SAMPLE_TEXTS)
  for good, bad in sample_dialogue(300) + sample_blimp(67):
    texts += [good, bad]
  return texts


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """A random model of ours exported as a HF dir (with a byte-level BPE tokenizer)."""
  d = tmp_path_factory.mktemp("hf") / "model"
  testing.make_exported(d, training_texts(), tokenizer_vocab=600)
  return d


@pytest.fixture(scope="module")
def ours(exported):
  from llamalogue import hf
  model, tok = hf.load(str(exported))
  return model, tok


@pytest.fixture(scope="module")
def minicons_lm(exported):
  from minicons import scorer as mscorer
  return mscorer.IncrementalLMScorer(str(exported), device="cpu")


def minicons_scores(lm, texts, bow: bool) -> np.ndarray:
  return np.array(lm.sequence_score(list(texts), reduction=lambda x: x.sum(0).item(), bow_correction=bow))


def test_parity_with_minicons_study(ours, minicons_lm):
  pairs = sample_dialogue(60) + sample_blimp(40)
  texts = [t for p in pairs for t in p]
  want = np.concatenate([minicons_scores(minicons_lm, texts[i:i + 16], True) for i in range(0, len(texts), 16)])
  got = scoring.Scorer.from_model(*ours, convention="study").score(texts)
  assert minicons_lm.is_bow_tokenizer
  assert np.max(np.abs(got - want)) < 1e-3
  acc_want = scoring.choice_correct(np.stack([want[0::2], want[1::2]], 1))
  acc_got = scoring.choice_correct(np.stack([got[0::2], got[1::2]], 1))
  assert (acc_want == acc_got).all()
  assert 0 < acc_got.mean() < 1


def test_babylm2025_is_minicons_without_correction(ours, minicons_lm):
  texts = [t for p in sample_dialogue(10) + sample_blimp(10) for t in p]
  want = minicons_scores(minicons_lm, texts, False)
  got = scoring.Scorer.from_model(*ours, convention="babylm2025").score(texts)
  assert np.max(np.abs(got - want)) < 1e-3


def test_continuation_matches_minicons_conditional_score(ours, minicons_lm):
  prefixes = ["Ali and Wei are helping each other.", "*MOT: what is that ?", "The dog is big."]
  stimuli = ["Ali is cooperating with Wei.", "*CHI: it looks like a gun .", "It is heavy."]
  want = minicons_lm.conditional_score(prefixes, stimuli, reduction=lambda x: x.sum(0).item(), bow_correction=True)
  texts = [p + " " + s for p, s in zip(prefixes, stimuli)]
  got = scoring.Scorer.from_model(*ours, convention="study").score(texts, [len(p) for p in prefixes])
  np.testing.assert_allclose(got, want, atol=1e-3)


def babylm_reference(exported, sentences, completions) -> np.ndarray:
  """The BabyLM 2025 causal scorer, re-stated with torch: phrase mask = token end > completion start."""
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer
  tok = AutoTokenizer.from_pretrained(str(exported))
  model = AutoModelForCausalLM.from_pretrained(str(exported)).eval()
  out = []
  for sentence, completion in zip(sentences, completions):
    enc = tok(sentence, return_offsets_mapping=True)
    start_char = len(sentence) - len(completion) + enc["offset_mapping"][0][0]
    mask = [1 if end > start_char else 0 for _, end in enc["offset_mapping"]]
    ids = torch.tensor([enc["input_ids"]])
    with torch.no_grad():
      lp = torch.log_softmax(model(ids).logits[0, :-1], -1)
    tok_lp = lp.gather(-1, ids[0, 1:, None])[:, 0]
    out.append(float((tok_lp * torch.tensor(mask[1:])).sum()))
  return np.array(out)


def test_babylm2025_matches_pipeline_phrase_mask(ours, exported):
  # Entity-tracking style: the prefix ends with a space; EWoK style: completion " <target>".
  prefixes = ["Box 0 contains the blue card, Box 1 contains nothing. Box 0 contains ", "The dog is big."]
  completions = ["the blue card.", " It is heavy."]
  sentences = [p + c for p, c in zip(prefixes, completions)]
  want = babylm_reference(exported, sentences, completions)
  got = scoring.Scorer.from_model(*ours, convention="babylm2025").score(sentences, [len(p) for p in prefixes])
  np.testing.assert_allclose(got, want, atol=1e-3)
  whole = scoring.Scorer.from_model(*ours, convention="babylm2025").score(sentences)
  np.testing.assert_allclose(whole, babylm_reference(exported, sentences, sentences), atol=1e-3)


def test_bow_correction_telescopes():
  rng = np.random.default_rng(0)
  tok_lp = -rng.random((3, 10))
  bow_lp = -rng.random((3, 10))
  is_bow = rng.random((3, 10)) < 0.5
  lengths, first = np.array([10, 7, 4]), np.array([1, 3, 1])
  plain = scoring.span_scores(tok_lp, bow_lp, is_bow, lengths, first, False)
  corrected = scoring.span_scores(tok_lp, bow_lp, is_bow, lengths, first, True)
  np.testing.assert_allclose(corrected, plain + bow_lp[np.arange(3), lengths - 1])


def test_batching_does_not_change_scores(ours):
  texts = [t for p in sample_dialogue(12) for t in p] + ["", "a"]
  a = scoring.Scorer.from_model(*ours, batch_tokens=16, pad_multiple=8).score(texts)
  b = scoring.Scorer.from_model(*ours, batch_tokens=4096, pad_multiple=32).score(texts)
  np.testing.assert_allclose(a, b, atol=1e-4)
  assert a[-2] == 0.0 and a[-1] == 0.0      # nothing to score without a second token


def test_plan_batches_fixed_shapes():
  lengths = [3, 17, 17, 40, 100, 5, 16, 33]
  plans = scoring.plan_batches(lengths, 16, 64, 8)
  rows = np.concatenate([r for _, _, r in plans])
  assert sorted(rows.tolist()) == list(range(len(lengths)))
  for bsz, pad_len, r in plans:
    assert len(r) <= bsz and all(lengths[i] <= pad_len for i in r)
    full = scoring.batch_size_for(pad_len, 64, 8)
    assert bsz in (full, min(full, scoring.tail_batch_size(len(r))))
  assert {scoring.bucket_len(n, 16) for n in range(1, 600)} == {16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768}


def test_first_scored_index_with_and_without_bos():
  offsets = [(0, 0), (0, 3), (3, 7), (7, 9)]     # a BOS, then three tokens
  assert scoring.first_in_span(offsets, 0) == 1
  assert scoring.first_in_span(offsets, 3) == 2
  assert scoring.first_in_span(offsets, 4) == 2   # a token straddling the start is scored
  assert scoring.first_in_span(offsets, 9) == 4


def test_pairs_need_a_strictly_higher_score():
  pairs = np.stack([np.array([1.0, 2.0, 1.0]), np.array([1.0, 1.0, 2.0])], 1)
  assert scoring.choice_correct(pairs).tolist() == [False, True, False]
  s = np.array([[2.0, 1.0, 0.0], [2.0, 2.0, 0.0], [0.0, 1.0, 0.5]])
  assert scoring.choice_correct(s).tolist() == [True, False, False]
  np.testing.assert_allclose(scoring.softmax_first(np.array([[0.0, 0.0]])), [0.5])


def test_vocabulary_mismatch_is_a_clear_error(ours):
  import dataclasses
  from flax import nnx
  from llamalogue.model import Llama
  model, tok = ours  # a model whose embedding table is smaller than its tokenizer
  small = Llama(dataclasses.replace(model.cfg, vocab_size=len(tok) - 10), rngs=nnx.Rngs(0))
  with pytest.raises(ConfigError, match="vocabulary"):
    scoring.Scorer.from_model(small, tok)


def test_unknown_convention(ours):
  with pytest.raises(ConfigError, match="convention"):
    scoring.Scorer.from_model(*ours, convention="nope")


def test_repeated_texts_are_scored_once(ours, monkeypatch):
  sc = scoring.Scorer.from_model(*ours)
  texts = [t for p in sample_dialogue(4) for t in p]
  first = sc.score(texts)
  monkeypatch.setattr(sc, "score_ids", lambda *a: pytest.fail("cached texts were scored again"))
  np.testing.assert_array_equal(sc.score(texts[::-1] + texts), np.concatenate([first[::-1], first]))


@pytest.mark.parametrize("convention", ["study", "babylm2025"])
@pytest.mark.parametrize("tie", [False, True])
def test_shared_prefix_equals_full_forward(ours, convention, tie):
  model, tok = ours
  if tie:
    model = testing.make_model(model.cfg.vocab_size, seed=3, tie=True)
  prefix = "Box 0 contains the blue card, Box 1 contains the red shoe, Box 2 contains nothing. Box 1 contains "
  options = ["the red shoe.", "the blue card.", "nothing.", "the red card and the shoe.", ""]
  groups = [[(prefix + o, len(prefix)) for o in options],
            [("*MOT: what is that ? " + o, 21) for o in ("*CHI: a gun .", "*CHI: it is a big red ball .")],
            [(t, 0) for t in ("The dog is big.", "The dog is big!")]]
  shared = scoring.Scorer.from_model(model, tok, convention=convention, min_shared=4)
  got = shared.score_groups(groups)
  assert len(shared._cache) == sum(len(g) for g in groups)
  plain = scoring.Scorer.from_model(model, tok, convention=convention, share_prefix=False)
  for g, scores in zip(groups, got):
    np.testing.assert_allclose(scores, plain.score([t for t, _ in g], [s for _, s in g]), atol=1e-4)


def test_same_shape_models_share_compiled_programs(ours):
  _, tok = ours
  one, other = (testing.make_model(len(tok), seed=s) for s in (11, 12))
  a, b = scoring.Scorer.from_model(one, tok), scoring.Scorer.from_model(other, tok)
  assert a._stats is b._stats and a._group_stats is b._group_stats
  texts = [t for p in sample_dialogue(3) for t in p]
  assert not np.allclose(a.score(texts), b.score(texts))      # same program, each model's own weights
