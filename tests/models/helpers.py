"""Test helpers: tiny configs and HF-layout folders written without torch."""
from __future__ import annotations

import json
import os

import numpy as np

from models.config import ModelConfig
from models.weights.layout import hf_tensors

TINY_HF_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 64,
    "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 128,
    "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
}


def write_json(path: str, obj: dict) -> str:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f)
  return path


def write_hf_folder(folder: str, hf_config: dict, weights_config: dict | None = None,
                    seed: int = 0) -> str:
  """Writes config.json (hf_config) and model.safetensors with random weights
  shaped for `weights_config` (defaults to hf_config)."""
  from safetensors.numpy import save_file
  os.makedirs(folder, exist_ok=True)
  cfg = ModelConfig.from_hf_config(weights_config or hf_config)
  rng = np.random.default_rng(seed)
  tensors = {}
  for name, shape, transpose in hf_tensors(cfg):
    arr = rng.normal(0, 0.05, shape).astype(np.float32)
    tensors[name] = np.ascontiguousarray(arr.T if transpose else arr)
  save_file(tensors, os.path.join(folder, "model.safetensors"))
  write_json(os.path.join(folder, "config.json"), hf_config)
  return folder
