"""The tokenizer: encode/decode, BOS/EOS ids and the model's chat template."""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import tokenizers

from models.chat_template import render_chat
from models.detokenizer import IncrementalDetokenizer
from models.errors import ModelLoadError

__all__ = ["Tokenizer", "IncrementalDetokenizer"]


class Tokenizer:
  """Wraps a `tokenizers.Tokenizer` with the model's special tokens and template."""

  def __init__(self, backend: tokenizers.Tokenizer, *, bos_token_id: int | None,
               eos_token_ids: Sequence[int], chat_template: str | None = None):
    self.backend = backend
    self.bos_token_id = bos_token_id
    self.eos_token_ids = tuple(int(t) for t in eos_token_ids)
    self.chat_template = chat_template

  @property
  def vocab_size(self) -> int:
    return self.backend.get_vocab_size(with_added_tokens=True)

  def _token(self, token_id: int | None) -> str | None:
    return None if token_id is None else self.backend.id_to_token(token_id)

  @property
  def bos_token(self) -> str | None:
    return self._token(self.bos_token_id)

  @property
  def eos_token(self) -> str | None:
    return self._token(self.eos_token_ids[0]) if self.eos_token_ids else None

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    if not isinstance(text, str):
      raise ValueError(f"text must be a str, got {type(text).__name__}")
    return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True
                          ) -> str:
    """Renders messages with the model's own template (sandboxed jinja2)."""
    if not self.chat_template:
      raise ValueError("this model has no chat template; use a raw prompt")
    return render_chat(self.chat_template, messages, add_generation_prompt,
                       bos_token=self.bos_token or "", eos_token=self.eos_token or "")

  @classmethod
  def from_gguf(cls, reader, path: str) -> "Tokenizer":
    from models.gguf_tokenizer import tokenizer_from_gguf
    backend, template, bos, eos = tokenizer_from_gguf(reader, path)
    return cls(backend, bos_token_id=bos, eos_token_ids=() if eos is None else (eos,),
               chat_template=template)

  @classmethod
  def from_dir(cls, folder: str | os.PathLike, eos_token_ids: Sequence[int] = ()
               ) -> "Tokenizer":
    """From an HF folder: tokenizer.json plus tokenizer_config.json if present."""
    path = os.path.join(folder, "tokenizer.json")
    try:
      backend = tokenizers.Tokenizer.from_file(path)
    except Exception as e:
      raise ModelLoadError(f"{path}: cannot load tokenizer: {str(e).splitlines()[0]}") from None
    cfg = _read_json(os.path.join(folder, "tokenizer_config.json"))
    template = cfg.get("chat_template")
    if template is None and os.path.isfile(os.path.join(folder, "chat_template.jinja")):
      with open(os.path.join(folder, "chat_template.jinja"), encoding="utf-8") as f:
        template = f.read()
    if isinstance(template, list):  # named templates: take the default one
      template = next((t["template"] for t in template if t.get("name") == "default"), None)
    bos = _token_id(backend, cfg.get("bos_token"))
    eos = _token_id(backend, cfg.get("eos_token"))
    eos_ids = tuple(eos_token_ids) or (() if eos is None else (eos,))
    return cls(backend, bos_token_id=bos, eos_token_ids=eos_ids, chat_template=template)

  def save(self, folder: str | os.PathLike) -> None:
    """Writes tokenizer.json and tokenizer_config.json (for `pagedjax convert`)."""
    self.backend.save(os.path.join(folder, "tokenizer.json"))
    cfg = {"bos_token": self.bos_token, "eos_token": self.eos_token,
           "chat_template": self.chat_template}
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
      json.dump(cfg, f, ensure_ascii=False, indent=1)


def _read_json(path: str) -> dict[str, Any]:
  if not os.path.isfile(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ModelLoadError(f"{path}: cannot read JSON: {e}") from None


def _token_id(backend: tokenizers.Tokenizer, token: Any) -> int | None:
  if isinstance(token, dict):  # AddedToken serialized as a dict
    token = token.get("content")
  return None if token is None else backend.token_to_id(token)
