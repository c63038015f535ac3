"""Our own converted checkpoint: orbax params + config.json + tokenizer files."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp

from models.config import ModelConfig
from models.errors import ModelLoadError
from models.weights.layout import expected_shape, param_entries, set_path

MARKER = "pagedjax_checkpoint.json"
_FORMAT_VERSION = 1


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
  import orbax.checkpoint as ocp
  folder = os.path.abspath(folder)
  config = ModelConfig.from_json(os.path.join(folder, "config.json"))
  target: dict = {}
  for path, _, _ in param_entries(config):
    set_path(target, path, jax.ShapeDtypeStruct(expected_shape(config, path), dtype))
  try:
    with ocp.StandardCheckpointer() as ckpt:
      params = ckpt.restore(os.path.join(folder, "params"), target)
  except Exception as e:
    raise ModelLoadError(f"{folder}: cannot restore checkpoint (does it match "
                         f"config.json?): {str(e).splitlines()[0]}") from None
  return config, jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), params)
