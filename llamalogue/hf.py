"""Hugging Face interchange: LlamaForCausalLM directories <-> our NNX Llama.

Parameter names mirror LlamaForCausalLM, so import/export is renaming plus a
transpose of dense kernels (HF `[out, in]`, ours `[in, out]`). Our decoder layers are
stacked (`layers/mlp/up_proj/kernel` is `[L, D, F]`); files hold HF's per-layer tensors
(`model.layers.<i>.mlp.up_proj.weight`), stacked on import and unstacked on export.

`load(spec)` accepts
  * a HF model directory (config.json + *.safetensors; transformers 4 or 5 keys),
  * a checkpoint of ours (a step dir, or a run dir / checkpoints dir: the latest),
  * `hf:<repo id>` (downloaded from the Hugging Face hub when online).
"""

import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from llamalogue import checkpoint, distributed
from llamalogue import model as model_lib
from llamalogue.errors import ConfigError, DataError, LlamalogueError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


# ---------------------------------------------------------------------------- config

# model_type values our Llama computes exactly (Mistral: a Llama without its sliding window).
LLAMA_TYPES = ("llama", "smollm", "smollm2", "mistral")
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


def describe_kind(hf: dict) -> str:
  """`model_type 'bert' (BertModel)`: what a config.json says the model is."""
  archs = hf.get("architectures") or []
  found = f"model_type {hf['model_type']!r}" if hf.get("model_type") else "no model_type in config.json"
  return found + (f" ({', '.join(map(str, archs))})" if archs else "")


def config_from_hf(hf: dict, dtype: str = "float32", source: str = "config.json") -> model_lib.LlamaConfig:
  """LlamaConfig from a HF config.json dict (transformers 4 or 5 layout); `source` names it in errors."""
  arch = hf.get("model_type")
  if arch not in LLAMA_TYPES and "LlamaForCausalLM" not in (hf.get("architectures") or []):
    raise ConfigError(f"{source}: {describe_kind(hf)}: not a Llama-family model; this needs a Llama-architecture "
                      "checkpoint (LlamaForCausalLM: Llama, SmolLM, ...)")
  missing = [k for k in _REQUIRED if k not in hf]
  if missing:
    raise DataError(f"{source}: {describe_kind(hf)}, but no {missing[0]} in config.json: not a complete Llama config")
  rope = hf.get("rope_parameters") or {}
  if isinstance(rope, dict) and rope.get("rope_type", "default") not in ("default", None):
    raise ConfigError(f"{source}: rope_type {rope.get('rope_type')!r} is not supported (only default RoPE)")
  if (hf.get("rope_scaling") or {}).get("rope_type", "default") not in ("default", None):
    raise ConfigError(f"{source}: rope_scaling {hf['rope_scaling']} is not supported (only default RoPE)")
  theta = rope.get("rope_theta", hf.get("rope_theta", 10_000.0)) if isinstance(rope, dict) else hf.get("rope_theta", 10_000.0)
  heads = hf["num_attention_heads"]
  return model_lib.LlamaConfig(
      vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
      num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
      intermediate_size=hf["intermediate_size"],
      head_dim=hf.get("head_dim") or 0,
      rope_theta=float(theta), rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      max_seq_len=hf.get("max_position_embeddings", 2048),
      initializer_range=hf.get("initializer_range", 0.02), dtype=dtype).validate()


def config_to_hf(cfg: model_lib.LlamaConfig, eos_token_id: int | None = None) -> dict:
  """A config.json that transformers 4 and 5 both read (both key styles written)."""
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.dim_per_head, "hidden_act": "silu",
      "max_position_embeddings": cfg.max_seq_len, "initializer_range": cfg.initializer_range,
      "rms_norm_eps": cfg.rms_norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
      "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False, "pretraining_tp": 1,
      "rope_theta": cfg.rope_theta, "rope_scaling": None,
      "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
      "bos_token_id": eos_token_id, "eos_token_id": eos_token_id, "pad_token_id": eos_token_id,
      "torch_dtype": "float32", "dtype": "float32", "use_cache": True,
  }


# ---------------------------------------------------------------------------- weights

