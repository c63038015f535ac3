"""Engine command-line flags shared by `pagedjax serve`, `batch` and `generate`.

One definition of every `EngineConfig` flag, so the subcommands cannot drift
apart. Each flag's default is read from `EngineConfig`'s field, so the config
stays the single source of truth and `--help` shows it (fields whose default
is None say in their help what they become).
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from engine.config import EngineConfig  # NOTE: plain Python, no JAX: --help stays fast
from serving.help_format import name_flags

# (flag, EngineConfig field, type, help). `bool` fields become --x/--no-x.
_ENGINE_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--model", "model", str,
     "GGUF file or model directory (default: the bundled SmolLM2-135M-Instruct)"),
    ("--dtype", "dtype", str, "compute dtype of the weights: float32 or bfloat16"),
    ("--kv-cache-dtype", "kv_cache_dtype", str,
     "KV-cache dtype: auto (the same as --dtype), bfloat16, or 8-bit with a scale per "
     "token and KV head: float8_e4m3 or int8 (about half the bytes of bfloat16)"),
    ("--block-size", "block_size", int, "tokens per KV-cache block (a power of two, 8-256)"),
    ("--num-blocks", "num_blocks", int,
     "KV-cache blocks (default: sized from the memory budget below)"),
    ("--kv-cache-memory-fraction", "kv_cache_memory_fraction", float,
     "fraction of free accelerator memory for the KV cache (GPU)"),
    ("--kv-cache-memory-bytes", "kv_cache_memory_bytes", int,
     "KV-cache memory budget in bytes (CPU)"),
    ("--max-batch-tokens", "max_batch_tokens", int,
     "most tokens (prefill + decode) scheduled in one step"),
    ("--max-num-seqs", "max_num_seqs", int, "most requests running at once"),
    ("--enable-prefix-caching", "enable_prefix_caching", bool,
     "reuse KV blocks of shared prompt prefixes (--no-prefix-cache is the vLLM-style "
     "spelling of --no-enable-prefix-caching)"),
    ("--enable-chunked-prefill", "enable_chunked_prefill", bool,
     "split long prompts over several steps"),
    ("--allocator", "allocator", str, "KV-cache allocator: paged or contiguous"),
    ("--watermark", "watermark", float,
     "fraction of KV blocks kept free when admitting new requests"),
    ("--max-model-len", "max_model_len", int,
     "longest prompt + output (default: the least of the model's context length, 4096 and "
     "what the KV cache holds)"),
    ("--warmup", "warmup", bool, "compile every planned step shape at start-up"),
    ("--compilation-cache-dir", "compilation_cache_dir", str,
     "persistent XLA compilation cache; 'off': none (default: $PAGEDJAX_COMPILATION_CACHE_DIR, "
     "else $XDG_CACHE_HOME/pagedjax/xla or ~/.cache/pagedjax/xla)"),
    # NOTE: --engine-seed, since --seed is the per-request sampling seed.
    ("--engine-seed", "seed", int, "draws the seeds of requests that give none"),
    ("--attention-backend", "attention_backend", str,
     "attention implementation: triton, mosaic (Mosaic GPU prefill and decode) or xla "
     "(default: mosaic on Hopper GPUs, triton on other GPUs, xla elsewhere)"),
    ("--tensor-parallel", "tensor_parallel", int,
     "devices to split weights and KV heads over (must divide the KV heads)"),
    ("--num-decode-steps", "num_decode_steps", int,
     "decode tokens per request per step while no prompt is being prefilled (multi-step "
     "decode: one host round trip per k tokens; 4-8 helps small models on a GPU)"),
    ("--speculative-method", "speculative", str,
     "speculative decoding: 'ngram' proposes the next tokens by prompt lookup (copied from "
     "the request's own prompt and output) and verifies them in one step; the output is "
     "unchanged (default: none, each step decodes one token per request)"),
    ("--num-speculative-tokens", "num_speculative_tokens", int,
     "draft tokens verified per request per step, at most (with --speculative-method)"),
    ("--ngram-prompt-lookup-max", "ngram_prompt_lookup_max", int,
     "longest suffix of the request looked up for a match (tried first)"),
    ("--ngram-prompt-lookup-min", "ngram_prompt_lookup_min", int,
     "shortest suffix of the request that may match"),
)
_ALIASES = {"enable_prefix_caching": ("--no-prefix-cache",)}
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EngineConfig)}
FLAG_OF: dict[str, str] = {field: flag for flag, field, _, _ in _ENGINE_FLAGS}


class _Switch(argparse.BooleanOptionalAction):
  """--x/--no-x plus extra spellings of the same switch (`aliases`, each "--no-...")."""

  def __init__(self, option_strings, dest, aliases=(), **kwargs):
    super().__init__(option_strings, dest, **kwargs)
    # NOTE: the parser registers every string in option_strings after this
    # constructor, so an alias is the same action (one dest, one help line).
    self.option_strings = [*self.option_strings, *aliases]


def _dest(field: str) -> str:
  # NOTE: prefixed, so no engine flag shares a dest with a sampling flag (--seed).
  return "engine_" + field


def add_engine_args(parser: argparse.ArgumentParser, **defaults: Any) -> None:
  """Adds every engine flag to `parser`, in an "engine" argument group.

  `defaults` overrides `EngineConfig`'s default of a field for this command (serve warms
  up by default: `warmup=True`); help shows the command's own default.
  """
  group = parser.add_argument_group("engine")
  for flag, field, kind, help_text in _ENGINE_FLAGS:
    default = defaults.get(field, _DEFAULTS[field])
    if kind is bool:
      group.add_argument(flag, dest=_dest(field), action=_Switch, default=default,
                         aliases=_ALIASES.get(field, ()), help=help_text)
    else:
      group.add_argument(flag, dest=_dest(field), type=kind, default=default,
                         metavar=field.upper(), help=help_text)
  group.add_argument("--no-compilation-cache", dest=_dest("compilation_cache_dir"),
                     action="store_const", const="off", default=argparse.SUPPRESS,
                     help="turn the persistent XLA compilation cache off (default: the cache "
                          "is on; see --compilation-cache-dir)")


def engine_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
  """Every engine field of the parsed flags, by field name."""
  return {f: getattr(args, _dest(f)) for f in FLAG_OF if hasattr(args, _dest(f))}


def engine_config_from_args(args: argparse.Namespace, **overrides: Any) -> EngineConfig:
  """Builds an `EngineConfig` from parsed flags (plus keyword overrides).

  Raises ValueError, naming the flag, if a value is rejected by `EngineConfig`.
  """
  kwargs = engine_kwargs_from_args(args)
  kwargs.update(overrides)
  known = {f.name for f in dataclasses.fields(EngineConfig)}
  unknown = sorted(set(kwargs) - known)
  if unknown:
    raise ValueError(f"EngineConfig has no field(s) {unknown}")
  try:
    return EngineConfig(**kwargs)
  except ValueError as e:
    raise ValueError(name_flags(str(e), FLAG_OF)) from None
