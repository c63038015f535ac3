"""`pagedjax convert`: any supported model -> our fast-loading orbax checkpoint."""
from __future__ import annotations

import argparse
import time

_EPILOG = """\
The output folder holds params/ (orbax), config.json, tokenizer.json,
tokenizer_config.json and pagedjax_checkpoint.json; pass it to --model.

examples:
  pagedjax convert ~/models/SmolLM2-135M-Instruct.Q4_1.gguf ./smollm2-f32
  pagedjax convert ./Llama-3.2-1B ./llama1b-bf16 --dtype bfloat16
  pagedjax convert random:llama3.2-1b ./rand1b
"""


def register(subparsers) -> None:
  parser = subparsers.add_parser(
      "convert", help="convert a GGUF / HF folder to a fast-loading checkpoint",
      description="Load a model (GGUF file, HF folder or random:<config>), "
                  "dequantize/cast it to --dtype and save it as an orbax checkpoint.",
      epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("src", help="a .gguf file, an HF folder, or random:<config-name>")
  parser.add_argument("dst", help="output folder (must not already hold a checkpoint)")
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                      help="dtype the params are stored in (default float32)")
  parser.set_defaults(_run=run)


def run(args: argparse.Namespace) -> int:
  from absl import logging

  from models import load_model
  from models.weights.orbax_io import save_checkpoint
  start = time.perf_counter()
  loaded = load_model(args.src, dtype=args.dtype)
  logging.info("loaded %s in %.1f s", loaded.source, time.perf_counter() - start)
  save_checkpoint(args.dst, loaded.config, loaded.params, loaded.tokenizer)
  print(f"wrote {args.dst} ({loaded.config.architecture}, {loaded.config.num_layers} "
        f"layers, {args.dtype}) in {time.perf_counter() - start:.1f} s")
  return 0
