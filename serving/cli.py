"""The `pagedjax` command line: argparse subcommands, one module each.

A command module defines `run(args) -> int` and either `register(subparsers)`
(adds its own parser) or `NAME`, `HELP` and `add_arguments(parser)`.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from serving.help_format import HelpFormatter

COMMANDS = [
    "serving.commands.generate",
    "serving.commands.convert",
    "serving.commands.serve",
    "serving.commands.sweep",
    "serving.commands.simulate",
    "serving.commands.client",
    "serving.commands.batch",
    "serving.commands.bench",
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


_VERBOSE_HELP = "log progress and timings (absl INFO) to stderr"


def _add_command(subparsers, module) -> argparse.ArgumentParser:
  if hasattr(module, "register"):
    return module.register(subparsers)
  doc = (module.__doc__ or module.HELP).strip()
  parser = subparsers.add_parser(module.NAME, help=module.HELP, description=doc,
                                 formatter_class=HelpFormatter)
  module.add_arguments(parser)
  parser.set_defaults(_run=module.run)
  return parser


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="pagedjax", description=_DESCRIPTION, formatter_class=HelpFormatter)
  parser.add_argument("-v", "--verbose", action="store_true", help=_VERBOSE_HELP)
  subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
  subparsers.required = True
  for name in COMMANDS:
    try:
      module = importlib.import_module(name)
    except ModuleNotFoundError as e:
      if e.name != name:  # a real missing dependency, not a missing command
        raise
      continue
    sub = _add_command(subparsers, module)
    # NOTE: SUPPRESS: a -v before the command is kept when none follows it.
    sub.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                     help=f"{_VERBOSE_HELP} (default: off; also accepted before the command)")
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
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv:  # NOTE: no command: the whole help, as a usage error (exit 2)
    parser.print_help(sys.stderr)
    print("pagedjax: error: give a COMMAND (see above)", file=sys.stderr)
    return 2
  args = parser.parse_args(argv)
  _setup_logging(args.verbose)
  # NOTE: every engine turns the persistent compilation cache on itself
  # (engine/compile_cache.py: --compilation-cache-dir, $PAGEDJAX_COMPILATION_CACHE_DIR).
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
