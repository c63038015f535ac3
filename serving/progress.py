"""Progress of `pagedjax generate` and `batch` on stderr while the engine loads and compiles.

Loading, sizing the KV cache and compiling the first steps take from seconds
to a minute; these lines say what is happening. The engine already logs each
step at absl INFO (the KV cache it sized, every compilation); without `-v`
those lines are forwarded here as plain "pagedjax: ..." lines, and nothing
else of INFO is shown. With `-v` absl prints them itself.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from typing import Callable, Iterator, TextIO, TypeVar

T = TypeVar("T")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ENGINE_DIRS = tuple(os.path.join(_REPO, d) + os.sep for d in ("engine", "models"))


def add_progress_arg(parser: argparse.ArgumentParser, what: str) -> None:
  parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                      help=f"show {what} on stderr")


def say(message: str, enabled: bool = True, file: TextIO | None = None) -> None:
  if enabled:
    print(f"pagedjax: {message}", file=file or sys.stderr, flush=True)


class _EngineLines(logging.Handler):
  """Prints the INFO records of engine/ and models/ code as progress lines."""

  def __init__(self, file: TextIO):
    super().__init__(logging.INFO)
    self.file = file

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno == logging.INFO and record.pathname.startswith(_ENGINE_DIRS)

  def emit(self, record: logging.LogRecord) -> None:
    say(record.getMessage(), file=self.file)


@contextlib.contextmanager
def engine_lines(enabled: bool, file: TextIO | None = None) -> Iterator[None]:
  """While active, the engine's own INFO lines go to `file` (stderr) as progress."""
  from absl import logging as absl_logging
  logger = absl_logging.get_absl_logger()
  if not enabled or logger.getEffectiveLevel() <= logging.INFO:  # -v shows them already
    yield
    return
  absl_handler = absl_logging.get_absl_handler()
  saved = logger.level, absl_handler.level
  handler = _EngineLines(file or sys.stderr)
  # NOTE: absl's own handler keeps the old threshold, so only these lines are new.
  absl_handler.setLevel(logger.getEffectiveLevel())
  logger.setLevel(logging.INFO)
  logger.addHandler(handler)
  try:
    yield
  finally:
    logger.removeHandler(handler)
    logger.setLevel(saved[0])
    absl_handler.setLevel(saved[1])


def model_label(config) -> str:
  return config.model or "the bundled SmolLM2-135M-Instruct"


def load_engine(build: Callable[[], T], config, enabled: bool) -> T:
  """Runs `build()` (loads the model, sizes the KV cache) between progress lines."""
  warm = " and compiling every shape bucket (--warmup)" if config.warmup else ""
  say(f"loading {model_label(config)} ({config.dtype}){warm} ...", enabled)
  start = time.perf_counter()
  built = build()
  say(f"engine ready in {time.perf_counter() - start:.1f} s", enabled)
  if not config.warmup:
    say("the first steps compile the model, seconds to a minute (later runs load them "
        "from the compilation cache) ...", enabled)
  return built
