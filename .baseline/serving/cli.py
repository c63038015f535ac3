"""The `pagedjax` command line: argparse subcommands, one module each.

A command module defines `run(args) -> int` and either `register(subparsers)`
(adds its own parser) or `NAME`, `HELP` and `add_arguments(parser)`.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

COMMANDS = [
    "serving.commands.generate",
    "serving.commands.convert",
    "serving.commands.serve",
    "serving.commands.sweep",
    "serving.commands.simulate",
    "serving.commands.client",
    "serving.commands.batch",
]

_DESCRIPTION = """\
pagedjax: LLM inference on JAX/XLA with paged attention.

examples:
  pagedjax generate "Why is the sky blue?"
  pagedjax convert model.gguf ./converted
  pagedjax <command> --help
"""


def _expected_errors() -> tuple[type[BaseException], ...]:
  from models.errors import ModelLoadError
  return (ModelLoadError, ValueError)


def _add_command(subparsers, module) -> None:
  if hasattr(module, "register"):
    module.register(subparsers)
    return
  doc = (module.__doc__ or module.HELP).strip()
  parser = subparsers.add_parser(module.NAME, help=module.HELP, description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
  module.add_arguments(parser)
  parser.set_defaults(_run=module.run)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="pagedjax", description=_DESCRIPTION,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("-v", "--verbose", action="store_true",
                      help="log progress and timings (absl INFO) to stderr")
  subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
  subparsers.required = True
  for name in COMMANDS:
    try:
      module = importlib.import_module(name)
    except ModuleNotFoundError as e:
      if e.name != name:  # a real missing dependency, not a missing command
        raise
      continue
    _add_command(subparsers, module)
  return parser


def _setup_logging(verbose: bool) -> None:
  from absl import flags, logging
  # NOTE: we never parse absl flags; marking them parsed silences absl's
  # "Logging before flag parsing" warning.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO if verbose else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of the `pagedjax` console script; returns the exit status."""
  parser = build_parser()
  args = parser.parse_args(argv)
  _setup_logging(args.verbose)
  # NOTE: compiled steps are cached on disk, so a second run skips compilation.
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                        os.path.join(os.path.expanduser("~"), ".cache", "pagedjax", "xla"))
  try:
    return int(args._run(args) or 0)
  except _expected_errors() as e:
    message = " ".join(str(e).split()) or type(e).__name__
    print(f"pagedjax: error: {message}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("pagedjax: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
