"""Fused q/k/v and gate/up weights (models/fused.py): same model, one matmul each."""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from models.config import ModelConfig
from models.fused import fuse_projections, fused_groups, unfuse_projections
from models.reference import reference_logits
from models.weights.random_init import random_params
from tests.models.helpers import TINY_HF_CONFIG

QWEN_LIKE = dict(TINY_HF_CONFIG, architectures=["Qwen2ForCausalLM"], model_type="qwen2",
                 num_attention_heads=8, num_key_value_heads=4)


def _model(hf_config: dict, bias: bool):
  cfg = dataclasses.replace(ModelConfig.from_hf_config(hf_config), attention_bias=bias)
  params = random_params(cfg, seed=3)
  if bias:   # random_init zeroes biases; make them matter
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: x + rng.normal(size=x.shape).astype(x.dtype)
        if str(getattr(p[-1], "key", "")) == "bias" else x, params)
  return cfg, params


@pytest.mark.parametrize("hf_config,bias,groups", [(TINY_HF_CONFIG, False, 1),
                                                   (TINY_HF_CONFIG, False, 2),
                                                   (QWEN_LIKE, True, 4)])
def test_fused_model_gives_the_same_logits_and_unfuses_exactly(hf_config, bias, groups):
  cfg, params = _model(hf_config, bias)
  fused = fuse_projections(params, cfg, groups)
  attn, mlp = fused["layers"]["attn"], fused["layers"]["mlp"]
  assert "q_proj" not in attn and "gate_proj" not in mlp
  layers = cfg.num_layers
  assert attn["qkv_kernel"].shape == (layers, cfg.hidden_size, groups,
                                      (cfg.num_heads + 2 * cfg.num_kv_heads) // groups
                                      * cfg.head_dim)
  assert mlp["gate_up_kernel"].shape == (layers, cfg.hidden_size, groups, 2,
                                         cfg.intermediate_size // groups)
  assert ("qkv_bias" in attn) == bias and fused_groups(fused) == groups
  tokens = [3, 17, 9, 40, 2, 33, 5]
  want = reference_logits(cfg, params, tokens)
  np.testing.assert_allclose(reference_logits(cfg, fused, tokens), want, atol=2e-5, rtol=1e-5)
  # Group g of layer 1's fused kernel holds shard g's q heads (here: the last group's).
  q_cols, g = cfg.num_heads // groups * cfg.head_dim, groups - 1
  np.testing.assert_array_equal(attn["qkv_kernel"][1, :, g, :q_cols],
                                params["layers"]["attn"]["q_proj"]["kernel"][1, :, g * q_cols:])
  # ... and layer 1's gate and up columns of shard g.
  inter = cfg.intermediate_size // groups
  for c, name in enumerate(("gate_proj", "up_proj")):
    np.testing.assert_array_equal(mlp["gate_up_kernel"][1, :, g, c],
                                  params["layers"]["mlp"][name]["kernel"][1, :, g * inter:])
  back = unfuse_projections(fused, cfg)
  assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)


def test_fuse_is_idempotent_regroups_and_validates():
  cfg, params = _model(TINY_HF_CONFIG, False)
  one = fuse_projections(params, cfg, 1)
  assert fuse_projections(one, cfg, 1) is one
  two = fuse_projections(one, cfg, 2)
  jax.tree_util.tree_map(np.testing.assert_array_equal, two, fuse_projections(params, cfg, 2))
  with pytest.raises(ValueError, match="num_heads"):
    fuse_projections(params, cfg, 3)
