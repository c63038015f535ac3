"""What an 8-bit KV cache does to SmolLM2's next-token distributions (issue 15).

Teacher forcing (engine/teacher_forcing.py) over its 20 chat prompts x 64 tokens: the
bf16-cache engine picks the continuation greedily, and the 8-bit caches are fed the same
tokens, through the decode seam (one token a step) and through the prefill seam (chunks
of 16). Each position's logits are compared with the bf16 cache's: top-1 agreement
>= 97 % and mean KL(bf16 || 8-bit) <= 0.01 nats, the issue's targets. Measured
2026-12-04 on CPU (float32 compute, a Sapphire Rapids Xeon): int8 99.1 % / 0.0010 nats
(decode), 99.5 % / 0.0010 (chunked); float8_e4m3 97.7 % / 0.0031 (decode), 97.2 % /
0.0032 (chunked); see docs/kernels.md. NOTE: e4m3's top-1 sits near the target: with
its old scale (max / 448, no search over grid shifts) this CPU measured 96.8 % in decode
where the one before measured 97.5 % (the bf16 continuations and near-ties move with the
CPU's float rounding; 1,280 positions give about +-0.5 %).
"""
from __future__ import annotations

import pytest

from engine import teacher_forcing as tf
from pallas_kernels import quantization

NUM_TOKENS = tf.QUALITY_TOKENS
TOP1, KL = 0.97, 0.01


@pytest.fixture(scope="module")
def prompts(smollm2_model):
  return tf.quality_prompts(smollm2_model.tokenizer)


@pytest.fixture(scope="module")
def bf16(smollm2_model, prompts):
  """The bf16-cache engine's greedy continuations and the logits that picked them."""
  return tf.logits(smollm2_model, tf.engine_seams(smollm2_model.config, "bfloat16"), prompts,
                   NUM_TOKENS, pick=lambda logits: logits.argmax(-1))


@pytest.mark.parametrize("mode", ["decode", "chunked"])
@pytest.mark.parametrize("name", ["int8", "float8_e4m3"])
def test_8bit_cache_keeps_the_next_token_distribution(smollm2_model, prompts, bf16, name, mode):
  forced = tf.logits(smollm2_model, tf.engine_seams(smollm2_model.config, name), prompts,
                     NUM_TOKENS, continuations=bf16.continuations, mode=mode)
  got = tf.agreement(bf16.logits, forced.logits)
  print(name, mode, got)
  assert got["positions"] == len(prompts) * NUM_TOKENS
  assert got["top1_agreement"] >= TOP1, got
  assert got["mean_kl"] <= KL, got
  # The 8-bit cache was the one read: it holds 8-bit values, and the logits moved.
  assert isinstance(forced.cache, quantization.QuantizedKV)
  assert forced.cache.values.dtype == quantization.storage_dtype(name)
  assert got["mean_kl"] > 1e-5


def test_chunked_prefill_agrees_with_decode(smollm2_model, prompts, bf16):
  """The harness's two paths: the bf16 cache forced through chunked prefill gives the
  logits its greedy decode run picked from, to rounding (float32 compute)."""
  chunked = tf.logits(smollm2_model, tf.engine_seams(smollm2_model.config, "bfloat16"),
                      prompts, NUM_TOKENS, continuations=bf16.continuations, mode="chunked")
  got = tf.agreement(bf16.logits, chunked.logits)
  assert got["top1_agreement"] >= 0.99 and got["mean_kl"] < 1e-4, got
  # The continuations are text, not one repeated token.
  assert min(len(set(row)) for row in bf16.continuations.tolist()) > 5
