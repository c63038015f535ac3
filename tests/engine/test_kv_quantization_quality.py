"""What an 8-bit KV cache does to SmolLM2's next-token distributions (issue 15).

Teacher forcing (engine/teacher_forcing.py) over 20 chat prompts x 64 tokens: the
bf16-cache engine picks the continuation greedily, and the 8-bit caches are fed the same
tokens, through the decode seam (one token a step) and through the prefill seam (chunks
of 16). Each position's logits are compared with the bf16 cache's: top-1 agreement
>= 97 % and mean KL(bf16 || 8-bit) <= 0.01 nats, the issue's targets. Measured
2026-12 on CPU (float32 compute): int8 99.0 % / 0.0010 nats, float8_e4m3 97.5 % /
0.0048 (decode), 97.3 % / 0.0048 (chunked); see docs/kernels.md.
"""
from __future__ import annotations

import numpy as np
import pytest

from engine import teacher_forcing as tf
from pallas_kernels import quantization

QUESTIONS = [
    "What is the capital of France?", "Write a poem about the sea.",
    "Explain photosynthesis to a child.", "How do I reverse a list in Python?",
    "Give me three tips for better sleep.", "What causes rain?",
    "Summarize the plot of Romeo and Juliet.", "Why is the sky blue?",
    "Translate 'good morning' into Spanish and French.", "What is 17 times 23?",
    "Describe a cat in two sentences.", "List the planets of the solar system.",
    "What is machine learning?", "Write a haiku about autumn.",
    "How does a bicycle stay upright?", "Tell me a fun fact about octopuses.",
    "What should I pack for a weekend hiking trip?", "Explain what a prime number is.",
    "Who wrote Pride and Prejudice?", "How do vaccines work?"]
NUM_TOKENS = 64
TOP1, KL = 0.97, 0.01


@pytest.fixture(scope="module")
def prompts(smollm2_model):
  tok = smollm2_model.tokenizer
  return [tok.encode_chat([{"role": "user", "content": q}]) for q in QUESTIONS]


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
  assert got["positions"] == len(QUESTIONS) * NUM_TOKENS
  assert got["top1_agreement"] >= TOP1, got
  assert got["mean_kl"] <= KL, got
  # The 8-bit cache was the one read: it holds 8-bit values, and the logits moved.
  assert isinstance(forced.cache, quantization.QuantizedKV)
  assert forced.cache.values.dtype == quantization.storage_dtype(name)
  assert got["mean_kl"] > 1e-5


def test_teacher_forcing_reproduces_the_free_run(smollm2_model, prompts, bf16):
  """Forced on its own continuation the bf16 cache gives the logits it picked them from
  (decode), and chunked prefill agrees with decode to rounding."""
  seams = tf.engine_seams(smollm2_model.config, "bfloat16")
  again = tf.logits(smollm2_model, seams, prompts, NUM_TOKENS,
                    continuations=bf16.continuations)
  np.testing.assert_array_equal(again.logits, bf16.logits)
  chunked = tf.logits(smollm2_model, seams, prompts, NUM_TOKENS,
                      continuations=bf16.continuations, mode="chunked")
  got = tf.agreement(bf16.logits, chunked.logits)
  assert got["top1_agreement"] >= 0.99 and got["mean_kl"] < 1e-4, got
  # The continuations are real text, not a repeated token.
  assert min(len(set(row)) for row in bf16.continuations.tolist()) > 5
