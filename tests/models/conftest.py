"""Oracle fixtures: transformers results computed once per session."""
from __future__ import annotations

import pytest

from tests.oracle.client import run_oracle

# Tokenizer parity texts: accents, CJK, emoji (multi-codepoint too), code,
# runs of spaces/newlines/tabs, digits, special tokens written in the text.
TOKENIZER_TEXTS = [
    "Hello, world!",
    "Crème brûlée, naïve café, Ångström, São Paulo, Œuvre, façade.",
    "日本語のテキストと中文文本，还有한국어도 있어요。",
    "Emoji: 😀🎉👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 and ❤️‍🔥",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\tif x != 0: pass\n",
    "spaces:    four,        eight\n\n\nthree newlines\r\n\t\ttabs   end   ",
    "Numbers 1234567890 3.14159 1e-9 -42 0x1F",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "   leading and trailing   ",
    "",
]
# Logits parity prompts (raw text, no template), varied in length and content.
LOGIT_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "<|im_start|>user\nWhy is the sky blue?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village nestled between two mountains, there lived an old "
    "clockmaker who had never once left the valley. Every morning he",
    "1, 1, 2, 3, 5, 8, 13,",
    "Traduire en français : « Le chat dort. » →",
]
CHATS = [
    {"messages": [{"role": "user", "content": "Why is the sky blue?"}],
     "add_generation_prompt": True},
    {"messages": [{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "Hi 👋"},
                  {"role": "assistant", "content": "Hello."},
                  {"role": "user", "content": "Write code:\n  x = 1"}],
     "add_generation_prompt": True},
    {"messages": [{"role": "user", "content": "Ça va ?"}], "add_generation_prompt": False},
]
GREEDY_STEPS = 32


@pytest.fixture(scope="session")
def gguf_chat_prompt_ids(smollm2_model):
  tok = smollm2_model.tokenizer
  return [tok.encode(tok.apply_chat_template(c["messages"]), add_special_tokens=False)
          for c in CHATS[:2]] + [tok.encode(LOGIT_PROMPTS[3], add_special_tokens=False)]


@pytest.fixture(scope="session")
def gguf_oracle(smollm2_path, gguf_chat_prompt_ids, tmp_path_factory):
  """transformers' view of the default GGUF (one load per session, ~25 s)."""
  spec = {"gguf": smollm2_path, "texts": TOKENIZER_TEXTS, "prompts": LOGIT_PROMPTS,
          "chats": CHATS, "generate": gguf_chat_prompt_ids, "steps": GREEDY_STEPS}
  return run_oracle("gguf", spec, str(tmp_path_factory.mktemp("oracle_gguf")))
