"""The param tree layout and its mapping from HF tensor names.

Our tree (Flax linen names), with HF's `[out, in]` matrices transposed to
Flax's `[in, out]` kernels and the decoder layers stacked on a leading axis:
  embed [vocab, hidden]; lm_head [hidden, vocab] (untied only);
  final_norm/scale [hidden];
  layers/{attn_norm,mlp_norm}/scale [L, hidden];
  layers/attn/{q,k,v,o}_proj/kernel [L, in, out] (+ q/k/v bias [L, out] for Qwen2);
  layers/mlp/{gate,up,down}_proj/kernel [L, in, out].

NOTE: row i of every `layers` leaf is decoder layer i (HF's `model.layers.{i}`):
the model runs the layers with `jax.lax.scan` over that axis (models/llama.py),
so it is compiled once, not once per layer. `build_params` is the one place
that stacks per-layer tensors.
"""
from __future__ import annotations

from typing import Callable, Iterator

import jax.numpy as jnp
import numpy as np

from models.config import ModelConfig
from models.errors import ModelLoadError

LAYERS = "layers"

# (our leaf path, HF name, transpose); a `layers` leaf's HF name holds "{i}".
Entry = tuple[tuple[str, ...], str, bool]


def param_entries(config: ModelConfig) -> Iterator[Entry]:
  """Every leaf of the tree: its path, HF tensor name (a "{i}" template for the
  stacked layer leaves), and whether the HF matrix must be transposed."""
  yield ("embed",), "model.embed_tokens.weight", False
  hf = "model.layers.{i}."
  yield (LAYERS, "attn_norm", "scale"), hf + "input_layernorm.weight", False
  yield (LAYERS, "mlp_norm", "scale"), hf + "post_attention_layernorm.weight", False
  for p in ("q", "k", "v", "o"):
    yield (LAYERS, "attn", f"{p}_proj", "kernel"), hf + f"self_attn.{p}_proj.weight", True
    if config.attention_bias and p != "o":
      yield (LAYERS, "attn", f"{p}_proj", "bias"), hf + f"self_attn.{p}_proj.bias", False
  for p in ("gate", "up", "down"):
    yield (LAYERS, "mlp", f"{p}_proj", "kernel"), hf + f"mlp.{p}_proj.weight", True
  yield ("final_norm", "scale"), "model.norm.weight", False
  if not config.tie_word_embeddings:
    yield ("lm_head",), "lm_head.weight", True


def is_layer_leaf(path: tuple[str, ...]) -> bool:
  return path[0] == LAYERS


def hf_tensors(config: ModelConfig) -> Iterator[tuple[str, tuple[int, ...], bool]]:
  """Every HF tensor: (name, shape in our layout, transpose), layer by layer."""
  for path, hf_name, transpose in param_entries(config):
    if is_layer_leaf(path):
      for i in range(config.num_layers):
        yield hf_name.format(i=i), tensor_shape(config, path), transpose
    else:
      yield hf_name, tensor_shape(config, path), transpose


def tensor_shape(config: ModelConfig, path: tuple[str, ...]) -> tuple[int, ...]:
  """The shape of one layer's tensor (of the leaf itself outside `layers`), our layout."""
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


def expected_shape(config: ModelConfig, path: tuple[str, ...]) -> tuple[int, ...]:
  """The shape of one leaf of our tree (stacked: [L, ...] under `layers`)."""
  shape = tensor_shape(config, path)
  return (config.num_layers,) + shape if is_layer_leaf(path) else shape


def set_path(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def get_path(tree: dict, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def _read(get_tensor, hf_name: str, transpose: bool, want: tuple[int, ...],
          source: str) -> np.ndarray:
  arr = get_tensor(hf_name)
  if arr is None:
    raise ModelLoadError(f"{source}: missing tensor {hf_name}")
  arr = np.asarray(arr)
  if transpose:
    arr = arr.T
  if tuple(arr.shape) != want:
    raise ModelLoadError(f"{source}: shape mismatch for {hf_name}: weights have "
                         f"{tuple(arr.shape)}, config expects {want}")
  return arr


def build_params(config: ModelConfig, get_tensor: Callable[[str], np.ndarray | None],
                 dtype: jnp.dtype, source: str) -> dict:
  """Builds our (stacked) param tree from HF-named tensors.

  `get_tensor(hf_name)` returns the HF-layout array or None when absent.
  Raises ModelLoadError naming `source` on a missing tensor or a shape mismatch.
  NOTE: a layer leaf is filled on the host, layer by layer, in `dtype`, and
  then becomes one array: the host holds one stacked leaf at a time.
  """
  params: dict = {}
  for path, hf_name, transpose in param_entries(config):
    want = tensor_shape(config, path)
    if is_layer_leaf(path):
      value = np.empty((config.num_layers,) + want, dtype)
      for i in range(config.num_layers):
        value[i] = _read(get_tensor, hf_name.format(i=i), transpose, want, source)
    else:
      value = _read(get_tensor, hf_name, transpose, want, source)
    set_path(params, path, jnp.asarray(value, dtype=dtype))
  return params


def legacy_layer_key(i: int) -> str:
  """The per-layer subtree name of the old, unstacked layout (`pagedjax convert` format 1)."""
  return f"layers_{i}"


def legacy_entries(config: ModelConfig) -> Iterator[tuple[tuple[str, ...], str, bool,
                                                          tuple[int, ...]]]:
  """(path in the old per-layer tree, HF name, transpose, shape) of every HF tensor."""
  for path, hf_name, transpose in param_entries(config):
    shape = tensor_shape(config, path)
    if is_layer_leaf(path):
      for i in range(config.num_layers):
        yield (legacy_layer_key(i),) + path[1:], hf_name.format(i=i), transpose, shape
    else:
      yield path, hf_name, transpose, shape


def stack_legacy(config: ModelConfig, tree: dict, dtype: jnp.dtype, source: str) -> dict:
  """Our tree from one in the old per-layer layout (`layers_{i}/...`), via `build_params`."""
  where = {hf_name: (path, transpose) for path, hf_name, transpose, _ in legacy_entries(config)}

  def get_tensor(hf_name: str):
    path, transpose = where[hf_name]
    arr = np.asarray(get_path(tree, path))
    return arr.T if transpose else arr      # NOTE: back to HF's layout; build_params undoes it
  return build_params(config, get_tensor, dtype, source)
