"""rl/teacher.py: the GGUF teacher equals transformers' GGUF model; bad inputs are one clear error; the reply cache.

The SmolLM2 GGUF is converted once into $LLAMALOGUE_CACHE (default ~/.cache/llamalogue) and reused.
"""

import json
import shutil

import numpy as np
import pytest
import torch

from llamalogue.errors import DataError
from llamalogue import sampling
from rl import teacher as teacher_lib

PROMPTS = ["Mother says: what is that ?\nChild:", "hello", "The cat sat on the mat because it was"]


@pytest.fixture(scope="module")
def smollm2():
  return teacher_lib.Teacher("smollm2")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  """A tiny random Llama with SmolLM2's tokenizer (so real text goes through it)."""
  from transformers import LlamaConfig, LlamaForCausalLM
  src = teacher_lib.resolve("smollm2")
  out = tmp_path_factory.mktemp("tiny_llama")
  torch.manual_seed(0)
  cfg = LlamaConfig(vocab_size=49_152, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, rms_norm_eps=1e-5,
                    bos_token_id=1, eos_token_id=2, pad_token_id=2)
  LlamaForCausalLM(cfg).save_pretrained(out)
  for f in src.iterdir():
    if "token" in f.name or f.name == "chat_template.jinja":
      shutil.copy2(f, out / f.name)
  return out


def test_gguf_teacher_equals_transformers_gguf_model(smollm2):
  from transformers import AutoModelForCausalLM
  gguf = teacher_lib.smollm2_gguf()
  ref = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
  assert smollm2.is_jax and smollm2.model.cfg.num_layers == 30
  texts = PROMPTS + [smollm2.chat("Rate this answer from 0 to 5.", "Be brief.")]
  ours = smollm2.last_logits(texts)
  for text, got in zip(texts, ours):
    ids = smollm2.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
      want = ref(ids).logits[0, -1].numpy()
    # 30 float32 layers and logits up to ~17: the accumulation order (CPU model, thread count) moves the last
    # bits by ~1e-5 of the logits' scale, so the tolerance is relative to that scale (a wrong layer is off by ~1).
    scale = float(np.max(np.abs(want)))
    assert float(np.max(np.abs(got - want))) <= 5e-5 * scale, (float(np.max(np.abs(got - want))), scale)
  assert smollm2.tokenizer.chat_template and "<|im_start|>assistant" in texts[-1]


def test_jax_and_torch_backends_agree(tiny_dir, capsys):
  jx = teacher_lib.Teacher(str(tiny_dir))
  pt = teacher_lib.Teacher(str(tiny_dir), backend="torch")
  assert jx.is_jax and not pt.is_jax
  assert "not in JAX" in capsys.readouterr().err
  np.testing.assert_allclose(jx.last_logits(PROMPTS), pt.last_logits(PROMPTS), atol=1e-5, rtol=0)
  ctx = ["what is that ?"] * 3 + ["you want some juice ?"]
  cont = [" a ball .", " ball", "", " yes please ."]
  np.testing.assert_allclose(jx.logprobs(ctx, cont), pt.logprobs(ctx, cont), atol=1e-4, rtol=0)
  assert pt.logprobs(ctx, cont)[2] == 0.0


def _one_line(excinfo):
  message = str(excinfo.value)
  assert "\n" not in message
  return message


def test_bad_teachers_are_one_clear_error(tmp_path):
  with pytest.raises(DataError) as e:
    teacher_lib.Teacher(str(tmp_path / "missing.gguf"), cache_dir=str(tmp_path))
  assert "missing.gguf" in _one_line(e) and "does not exist" in str(e.value)

  corrupt = tmp_path / "corrupt.gguf"
  corrupt.write_bytes(b"GGUF" + bytes(range(256)) * 8)
  with pytest.raises(DataError) as e:
    teacher_lib.Teacher(str(corrupt), cache_dir=str(tmp_path))
  assert "corrupt.gguf" in _one_line(e)
  assert not list((tmp_path / "gguf").glob("corrupt*"))     # nothing half-written is left in the cache

  with pytest.raises(DataError) as e:
    teacher_lib.Teacher(str(tmp_path / "no_dir"))
  assert "no_dir" in _one_line(e)

  bad_json = tmp_path / "bad_json"
  bad_json.mkdir()
  (bad_json / "config.json").write_text("{not json")
  with pytest.raises(DataError) as e:
    teacher_lib.Teacher(str(bad_json))
  assert "config.json" in _one_line(e)

  truncated = tmp_path / "truncated"
  truncated.mkdir()
  (truncated / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 10, "hidden_size": 8,
                                                     "num_hidden_layers": 1, "num_attention_heads": 2,
                                                     "intermediate_size": 8}))
  (truncated / "model.safetensors").write_bytes(b"\x10\x00\x00\x00")
  with pytest.raises(DataError) as e:
    teacher_lib.Teacher(str(truncated))
  assert "model.safetensors" in _one_line(e)


