"""How a prompt typed for `pagedjax generate`, `client` or `batch` becomes model input.

NOTE: the one rule of the commands: a plain prompt is a user message, and the
model's chat template is applied to it (a model without a template gets the
raw text); `--no-chat-template` feeds it as raw text. The APIs follow vLLM
instead: `LLM.generate` and the gRPC `prompt` field take raw text, `LLM.chat`
and `messages` take chat turns. An instruct model such as the bundled
SmolLM2 answers a raw question with an end-of-sequence token at once.
"""
from __future__ import annotations

import argparse

from engine.prompts import encode_prompt

CHAT_TEMPLATE_DEFAULT = True


def add_chat_template_arg(parser: argparse.ArgumentParser, what: str) -> None:
  """The shared --chat-template/--no-chat-template switch; `what` names the prompt."""
  parser.add_argument(
      "--chat-template", action=argparse.BooleanOptionalAction,
      default=CHAT_TEMPLATE_DEFAULT,
      help=f"treat {what} as a user message and apply the model's chat template "
           "(when it has one); --no-chat-template feeds it as raw text")


def check_prompt(prompt: str) -> None:
  """Refuses an empty prompt (the server refuses one too)."""
  if not prompt:
    raise ValueError("the prompt is empty: give a non-empty PROMPT")


def user_messages(prompt: str, system: str | None = None) -> list[dict[str, str]]:
  system_turn = [{"role": "system", "content": system}] if system else []
  return system_turn + [{"role": "user", "content": prompt}]


def prompt_token_ids(tokenizer, prompt: str, chat_template: bool) -> list[int]:
  """The ids of a command-line prompt under the rule above."""
  if tokenizer is None:
    raise ValueError("this model has no tokenizer; cannot encode a text prompt")
  if chat_template and tokenizer.chat_template:
    return encode_prompt(tokenizer, messages=user_messages(prompt))
  return encode_prompt(tokenizer, prompt)
