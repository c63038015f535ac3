"""Loads a GGUF file's tensors into our param tree (dequantized, HF layout)."""
from __future__ import annotations

import os
import re

import jax.numpy as jnp
import numpy as np

from models.config import ModelConfig
from models.errors import ModelLoadError
from models.weights.gguf_meta import config_from_gguf, open_gguf
from models.weights.layout import build_params

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)$")


def hf_name(gguf_name: str) -> str | None:
  """The HF tensor name of a GGUF tensor name (None for tensors we don't use)."""
  if gguf_name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[gguf_name]
  m = _BLOCK_RE.match(gguf_name)
  if m and m.group(2) in _BLOCK_NAMES:
    return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"
  return None


def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
  """Undoes llama.cpp's Q/K row permutation (interleaved rotary pairs back to
  HF's half-split layout). w is [out, ...] with out = n_heads * head_dim."""
  out = w.shape[0]
  return (w.reshape(n_heads, out // n_heads // 2, 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def dequantize(tensor, path: str) -> np.ndarray:
  """A GGUF tensor as float32 numpy, in numpy (row-major, HF) shape."""
  from gguf import quants
  try:
    arr = quants.dequantize(tensor.data, tensor.tensor_type)
  except NotImplementedError:
    raise ModelLoadError(f"{path}: tensor {tensor.name} has unsupported quantization "
                         f"{tensor.tensor_type.name}") from None
  except Exception as e:
    raise ModelLoadError(f"{path}: cannot read tensor {tensor.name} "
                         f"(truncated or corrupt?): {e}") from None
  want = tuple(int(d) for d in reversed(tensor.shape))
  if arr.size != int(np.prod(want)):
    raise ModelLoadError(f"{path}: tensor {tensor.name} has {arr.size} values, "
                         f"header says {want}")
  return arr.reshape(want).astype(np.float32, copy=False)


def load_gguf(path: str | os.PathLike, dtype: jnp.dtype = jnp.float32
              ) -> tuple[ModelConfig, dict, object]:
  """Reads a GGUF file. Returns (config, params, reader)."""
  path = os.fspath(path)
  reader = open_gguf(path)
  config = config_from_gguf(reader)
  by_hf = {}
  for t in reader.tensors:
    name = hf_name(t.name)
    if name is not None:
      by_hf[name] = t
  # NOTE: llama.cpp's convert script permutes Q/K rows only for the llama arch.
  permute = {"q_proj": config.num_heads, "k_proj": config.num_kv_heads} \
      if config.architecture == "llama" else {}

  def get_tensor(name: str) -> np.ndarray | None:
    t = by_hf.get(name)
    if t is None:
      return None
    arr = dequantize(t, path)
    for proj, heads in permute.items():
      if f".{proj}." in name:
        arr = unpermute_rows(arr, heads)
    return arr

  return config, build_params(config, get_tensor, dtype, path), reader