def _hf_name(path: tuple, layer: int | None = None) -> tuple[str, bool]:
  """Our flat state path (and, inside the stacked layers, the layer index) -> (HF tensor name, needs transpose)."""
  if path == ("embed_tokens",):
    return "model.embed_tokens.weight", False
  if path == ("norm", "weight"):
    return "model.norm.weight", False
  if path == ("lm_head", "kernel"):
    return "lm_head.weight", True
  if path[0] == "layers" and layer is not None:
    rest = ".".join(str(p) for p in path[1:])
    if rest.endswith(".kernel"):
      return f"model.layers.{layer}.{rest[:-len('.kernel')]}.weight", True
    return f"model.layers.{layer}.{rest}", False
  raise ValueError(f"unmapped parameter {path}")


def _key(path) -> tuple:
  return tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)


def from_tensors(cfg: model_lib.LlamaConfig, tensors: dict[str, np.ndarray], source: str) -> model_lib.Llama:
  """Builds our model from HF-named tensors (any float dtype; stored as float32); per-layer tensors are stacked."""
  graphdef, state = model_lib.abstract_model(cfg)

  def one(path, shape, layer=None):
    name, transpose = _hf_name(path, layer)
    if name not in tensors:
      raise DataError(f"{source}: missing tensor {name}")
    value = np.asarray(tensors[name], dtype=np.float32)
    value = value.T if transpose else value
    if value.shape != shape:
      raise DataError(f"{source}: tensor {name} has shape {value.shape}, expected {shape} from config.json")
    return value

  def take(path, abstract):
    path = _key(path)
    if path[0] == "layers":
      return jnp.asarray(np.stack([one(path, abstract.shape[1:], i) for i in range(cfg.num_layers)]))
    return jnp.asarray(one(path, abstract.shape))

  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(take, model_lib.pure_dict(state)))


def to_tensors(model: model_lib.Llama) -> dict[str, np.ndarray]:
  """HF-named float32 numpy tensors of our model (the stacked layers as one tensor per layer)."""
  out = {}
  leaves, _ = jax.tree_util.tree_flatten_with_path(model_lib.pure_dict(nnx.state(model, nnx.Param)))
  for path, value in leaves:
    path = _key(path)
    value = np.asarray(jax.device_get(value), dtype=np.float32)
    for layer, v in (enumerate(value) if path[0] == "layers" else [(None, value)]):
      name, transpose = _hf_name(path, layer)
      out[name] = np.ascontiguousarray(v.T if transpose else v)
  return out


def _read_safetensors(directory: pathlib.Path) -> dict[str, np.ndarray]:
  files = sorted(directory.glob("*.safetensors"))
  if not files:
    raise DataError(f"{directory}: no *.safetensors file (pytorch_model.bin is not supported; re-save with safe_serialization)")
  tensors = {}
  for f in files:
    try:
      with safe_open(str(f), framework="flax") as st:
        for k in st.keys():
          tensors[k] = np.asarray(st.get_tensor(k).astype(jnp.float32))
    except Exception as e:  # corrupt or truncated file
      raise DataError(f"{f}: cannot read safetensors ({e})") from e
  return tensors


# ---------------------------------------------------------------------------- load

