"""Opening GGUF files and reading their model metadata into a ModelConfig."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from models.config import SUPPORTED_ARCHITECTURES, ModelConfig, RopeScaling
from models.errors import ModelLoadError


def open_gguf(path: str | os.PathLike):
  """Opens a GGUF file, turning every reader failure into a ModelLoadError."""
  import gguf
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ModelLoadError(f"{path}: file not found")
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # the reader raises many types on bad bytes
    detail = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ModelLoadError(f"{path}: not a valid GGUF file (truncated or corrupt?): "
                         f"{detail}") from None


def field(reader, key: str, default: Any = None) -> Any:
  """A metadata value (scalar, string or list), or `default` when absent."""
  f = reader.fields.get(key)
  if f is None:
    return default
  return f.contents()


def config_from_gguf(reader_or_path) -> ModelConfig:
  """Builds a ModelConfig from a GGUF file's `{arch}.*` and tokenizer metadata."""
  reader = reader_or_path
  if isinstance(reader_or_path, (str, os.PathLike)):
    reader = open_gguf(reader_or_path)
  path = getattr(reader, "data", None)
  name = getattr(path, "filename", None) or str(reader_or_path)
  arch = field(reader, "general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ModelLoadError(f"{name}: unsupported architecture {arch!r} "
                         f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})")
  a = lambda k, d=None: field(reader, f"{arch}.{k}", d)
  try:
    hidden, heads = int(a("embedding_length")), int(a("attention.head_count"))
    tensor_names = {t.name for t in reader.tensors}
    eos = field(reader, "tokenizer.ggml.eos_token_id")
    return ModelConfig(
        vocab_size=int(a("vocab_size") or len(field(reader, "tokenizer.ggml.tokens") or ())),
        hidden_size=hidden,
        intermediate_size=int(a("feed_forward_length")),
        num_layers=int(a("block_count")),
        num_heads=heads,
        num_kv_heads=int(a("attention.head_count_kv", heads)),
        head_dim=int(a("attention.key_length", hidden // heads)),
        rms_norm_eps=float(a("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(a("rope.freq_base", 10000.0)),
        rope_scaling=_rope_scaling(reader, arch, hidden // heads, name),
        max_position_embeddings=int(a("context_length", 2048)),
        tie_word_embeddings="output.weight" not in tensor_names,
        attention_bias=(arch == "qwen2"),
        bos_token_id=field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),),
        architecture=arch,
    )
  except (TypeError, ValueError) as e:
    raise ModelLoadError(f"{name}: bad GGUF model metadata: {e}") from None


def _rope_scaling(reader, arch: str, head_dim: int, name: str) -> RopeScaling | None:
  """Recovers Llama-3 rope scaling from a GGUF's `rope_freqs.weight` factors.

  llama.cpp stores the per-frequency divisors rather than the HF parameters; we
  accept the file when the divisors match Llama-3 scaling for some standard
  parameters, and refuse it otherwise (silently ignoring it would be wrong).
  """
  kind = field(reader, f"{arch}.rope.scaling.type")
  if kind not in (None, "none"):
    raise ModelLoadError(f"{name}: unsupported rope scaling type {kind!r}")
  tensor = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
  if tensor is None:
    return None
  from models.layers import rope_inv_freq
  divisors = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
  theta = float(field(reader, f"{arch}.rope.freq_base", 10000.0))
  head_dim = int(field(reader, f"{arch}.rope.dimension_count", head_dim))
  orig = int(field(reader, f"{arch}.rope.scaling.original_context_length", 8192))
  for factor in (float(field(reader, f"{arch}.rope.scaling.factor", 8.0)), 8.0, 16.0, 32.0):
    rs = RopeScaling(factor, 1.0, 4.0, orig)
    base = ModelConfig(1, head_dim, 1, 1, 1, 1, head_dim, rope_theta=theta)
    ratio = rope_inv_freq(base) / rope_inv_freq(
        ModelConfig(1, head_dim, 1, 1, 1, 1, head_dim, rope_theta=theta, rope_scaling=rs))
    if ratio.shape == divisors.shape and np.allclose(ratio, divisors, rtol=1e-3):
      return rs
  raise ModelLoadError(f"{name}: rope_freqs.weight does not match Llama-3 rope scaling")
