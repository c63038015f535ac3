"""Loads an HF model folder: config.json plus one or more *.safetensors files."""
from __future__ import annotations

import glob
import json
import os

import jax.numpy as jnp
import numpy as np

from models.config import ModelConfig
from models.errors import ModelLoadError
from models.weights.layout import build_params

_INDEX = "model.safetensors.index.json"


def _shard_map(folder: str) -> dict[str, str]:
  """Maps each tensor name to the shard file that holds it."""
  from safetensors import safe_open
  index = os.path.join(folder, _INDEX)
  if os.path.isfile(index):
    try:
      with open(index, encoding="utf-8") as f:
        weight_map = json.load(f)["weight_map"]
    except (OSError, KeyError, json.JSONDecodeError) as e:
      raise ModelLoadError(f"{index}: bad safetensors index: {e}") from None
    return {name: os.path.join(folder, shard) for name, shard in weight_map.items()}
  files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
  if not files:
    raise ModelLoadError(f"{folder}: no *.safetensors files found")
  out = {}
  for path in files:
    try:
      with safe_open(path, framework="flax") as f:
        out.update({name: path for name in f.keys()})
    except Exception as e:
      raise ModelLoadError(f"{path}: cannot read safetensors: {str(e).splitlines()[0]}") from None
  return out


def load_hf_folder(folder: str, dtype: jnp.dtype = jnp.float32) -> tuple[ModelConfig, dict]:
  """Reads config.json and the safetensors weights. Returns (config, params)."""
  from safetensors import safe_open
  config = ModelConfig.from_json(os.path.join(folder, "config.json"))
  where = _shard_map(folder)
  handles: dict[str, object] = {}

  def get_tensor(name: str) -> np.ndarray | None:
    path = where.get(name)
    if path is None:
      return None
    try:
      if path not in handles:
        handles[path] = safe_open(path, framework="flax")
      return np.asarray(handles[path].get_tensor(name))
    except Exception as e:
      raise ModelLoadError(f"{path}: cannot read tensor {name}: "
                           f"{str(e).splitlines()[0]}") from None

  # NOTE: a tied model may still ship lm_head.weight; the tied config ignores it.
  return config, build_params(config, get_tensor, dtype, folder)