def test_unsupported_architecture_is_one_clear_error(tmp_path):
  odd = tmp_path / "odd"
  odd.mkdir()
  (odd / "config.json").write_text(json.dumps({"model_type": "no_such_architecture", "vocab_size": 10}))
  with pytest.raises(DataError) as e:
    teacher_lib.Teacher(str(odd))
  assert "unsupported teacher architecture 'no_such_architecture'" in _one_line(e)

  import gguf
  path = tmp_path / "odd_arch.gguf"
  w = gguf.GGUFWriter(str(path), "no_such_architecture")
  w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(DataError) as e:
    teacher_lib.Teacher(str(path), cache_dir=str(tmp_path))
  assert "odd_arch.gguf" in _one_line(e)


def test_text_helpers():
  assert teacher_lib.mother_turn("*MOT: what is that ?") == "what is that ?"
  assert teacher_lib.mother_turn("  what is that ?") == "what is that ?"
  assert teacher_lib.first_utterance(" I want juice! And cookies.") == "I want juice!"
  assert teacher_lib.first_utterance(" yes mommy\nMother: ok") == "yes mommy"
  assert teacher_lib.first_utterance("") == ""
  text = " a ball Mother: no\n"
  assert text[:sampling.first_stop(text, ("\n", "Mother:"))] == " a ball "