def load_hf_dir(directory: str | os.PathLike, dtype: str = "float32"):
  """(model, tokenizer or None) from a HF LlamaForCausalLM directory."""
  directory = pathlib.Path(directory)
  cfg_path = directory / "config.json"
  if not cfg_path.exists():
    raise DataError(f"{directory}: no config.json (not a Hugging Face model directory)")
  try:
    hf_cfg = json.loads(cfg_path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{cfg_path}: invalid JSON ({e})") from e
  if not isinstance(hf_cfg, dict):
    raise DataError(f"{cfg_path}: not a model config (a JSON {type(hf_cfg).__name__}, not an object)")
  cfg = config_from_hf(hf_cfg, dtype, source=str(directory))
  model = from_tensors(cfg, _read_safetensors(directory), str(directory))
  return model, load_tokenizer(directory, cfg.vocab_size)


def load_tokenizer(directory: str | os.PathLike, vocab_size: int | None = None):
  """A transformers fast tokenizer from `directory` (None if it has none).

  Raises if the tokenizer has more tokens than the model's embedding table.
  """
  directory = pathlib.Path(directory)
  if not (directory / "tokenizer.json").exists() and not (directory / "tokenizer.model").exists():
    return None
  from transformers import AutoTokenizer  # heavy (torch-backed): imported when a tokenizer is loaded
  tok = AutoTokenizer.from_pretrained(str(directory))
  if vocab_size is not None and len(tok) > vocab_size:
    raise ConfigError(f"{directory}: tokenizer has {len(tok)} tokens but the model's vocabulary is {vocab_size}; "
                      "they do not belong together")
  return tok


def is_hf_dir(path: pathlib.Path) -> bool:
  """A HF model directory: config.json beside safetensors (a run directory of ours has neither)."""
  return (path / "config.json").exists() and (any(path.glob("*.safetensors")) or not (path / "checkpoints").exists())


def load(spec: str, dtype: str = "float32"):
  """(model, tokenizer or None) from a HF dir, one of our checkpoints, or `hf:<repo>`."""
  if not spec:
    raise ConfigError("config.init_from: empty; give a HF model directory, a checkpoint of ours, or hf:<repo id>")
  if spec.startswith("hf:"):
    return load_hf_dir(_download(spec[3:]), dtype)
  path = pathlib.Path(spec).expanduser()
  if not path.exists():
    raise DataError(f"config.init_from: path does not exist: {path}")
  if is_hf_dir(path):
    return load_hf_dir(path, dtype)
  model, tokenizer_dir = checkpoint.load_model(path, dtype)
  return model, None if tokenizer_dir is None else load_tokenizer(tokenizer_dir, model.cfg.vocab_size)


def _download(repo_id: str) -> pathlib.Path:
  try:
    from huggingface_hub import snapshot_download  # only when downloading from the hub
    return pathlib.Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "tokenizer*"]))
  except Exception as e:
    raise LlamalogueError(f"hf:{repo_id}: cannot download from the Hugging Face hub ({type(e).__name__}); "
                          "offline? download it elsewhere and pass the directory") from e


# ---------------------------------------------------------------------------- export

def export(model: model_lib.Llama, out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None) -> pathlib.Path:
  """Writes a directory that transformers' AutoModelForCausalLM (and AutoTokenizer) load.

  Written to a temporary sibling directory first, then renamed: never half-written.
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp", dir=out_dir.parent))
  try:
    eos = None
    if tokenizer_dir is not None:
      for name in TOKENIZER_FILES:
        if (pathlib.Path(tokenizer_dir) / name).exists():
          shutil.copy2(pathlib.Path(tokenizer_dir) / name, tmp / name)
      tok = load_tokenizer(tmp, model.cfg.vocab_size)
      eos = tok.eos_token_id if tok is not None else None
    save_file(to_tensors(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(config_to_hf(model.cfg, eos), indent=2))
    gen = {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos}
    (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
    if out_dir.exists():
      shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
  return out_dir


def tokenizer_dir_for(spec: str, tokenizer, workdir) -> pathlib.Path:
  """The tokenizer files of model `spec` for a fine-tuning run's checkpoints: found beside it, or saved
  from the loaded `tokenizer` into `workdir/tokenizer_src` (a hub model, say)."""
  found = _find_tokenizer_dir(spec)
  if found is not None:
    return found
  out = pathlib.Path(workdir) / "tokenizer_src"
  if distributed.is_lead():
    tokenizer.save_pretrained(str(out))
  distributed.barrier("tokenizer files")
  return out


def _find_tokenizer_dir(spec: str) -> pathlib.Path | None:
  """The directory holding tokenizer.json for a HF dir or one of our checkpoints."""
  path = pathlib.Path(spec)
  for candidate in [path, *path.parents][:5]:
    for sub in (candidate, candidate / "tokenizer", candidate / "data"):
      if (sub / "tokenizer.json").exists():
        return sub
  return None


def run_export(config: Any, workdir: str) -> None:
  """`export` mode: config.init_from -> a HF directory in `workdir`."""
  model, _ = load(config.init_from)
  tok_dir = config.get("tokenizer_dir") or _find_tokenizer_dir(config.init_from)
  out = export(model, pathlib.Path(workdir), tok_dir)
  print(f"exported {config.init_from} -> {out} ({model_lib.count_params(model.cfg):,} parameters"
        f"{', with tokenizer' if tok_dir else ', no tokenizer found'})")
