"""Fused projection weights: q/k/v as one matrix, gate/up as one matrix.

The canonical param tree (what the loaders produce and `pagedjax convert`
writes) keeps HF's separate q/k/v and gate/up kernels. Served that way, XLA
merges the dots that share an input and concatenates their weights on every
step: measured on an H100 (2026-11-23), that copy alone took 1.0 ms of a
9 ms Llama-3-8B decode step. The engine therefore fuses them once, at load:

  attn/qkv_kernel     [hidden, G, (heads + 2 * kv_heads) / G * head_dim]
  attn/qkv_bias       [G, (heads + 2 * kv_heads) / G * head_dim]   (Qwen2 only)
  mlp/gate_up_kernel  [hidden, G, 2, intermediate / G]

G is the number of tensor-parallel shards: group g holds the q heads, kv
heads and MLP columns of shard g, so splitting axis 1 over the mesh gives
each device exactly its own columns. The model (models/llama.py,
models/layers.py) accepts either form.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from models.config import ModelConfig

_QKV = ("q_proj", "k_proj", "v_proj")


def fused_groups(params) -> int | None:
  """G of a fused param tree, None for the canonical (unfused) one."""
  attn = params["layers_0"]["attn"]
  return int(attn["qkv_kernel"].shape[1]) if "qkv_kernel" in attn else None


def _group(x: jax.Array, groups: int) -> jax.Array:
  """[..., n] -> [..., groups, n / groups]."""
  return x.reshape(x.shape[:-1] + (groups, x.shape[-1] // groups))


@functools.partial(jax.jit, static_argnames="groups")
def _fuse_layer(attn: dict, mlp: dict, groups: int) -> tuple[dict, dict]:
  attn, mlp = dict(attn), dict(mlp)
  parts = [attn.pop(p) for p in _QKV]
  attn["qkv_kernel"] = jnp.concatenate([_group(p["kernel"], groups) for p in parts], -1)
  if "bias" in parts[0]:
    attn["qkv_bias"] = jnp.concatenate([_group(p["bias"], groups) for p in parts], -1)
  gate, up = mlp.pop("gate_proj")["kernel"], mlp.pop("up_proj")["kernel"]
  mlp["gate_up_kernel"] = jnp.stack([_group(gate, groups), _group(up, groups)], axis=2)
  return attn, mlp


def _unfuse_layer(attn: dict, mlp: dict, config: ModelConfig) -> tuple[dict, dict]:
  attn, mlp = dict(attn), dict(mlp)
  w = attn.pop("qkv_kernel")                              # [hidden, G, n]
  bias = attn.pop("qkv_bias", None)                       # [G, n]
  g = w.shape[1]
  sizes = [config.num_heads // g * config.head_dim] + [config.num_kv_heads // g
                                                       * config.head_dim] * 2
  cuts = [sizes[0], sizes[0] + sizes[1]]
  for name, kernel in zip(_QKV, jnp.split(w, cuts, axis=-1)):
    attn[name] = {"kernel": kernel.reshape(w.shape[0], -1)}
  if bias is not None:
    for name, b in zip(_QKV, jnp.split(bias, cuts, axis=-1)):
      attn[name]["bias"] = b.reshape(-1)
  gu = mlp.pop("gate_up_kernel")                          # [hidden, G, 2, inter / G]
  mlp["gate_proj"] = {"kernel": gu[:, :, 0].reshape(gu.shape[0], -1)}
  mlp["up_proj"] = {"kernel": gu[:, :, 1].reshape(gu.shape[0], -1)}
  return attn, mlp


def _map_layers(params, config: ModelConfig, fn) -> dict:
  out = dict(params)
  for i in range(config.num_layers):
    layer = dict(params[f"layers_{i}"])
    layer["attn"], layer["mlp"] = fn(layer["attn"], layer["mlp"])
    out[f"layers_{i}"] = layer
  return out


def unfuse_projections(params, config: ModelConfig) -> dict:
  """The canonical param tree back from a fused one (as is if not fused)."""
  if fused_groups(params) is None:
    return params
  return _map_layers(params, config, lambda a, m: _unfuse_layer(a, m, config))


def fuse_projections(params, config: ModelConfig, groups: int = 1) -> dict:
  """The param tree with q/k/v and gate/up fused for `groups` shards (see module doc).

  Idempotent for the same `groups`; a tree fused for another G is regrouped.
  NOTE: new arrays are built layer by layer; the input tree is left intact.
  """
  for name, size in (("num_heads", config.num_heads), ("num_kv_heads", config.num_kv_heads),
                     ("intermediate_size", config.intermediate_size)):
    if size % groups:
      raise ValueError(f"{groups} groups do not divide the model's {name} ({size})")
  current = fused_groups(params)
  if current == groups:
    return params
  params = unfuse_projections(params, config)
  return _map_layers(params, config, lambda a, m: _fuse_layer(a, m, groups=groups))