def test_read_prompts(tmp_path):
  data = tmp_path / "data"
  data.mkdir()
  utts = [{"tag": "MOT", "text": "what is that over there ?"}, {"tag": "CHI", "text": "a big red ball ."},
          {"tag": "MOT", "text": "oh ."}, {"tag": "MOT", "text": "what is that over there ?"}]
  (data / "heldout_b_dialogues.jsonl").write_text(json.dumps({"utterances": utts}) + "\n")
  assert teacher_lib.read_prompts(str(tmp_path)) == ["what is that over there ?"]
  (tmp_path / "p.txt").write_text("*MOT: one two three four\n\nfive six\n")
  assert teacher_lib.read_prompts(str(tmp_path / "p.txt")) == ["one two three four", "five six"]
  (tmp_path / "p.json").write_text(json.dumps([{"prompt": "*MOT: a b", "chosen": "x", "rejected": "y"}]))
  assert teacher_lib.read_prompts(str(tmp_path / "p.json")) == ["a b"]
  (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{oops\n')
  with pytest.raises(DataError, match="bad.jsonl:2"):
    teacher_lib.read_prompts(str(tmp_path / "bad.jsonl"))


def test_reply_cache_resumes_after_a_kill(tmp_path, tiny_dir):
  t = teacher_lib.Teacher(str(tiny_dir), backend="torch")   # generation here needs no sampler
  settings = dict(template="Mother says: {mot}\nChild:", chat_template=False, n=3, temperature=0.8, top_p=0.8,
                  top_k=0, max_new_tokens=5, stop=["\n"], first_utterance=True, lowercase=False,
                  score_replies=True, seed=0)
  path = teacher_lib.cache_path(tmp_path, t, settings)
  mothers = ["what is that ?", "*MOT: you want juice ?", "where is the dog ?"]
  cache = teacher_lib.ReplyCache(path)
  assert teacher_lib.fill_cache(t, mothers, cache, settings, chunk=1) == 3
  lines = path.read_text().splitlines(keepends=True)
  assert len(lines) == 3
  row = json.loads(lines[1])
  assert row["prompt"] == "you want juice ?" and len(row["replies"]) == len(row["logps"]) == 3
  np.testing.assert_allclose(row["logps"], teacher_lib.confidence_logprobs(t, [row["prompt"]] * 3, row["replies"]),
                             atol=1e-6)
  # a kill in the middle of the last write: half a line
  path.write_text("".join(lines[:2]) + lines[2][:len(lines[2]) // 2])
  cache = teacher_lib.ReplyCache(path)
  assert len(cache) == 2 and cache.get("where is the dog ?") is None
  assert teacher_lib.fill_cache(t, mothers, cache, settings, chunk=1) == 1
  assert teacher_lib.fill_cache(t, mothers, cache, settings, chunk=1) == 0
  again = path.read_text().splitlines(keepends=True)
  assert again[:2] == lines[:2] and len(again) == 3
  assert again[2] == lines[2]      # the redone chunk draws the same samples (seeded by its first turn)
  # a bad line that is not the last one is an error, not silently dropped
  path.write_text(lines[0] + "{broken\n" + lines[2])
  with pytest.raises(DataError, match=r":2: bad reply row"):
    teacher_lib.ReplyCache(path)
  # other settings, another file
  assert teacher_lib.cache_path(tmp_path, t, {**settings, "top_p": 0.9}) != path


def test_synthetic_pairs_mode(tmp_path, tiny_dir, capsys):
  from configs import synthetic_pairs
  pairs = [{"prompt": "*MOT: what is that ?", "chosen": "*CHI: a ball .", "rejected": "*CHI: my shoe ."},
           {"prompt": "*MOT: you want juice ?", "chosen": "*CHI: yes .", "rejected": "*CHI: the moon is up ."},
           {"prompt": "*MOT: what is that ?", "chosen": "*CHI: a dog .", "rejected": "*CHI: no ."}]
  src = tmp_path / "natural.jsonl"
  src.write_text("".join(json.dumps(p) + "\n" for p in pairs))
  config = synthetic_pairs.get_config("tiny")
  config.teacher, config.pairs, config.max_new_tokens = str(tiny_dir), str(src), 4
  teacher_lib.run_synthetic_pairs(config, str(tmp_path / "run"))
  out = [json.loads(l) for l in (tmp_path / "run" / "synthetic_pairs.jsonl").read_text().splitlines()]
  assert [(o["prompt"], o["rejected"]) for o in out] == [(p["prompt"], p["rejected"]) for p in pairs]
  assert all(o["chosen"].startswith("*CHI: ") and o["chosen"][6:] == o["chosen"][6:].lower() for o in out)
  assert out[0]["chosen"] == out[2]["chosen"]            # one reply per distinct mother turn
  (cache,) = (tmp_path / "run" / "teacher_replies").glob("*.jsonl")
  assert len(cache.read_text().splitlines()) == 2
  assert "generated 2 turns" in capsys.readouterr().out
  teacher_lib.run_synthetic_pairs(config, str(tmp_path / "run"))   # a rerun generates nothing
  assert "generated 0 turns" in capsys.readouterr().out
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps([{"prompt": "*MOT: hi", "chosen": "*CHI: yo"}]))
  config.pairs = str(bad)
  with pytest.raises(DataError, match=r"bad.json: entry 1: missing field 'rejected'"):
    teacher_lib.run_synthetic_pairs(config, str(tmp_path / "run"))


def test_teacher_replies_mode(tmp_path, tiny_dir):
  from configs import teacher_replies
  from llamalogue.errors import ConfigError
  config = teacher_replies.get_config()
  config.teacher, config.n, config.max_new_tokens = str(tiny_dir), 2, 3
  with pytest.raises(ConfigError, match="config.prompts: empty"):
    teacher_lib.run_replies(config, str(tmp_path))
  (tmp_path / "turns.txt").write_text("*MOT: what is that ?\nyou want juice ?\n")
  config.prompts = str(tmp_path / "turns.txt")
  teacher_lib.run_replies(config, str(tmp_path / "run"))
  (path,) = (tmp_path / "run" / "teacher_replies").glob("*.jsonl")
  rows = [json.loads(l) for l in path.read_text().splitlines()]
  assert [r["prompt"] for r in rows] == ["what is that ?", "you want juice ?"]
  assert all(len(r["replies"]) == len(r["raw"]) == len(r["logps"]) == 2 for r in rows)
  settings = json.loads(path.with_suffix(".json").read_text())["settings"]
  assert settings["temperature"] == 0.8 and settings["top_p"] == 0.8 and settings["stop"] == ["\n", "Mother:", "Child:"]
