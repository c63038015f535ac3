"""Tensor parallelism: the device mesh, Megatron-style param shardings, the sharded KV cache.

One engine = one 1-D mesh `("tp",)` over its first N devices, built per engine
(no global state, so engines with different N live in one process). Weights
are split Megatron-style and XLA's SPMD partitioner inserts the collectives:

  qkv_kernel        [hidden, N, cols / N]        split on axis 1 (each shard's heads)
  o_proj kernel     [heads*head_dim, hidden]     split on rows    -> all-reduce
  gate_up_kernel    [hidden, N, 2, inter / N]    split on axis 1
  down_proj         [intermediate, hidden]       split on rows    -> all-reduce
  norms, embed, lm_head                          replicated

(the engine serves the fused projections of models/fused.py, grouped by
shard; the canonical q/k/v and gate/up kernels split on columns the same way)

so each decoder layer costs two all-reduces of [tokens, hidden]. The paged
attention kernels know nothing of meshes: `shard_attention` runs them per
shard inside `jax.shard_map`, each device seeing its own heads and its own
slice of the KV cache `[num_blocks, kv_heads / N, 2, block_size, head_dim]`.
Block tables, slots and lengths are replicated: one scheduler serves all shards.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from models.fused import fuse_projections

AXIS = "tp"

# NOTE: the head axis of q/k/v ([T, heads, head_dim]) and the kv-head axis of a
# layer cache ([num_blocks, kv_heads, 2, block_size, head_dim]) are split.
HEADS_SPEC = P(None, AXIS, None)
CACHE_SPEC = P(None, AXIS, None, None, None)

# The leaf name of each split kernel / bias, and the axis split.
_COLUMN_SPLIT = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
_ROW_SPLIT = ("o_proj", "down_proj")


def validate_tensor_parallel(model_config, tensor_parallel: int,
                             num_devices: int | None = None) -> None:
  """Raises ValueError unless `tensor_parallel` evenly splits the model over present devices."""
  n = int(tensor_parallel)
  if n < 1:
    raise ValueError(f"tensor_parallel must be >= 1, got {tensor_parallel}")
  present = len(jax.devices()) if num_devices is None else num_devices
  if n > present:
    raise ValueError(f"tensor_parallel={n} exceeds the {present} device(s) present "
                     f"({jax.default_backend()})")
  c = model_config
  for name, size in (("num_kv_heads", c.num_kv_heads), ("num_heads", c.num_heads),
                     ("intermediate_size", c.intermediate_size)):
    if size % n:
      raise ValueError(f"tensor_parallel={n} does not divide the model's {name} ({size}); "
                       f"choose a divisor of {c.num_kv_heads} (num_kv_heads)")


def make_mesh(tensor_parallel: int, devices=None) -> Mesh | None:
  """A 1-D mesh `("tp",)` over the first `tensor_parallel` devices; None for 1 (no sharding)."""
  if tensor_parallel == 1:
    return None
  devices = list(jax.devices() if devices is None else devices)
  if not 1 <= tensor_parallel <= len(devices):
    raise ValueError(f"tensor_parallel={tensor_parallel} exceeds the {len(devices)} "
                     "device(s) present")
  # NOTE: Auto axes: XLA's partitioner propagates shardings through the
  # unannotated model code (Explicit axes would demand annotations everywhere).
  return Mesh(np.asarray(devices[:tensor_parallel]), (AXIS,), axis_types=(AxisType.Auto,))


# Fused leaves (models/fused.py): the shard-group axis 1 (axis 0 of the bias) is split.
_FUSED_SPECS = {"qkv_kernel": P(None, AXIS, None), "qkv_bias": P(AXIS, None),
                "gate_up_kernel": P(None, AXIS, None, None)}


def param_spec(path: tuple[str, ...], ndim: int) -> P:
  """The PartitionSpec of one param, from its tree path (see models/weights/layout.py)."""
  if path and path[-1] in _FUSED_SPECS:
    return _FUSED_SPECS[path[-1]]
  layer = path[-2] if len(path) >= 2 else ""
  if layer in _COLUMN_SPLIT:
    return P(None, AXIS) if ndim == 2 else P(AXIS)      # kernel [in, out]; bias [out]
  if layer in _ROW_SPLIT and ndim == 2:
    return P(AXIS, None)
  return P()                                           # norms, embed, lm_head, o_proj bias


def _key_names(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", k)) for k in path)


def param_shardings(params, mesh: Mesh):
  """A pytree of NamedShardings matching `params` (works on arrays or ShapeDtypeStructs)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: NamedSharding(mesh, param_spec(_key_names(path), len(x.shape))), params)


def shard_params(params, mesh: Mesh | None):
  """Places every leaf on its devices, leaf by leaf (each device gets only its slice).

  NOTE: a host (CPU-resident or numpy) leaf is copied straight into its
  shards; no device ever holds the full model. Leaves already placed as
  asked are returned unchanged.
  """
  if mesh is None:
    return params
  shardings = param_shardings(params, mesh)
  return jax.tree_util.tree_map(jax.device_put, params, shardings)


def cache_sharding(mesh: Mesh) -> NamedSharding:
  """Each device holds its kv heads' slice of every block."""
  return NamedSharding(mesh, CACHE_SPEC)


def load_model_sharded(model: str | None, dtype: str, mesh: Mesh | None):
  """`models.load_model`, with params placed straight onto the mesh.

  The loaders build arrays on JAX's default device; under a mesh they are
  built on the host (CPU) device instead and then copied shard by shard, so
  the full model is held once in host memory and never on one accelerator.
  """
  from models import load_model
  if mesh is None:
    return place_model(load_model(model, dtype=dtype), None)
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    loaded = load_model(model, dtype=dtype)
    loaded = dataclasses.replace(loaded, params=fuse_projections(
        loaded.params, loaded.config, mesh.size))    # NOTE: fused on the host
  return place_model(loaded, mesh)


def place_model(model, mesh: Mesh | None):
  """A `LoadedModel` with fused projections (models/fused.py), sharded over `mesh`.

  Validated first; the input model is left intact.
  """
  n = 1 if mesh is None else mesh.size
  if mesh is not None:
    validate_tensor_parallel(model.config, n)
  params = fuse_projections(model.params, model.config, n)
  return dataclasses.replace(model, params=shard_params(params, mesh))


def shard_attention(attention_fn: Callable, mesh: Mesh, meta_keys: tuple[str, ...]) -> Callable:
  """Runs `attention_fn(q, k, v, layer_cache, meta)` per shard inside `jax.shard_map`.

  q/k/v are split on their head axis, the layer cache on its kv-head axis,
  every `meta` entry (block tables, slots, lengths, cu_q_lens) is replicated.
  NOTE: head h of q reads kv head h // (heads / kv_heads); contiguous splits
  keep each q head on the device of its kv head, as N divides kv_heads.
  """
  meta_specs = {k: P() for k in meta_keys}
  sharded = jax.shard_map(
      attention_fn, mesh=mesh,
      in_specs=(HEADS_SPEC, HEADS_SPEC, HEADS_SPEC, CACHE_SPEC, meta_specs),
      out_specs=(HEADS_SPEC, CACHE_SPEC),
      # NOTE: the Pallas kernels carry no varying-axis types; the specs above
      # are the contract, checked by the parity tests.
      check_vma=False)

  def wrapped(q, k, v, layer_cache, meta: dict[str, Any]):
    return sharded(q, k, v, layer_cache, {k_: meta[k_] for k_ in meta_keys})
  return wrapped
