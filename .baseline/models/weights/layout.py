"""The param tree layout and its mapping from HF tensor names.

Our tree (Flax linen names), with HF's `[out, in]` matrices transposed to
Flax's `[in, out]` kernels:
  embed [vocab, hidden]; lm_head [hidden, vocab] (untied only);
  final_norm/scale; layers_{i}/{attn_norm,mlp_norm}/scale;
  layers_{i}/attn/{q,k,v,o}_proj/kernel (+ q/k/v bias for Qwen2);
  layers_{i}/mlp/{gate,up,down}_proj/kernel.
"""
from __future__ import annotations

from typing import Callable, Iterator

import jax.numpy as jnp
import numpy as np

from models.config import ModelConfig
from models.errors import ModelLoadError

# (our path, HF name, transpose)
Entry = tuple[tuple[str, ...], str, bool]


def param_entries(config: ModelConfig) -> Iterator[Entry]:
  """Every param of the model: its tree path, HF tensor name, and whether the
  HF matrix must be transposed."""
  yield ("embed",), "model.embed_tokens.weight", False
  for i in range(config.num_layers):
    hf, ours = f"model.layers.{i}.", f"layers_{i}"
    yield (ours, "attn_norm", "scale"), hf + "input_layernorm.weight", False
    yield (ours, "mlp_norm", "scale"), hf + "post_attention_layernorm.weight", False
    for p in ("q", "k", "v", "o"):
      yield (ours, "attn", f"{p}_proj", "kernel"), hf + f"self_attn.{p}_proj.weight", True
      if config.attention_bias and p != "o":
        yield (ours, "attn", f"{p}_proj", "bias"), hf + f"self_attn.{p}_proj.bias", False
    for p in ("gate", "up", "down"):
      yield (ours, "mlp", f"{p}_proj", "kernel"), hf + f"mlp.{p}_proj.weight", True
  yield ("final_norm", "scale"), "model.norm.weight", False
  if not config.tie_word_embeddings:
    yield ("lm_head",), "lm_head.weight", True


def expected_shape(config: ModelConfig, path: tuple[str, ...]) -> tuple[int, ...]:
  """The shape of one param in our layout."""
  c = config
  q_dim, kv_dim = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
  leaf = path[-1]
  if path == ("embed",):
    return (c.vocab_size, c.hidden_size)
  if path == ("lm_head",):
    return (c.hidden_size, c.vocab_size)
  if leaf == "scale":
    return (c.hidden_size,)
  name = path[-2]
  io = {"q_proj": (c.hidden_size, q_dim), "k_proj": (c.hidden_size, kv_dim),
        "v_proj": (c.hidden_size, kv_dim), "o_proj": (q_dim, c.hidden_size),
        "gate_proj": (c.hidden_size, c.intermediate_size),
        "up_proj": (c.hidden_size, c.intermediate_size),
        "down_proj": (c.intermediate_size, c.hidden_size)}[name]
  return io if leaf == "kernel" else (io[1],)


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def build_params(config: ModelConfig, get_tensor: Callable[[str], np.ndarray | None],
                 dtype: jnp.dtype, source: str) -> dict:
  """Builds our param tree from HF-named tensors.

  `get_tensor(hf_name)` returns the HF-layout array or None when absent.
  Raises ModelLoadError naming `source` on a missing tensor or a shape mismatch.
  """
  params: dict = {}
  for path, hf_name, transpose in param_entries(config):
    arr = get_tensor(hf_name)
    if arr is None:
      raise ModelLoadError(f"{source}: missing tensor {hf_name}")
    arr = np.asarray(arr)
    if transpose:
      arr = arr.T
    want = expected_shape(config, path)
    if tuple(arr.shape) != want:
      raise ModelLoadError(f"{source}: shape mismatch for {hf_name}: weights have "
                           f"{tuple(arr.shape)}, config expects {want}")
    set_path(params, path, jnp.asarray(arr, dtype=dtype))
  return params
