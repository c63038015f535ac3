"""Incremental detokenization: never broken UTF-8, concatenation == decode()."""
from __future__ import annotations

import pytest

from models.tokenizer import IncrementalDetokenizer

TEXTS = [
    "Emoji 😀🎉👍🏽 and a family 👨‍👩‍👧‍👦 and flags 🇯🇵.",
    "中文文本，日本語のテキスト、한국어 텍스트。",
    "Crème brûlée — naïve « café » ∑ ∫ ≠ ✓",
    "def f(x):\n    return x  # ok\n\n\n   spaces",
]


@pytest.mark.parametrize("text", TEXTS)
def test_one_token_at_a_time(smollm2_model, text):
  tok = smollm2_model.tokenizer
  ids = tok.encode(text, add_special_tokens=False)
  # NOTE: the non-ASCII texts must really split characters across byte
  # tokens, or the test would not exercise the hold-back path.
  assert text.isascii() or any("\ufffd" in tok.decode([i]) for i in ids)
  detok = IncrementalDetokenizer(tok)
  deltas = [detok.push([i]) for i in ids]
  assert all("\ufffd" not in d for d in deltas)
  assert "".join(deltas) == detok.text == tok.decode(ids) == text


def test_chunks_and_special_tokens(smollm2_model):
  tok = smollm2_model.tokenizer
  text = "<|im_start|>assistant\nHi 👋 世界<|im_end|>"
  ids = tok.encode(text, add_special_tokens=False)
  detok = IncrementalDetokenizer(tok)
  out = "".join(detok.push(ids[i:i + 3]) for i in range(0, len(ids), 3))
  assert out == tok.decode(ids) == "assistant\nHi 👋 世界"


def test_held_back_until_complete_then_flush(smollm2_model):
  tok = smollm2_model.tokenizer
  ids = tok.encode("😀", add_special_tokens=False)
  assert len(ids) > 1
  detok = IncrementalDetokenizer(tok)
  assert detok.push(ids[:-1]) == ""
  assert detok.push(ids[-1:]) == "😀"
  # An incomplete tail is only emitted by flush (as U+FFFD), at end of stream.
  detok2 = IncrementalDetokenizer(tok)
  assert detok2.push(ids[:1]) == ""
  assert detok2.flush() == tok.decode(ids[:1])
