"""Builds a `tokenizers` tokenizer from GGUF tokenizer metadata (GPT-2 BPE)."""
from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from models.errors import ModelLoadError
from models.weights.gguf_meta import field

# llama.cpp token types (gguf.TokenType).
_CONTROL, _USER_DEFINED = 3, 4


def tokenizer_from_gguf(reader, path: str):
  """Returns (tokenizers.Tokenizer, chat_template | None, bos_id, eos_id).

  Only byte-level BPE (`tokenizer.ggml.model == "gpt2"`, as SmolLM2, Llama-3
  and Qwen2 use) is supported.
  """
  kind = field(reader, "tokenizer.ggml.model")
  if kind != "gpt2":
    raise ModelLoadError(f"{path}: unsupported GGUF tokenizer model {kind!r} "
                         "(only byte-level BPE 'gpt2')")
  tokens = list(field(reader, "tokenizer.ggml.tokens") or [])
  merges = list(field(reader, "tokenizer.ggml.merges") or [])
  types = list(field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens))
  if not tokens or len(types) != len(tokens):
    raise ModelLoadError(f"{path}: GGUF tokenizer vocabulary is missing or inconsistent")
  vocab = {tok: i for i, tok in enumerate(tokens)}
  pairs = [tuple(m.split(" ", 1)) for m in merges]
  tk = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False,
                           ignore_merges=False))
  tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tk.decoder = decoders.ByteLevel()
  specials = [AddedToken(tokens[i], special=(t == _CONTROL), normalized=False)
              for i, t in enumerate(types) if t in (_CONTROL, _USER_DEFINED)]
  tk.add_special_tokens([s for s in specials if s.special])
  tk.add_tokens([s for s in specials if not s.special])
  bos = field(reader, "tokenizer.ggml.bos_token_id")
  eos = field(reader, "tokenizer.ggml.eos_token_id")
  if field(reader, "tokenizer.ggml.add_bos_token", False) and bos is not None:
    tk.post_processor = processors.TemplateProcessing(
        single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A {tokens[bos]} $B",
        special_tokens=[(tokens[bos], bos)])
  else:
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
  return tk, field(reader, "tokenizer.chat_template"), bos, eos
