"""Parity of our GGUF path with transformers loading the same file (float32)."""
from __future__ import annotations

import numpy as np
import pytest

from models.reference import reference_generate, reference_logits
from tests.models.conftest import CHATS, GREEDY_STEPS, LOGIT_PROMPTS, TOKENIZER_TEXTS

# Measured max |ours - transformers| on the last-position logits: 3.5e-5 to
# 5.2e-5 over these prompts (2026-11-22, CPU float32). Logits are ~10-30 in
# magnitude, so any layout error (e.g. swapped K/V) is orders of magnitude over.
LOGIT_ATOL = 2e-4


@pytest.mark.parametrize("index", range(len(LOGIT_PROMPTS)))
def test_last_position_logits_match(smollm2_model, gguf_oracle, index):
  result, arrays = gguf_oracle
  ids = result["prompt_ids"][index]
  assert smollm2_model.tokenizer.encode(LOGIT_PROMPTS[index], add_special_tokens=False) == ids
  ours = reference_logits(smollm2_model.config, smollm2_model.params, ids)[-1]
  theirs = arrays[f"last_{index}"]
  diff = float(np.max(np.abs(ours - theirs)))
  print(f"prompt {index} ({len(ids)} tokens): max |dlogit| = {diff:.2e}")
  assert diff < LOGIT_ATOL
  assert int(np.argmax(ours)) == int(np.argmax(theirs))


def test_greedy_32_tokens_identical(smollm2_model, gguf_oracle, gguf_chat_prompt_ids):
  result, _ = gguf_oracle
  for ids, theirs in zip(gguf_chat_prompt_ids, result["generate"]):
    ours = reference_generate(smollm2_model.config, smollm2_model.params, ids,
                              GREEDY_STEPS, eos_token_ids=())
    assert len(theirs) == GREEDY_STEPS
    assert ours == theirs


def test_tokenizer_encode_decode_match(smollm2_model, gguf_oracle):
  result, _ = gguf_oracle
  tok = smollm2_model.tokenizer
  for text, ids, decoded in zip(TOKENIZER_TEXTS, result["encode"], result["decode"]):
    assert tok.encode(text, add_special_tokens=False) == ids, text
    assert tok.decode(ids) == decoded, text


def test_chat_template_identical(smollm2_model, gguf_oracle):
  result, _ = gguf_oracle
  tok = smollm2_model.tokenizer
  for chat, theirs in zip(CHATS, result["chats"]):
    assert tok.apply_chat_template(chat["messages"], chat["add_generation_prompt"]) == theirs


def test_special_token_ids(smollm2_model):
  tok = smollm2_model.tokenizer
  assert tok.bos_token_id == smollm2_model.config.bos_token_id == 1
  assert tok.eos_token_ids == smollm2_model.config.eos_token_ids == (2,)
  assert tok.vocab_size == smollm2_model.config.vocab_size == 49152
  assert tok.encode("<|im_end|>") == [2]
