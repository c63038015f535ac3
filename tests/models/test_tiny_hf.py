"""Tiny random Llama / Qwen2 written by transformers' save_pretrained: our HF
folder loader and decoder reproduce transformers' logits."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from models import load_model
from models.reference import reference_generate, reference_logits
from tests.oracle.client import run_oracle

_BASE = dict(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=16,
             max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1,
             eos_token_id=2, pad_token_id=0)
MODELS = {
    # untied, GQA, sharded safetensors (index.json)
    "llama": dict(arch="llama", max_shard_size="100KB",
                  config=dict(_BASE, tie_word_embeddings=False, rope_theta=10000.0)),
    # Llama-3 rope scaling; original context small so it matters at short range
    "llama_rope3": dict(arch="llama", config=dict(
        _BASE, tie_word_embeddings=False, rope_theta=10000.0,
        rope_scaling=dict(rope_type="llama3", factor=4.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=32))),
    # tied embeddings, QKV bias, 1e6 theta
    "qwen2": dict(arch="qwen2", config=dict(
        _BASE, tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6,
        num_key_value_heads=1)),
}
PROMPTS = [[1, 5, 17, 33, 4, 90, 12, 7, 64, 3, 3, 3, 50, 21, 8, 9, 10, 11, 60, 61],
           [1, 40], list(range(3, 95, 2))]
# float32 on both sides; measured max diffs are ~1e-6.
ATOL = 2e-5


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
  root = tmp_path_factory.mktemp("tiny_hf")
  spec = {"models": [dict(m, name=name, out_dir=str(root / name), prompts=PROMPTS)
                     for name, m in MODELS.items()]}
  _, logits = run_oracle("tiny", spec, str(root))
  return root, logits


@pytest.mark.parametrize("name", list(MODELS))
def test_logits_match_transformers(tiny_models, name):
  root, logits = tiny_models
  loaded = load_model(str(root / name))
  assert loaded.config.architecture == MODELS[name]["arch"]
  for i, ids in enumerate(PROMPTS):
    ours = reference_logits(loaded.config, loaded.params, ids)
    theirs = logits[f"{name}_full_{i}"]
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=ATOL, rtol=0)


def test_sharded_index_was_used(tiny_models):
  root, _ = tiny_models
  assert os.path.isfile(root / "llama" / "model.safetensors.index.json")


def test_rope_scaling_is_applied(tiny_models):
  """Without the scaling the logits must differ clearly: the test can fail."""
  root, logits = tiny_models
  loaded = load_model(str(root / "llama_rope3"))
  assert loaded.config.rope_scaling is not None
  plain = dataclasses.replace(loaded.config, rope_scaling=None)
  ours = reference_logits(plain, loaded.params, PROMPTS[2])
  assert np.max(np.abs(ours - logits["llama_rope3_full_2"])) > 100 * ATOL


def test_incremental_decode_matches_full_forward(tiny_models):
  """Greedy decode through the cache picks the full forward's argmax each step."""
  root, _ = tiny_models
  loaded = load_model(str(root / "qwen2"))
  prompt = PROMPTS[0]
  out = reference_generate(loaded.config, loaded.params, prompt, 12)
  full = reference_logits(loaded.config, loaded.params, prompt + out[:-1])
  assert list(np.argmax(full[len(prompt) - 1:], axis=-1)) == out
