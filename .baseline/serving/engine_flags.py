"""Engine command-line flags shared by `pagedjax serve`, `batch` and `generate`.

One definition of every `EngineConfig` flag, so the subcommands cannot drift
apart. Flags a user does not pass are left out of the namespace
(`argparse.SUPPRESS`), so `EngineConfig`'s own defaults stay the single source
of truth.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

# (flag, EngineConfig field, type, help). `bool` fields become --x/--no-x.
_ENGINE_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--model", "model", str,
     "GGUF file or model directory (default: the bundled SmolLM2-135M-Instruct)"),
    ("--dtype", "dtype", str, "compute dtype of the weights: float32 or bfloat16"),
    ("--kv-cache-dtype", "kv_cache_dtype", str, "KV-cache dtype (default: --dtype)"),
    ("--block-size", "block_size", int, "tokens per KV-cache block"),
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
     "reuse KV blocks of shared prompt prefixes"),
    ("--enable-chunked-prefill", "enable_chunked_prefill", bool,
     "split long prompts over several steps"),
    ("--allocator", "allocator", str, "KV-cache allocator: paged or contiguous"),
    ("--watermark", "watermark", float,
     "fraction of KV blocks kept free when admitting new requests"),
    ("--max-model-len", "max_model_len", int,
     "longest prompt + output (default: the model's context length)"),
    ("--warmup", "warmup", bool, "compile every shape bucket at start-up"),
    # NOTE: --engine-seed, since --seed is the per-request sampling seed.
    ("--engine-seed", "seed", int, "draws the seeds of requests that give none"),
    ("--attention-backend", "attention_backend", str,
     "attention implementation (default: chosen for the platform)"),
    ("--tensor-parallel", "tensor_parallel", int,
     "devices to split weights and KV heads over (must divide the KV heads)"),
    ("--num-decode-steps", "num_decode_steps", int,
     "decode tokens per request per step while no prompt is being prefilled (multi-step "
     "decode: one host round trip per k tokens; 4-8 helps small models on a GPU)"),
)


def add_engine_args(parser: argparse.ArgumentParser) -> None:
  """Adds every engine flag to `parser`, in an "engine" argument group."""
  group = parser.add_argument_group("engine")
  # The vLLM-style spelling of --no-enable-prefix-caching.
  group.add_argument("--no-prefix-cache", dest="enable_prefix_caching", action="store_false",
                     default=argparse.SUPPRESS, help="turn prefix caching off")
  for flag, field, kind, help_text in _ENGINE_FLAGS:
    if kind is bool:
      group.add_argument(flag, dest=field, action=argparse.BooleanOptionalAction,
                         default=argparse.SUPPRESS, help=help_text)
    else:
      group.add_argument(flag, dest=field, type=kind, default=argparse.SUPPRESS,
                         help=help_text)


def engine_kwargs_from_args(args: argparse.Namespace) -> dict[str, Any]:
  """The engine fields the user set on the command line, by field name."""
  fields = [field for _, field, _, _ in _ENGINE_FLAGS]
  return {f: getattr(args, f) for f in fields if hasattr(args, f)}


def engine_config_from_args(args: argparse.Namespace, **overrides: Any):
  """Builds an `EngineConfig` from parsed flags (plus keyword overrides).

  Raises ValueError if a flag value is rejected by `EngineConfig`.
  """
  from engine import EngineConfig  # NOTE: lazy, so --help does not import JAX.

  kwargs = engine_kwargs_from_args(args)
  kwargs.update(overrides)
  known = {f.name for f in dataclasses.fields(EngineConfig)}
  unknown = sorted(set(kwargs) - known)
  if unknown:
    raise ValueError(f"EngineConfig has no field(s) {unknown}")
  return EngineConfig(**kwargs)
