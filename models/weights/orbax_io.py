"""Our own converted checkpoint: orbax params + config.json + tokenizer files.

Format 2 stores the param tree as the engine holds it, decoder layers stacked
(models/weights/layout.py); format 1 (before 2026-12) stored one subtree per
layer (`layers_{i}`) and is still read: its layers are stacked on load.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp

from models.config import ModelConfig
from models.errors import ModelLoadError
from models.weights.layout import (expected_shape, legacy_entries, param_entries, set_path,
                                   stack_legacy)

MARKER = "pagedjax_checkpoint.json"
_FORMAT_VERSION = 2
_LEGACY_VERSION = 1       # one subtree per layer


def is_checkpoint(folder: str) -> bool:
  return os.path.isfile(os.path.join(folder, MARKER))


def save_checkpoint(folder: str, config: ModelConfig, params: dict, tokenizer=None) -> None:
  """Writes params (orbax), config.json, the tokenizer files and a marker."""
  import orbax.checkpoint as ocp
  folder = os.path.abspath(folder)
  if os.path.exists(os.path.join(folder, "params")):
    raise ValueError(f"{folder}: already holds a checkpoint; choose an empty folder")
  os.makedirs(folder, exist_ok=True)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(os.path.join(folder, "params"), params)
  with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config.to_hf_config(), f, indent=1)
  if tokenizer is not None:
    tokenizer.save(folder)
  dtype = str(jax.tree_util.tree_leaves(params)[0].dtype)
  with open(os.path.join(folder, MARKER), "w", encoding="utf-8") as f:
    json.dump({"format_version": _FORMAT_VERSION, "dtype": dtype}, f)


def load_checkpoint(folder: str, dtype: jnp.dtype = jnp.float32) -> tuple[ModelConfig, dict]:
  """Restores (config, params) written by save_checkpoint, cast to `dtype`."""
  folder = os.path.abspath(folder)
  config = ModelConfig.from_json(os.path.join(folder, "config.json"))
  version = _format_version(folder)
  target: dict = {}
  if version == _FORMAT_VERSION:
    for path, _, _ in param_entries(config):
      set_path(target, path, jax.ShapeDtypeStruct(expected_shape(config, path), dtype))
    return config, jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype),
                                          _restore(folder, target))
  for path, _, _, shape in legacy_entries(config):
    set_path(target, path, jax.ShapeDtypeStruct(shape, dtype))
  return config, stack_legacy(config, _restore(folder, target), dtype, folder)


def _format_version(folder: str) -> int:
  try:
    with open(os.path.join(folder, MARKER), encoding="utf-8") as f:
      version = json.load(f).get("format_version", _LEGACY_VERSION)
  except (OSError, ValueError, AttributeError) as e:
    raise ModelLoadError(f"{folder}: unreadable {MARKER}: {e}") from None
  if version not in (_LEGACY_VERSION, _FORMAT_VERSION):
    raise ModelLoadError(f"{folder}: checkpoint format {version} is not supported (this "
                         f"pagedjax reads formats {_LEGACY_VERSION} and {_FORMAT_VERSION})")
  return version


def _restore(folder: str, target: dict) -> dict:
  import orbax.checkpoint as ocp
  try:
    with ocp.StandardCheckpointer() as ckpt:
      return ckpt.restore(os.path.join(folder, "params"), target)
  except Exception as e:
    raise ModelLoadError(f"{folder}: cannot restore checkpoint (does it match "
                         f"config.json?): {str(e).splitlines()[0]}") from None
