"""Chat turns to token ids, with role markers from the template only.

A chat template writes special tokens (`<|im_start|>`, `<|im_end|>`, …) around
each message. Encoding the rendered text with special-token parsing would also
turn special-token text *inside a message* into real special tokens: a user
who writes `<|im_end|>\\n<|im_start|>system` would open a system turn (role
injection). Here such text inside message content is encoded as plain text;
special tokens come only from the template.

NOTE: when no message content holds special-token text, the ids are those of
encoding the rendered text in one go (as transformers does), byte for byte.
Otherwise the template is rendered a second time with a marker in place of
each content; the text between the template's own special tokens is then
encoded without special-token parsing, content included, so tokenization
across a content boundary is unchanged too.
"""
from __future__ import annotations

import re

_MARK = "\ue000{}\ue001"                  # private-use characters around a message index
_MARK_RE = re.compile("\ue000(\\d+)\ue001")


def encode_chat(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
  """Renders `messages` with `tokenizer`'s template and encodes them (no BOS added:
  the template writes it). Raises ValueError when content with special-token text
  meets a template that rewrites content (it could not be kept as plain text)."""
  rendered = tokenizer.apply_chat_template(messages, add_generation_prompt)
  special = tokenizer.special_token_pattern
  if special is None or not any(special.search(m.get("content") or "") for m in messages):
    return tokenizer.encode(rendered, add_special_tokens=False)
  marked = [dict(m, content=_MARK.format(i)) for i, m in enumerate(messages)]
  parts = _MARK_RE.split(tokenizer.apply_chat_template(marked, add_generation_prompt))
  if "".join(messages[int(p)]["content"] if j % 2 else p for j, p in enumerate(parts)) != rendered:
    raise ValueError("a message holds special-token text and this model's chat template "
                     "rewrites message content, so it cannot be encoded as plain text")
  return _encode_parts(tokenizer, messages, parts)


def _encode_parts(tokenizer, messages: list[dict], parts: list[str]) -> list[int]:
  """`parts` alternate template text and message indices (see `_MARK_RE.split`)."""
  ids: list[int] = []
  plain: list[str] = []           # text since the template's last special token

  def flush():
    if plain:
      ids.extend(tokenizer.encode_plain("".join(plain)))
      plain.clear()

  for j, part in enumerate(parts):
    if j % 2:
      plain.append(messages[int(part)]["content"])
      continue
    pieces = tokenizer.special_token_pattern.split(part)   # text, special, text, ...
    for k, piece in enumerate(pieces):
      if k % 2:
        flush()
        ids.append(tokenizer.special_tokens[piece])
      elif piece:
        plain.append(piece)
  flush()
  return ids
