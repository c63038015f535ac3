"""Progress of a warm-up: a log line per compiled step shape and an optional tqdm bar."""
from __future__ import annotations

import time

from absl import logging
from tqdm import tqdm


class WarmupProgress:
  """`progress(done, total, shape)` for `ModelRunner.warmup`, as a context manager.

  NOTE: called from the compile threads; the runner serialises the calls.
  """

  def __init__(self, total: int, show_bar: bool):
    self._bar = tqdm(total=total, desc="warm-up", unit="shape", disable=not show_bar)
    self._t0 = time.perf_counter()

  def __enter__(self) -> WarmupProgress:
    return self

  def __exit__(self, *exc) -> bool:
    self._bar.close()
    return False

  def __call__(self, done: int, total: int, shape) -> None:
    self._bar.update(1)
    logging.info("warm-up %d/%d after %.1f s: %s %d tokens, %d sequences, table width %d, "
                 "%d decode iteration(s)", done, total, time.perf_counter() - self._t0,
                 shape.kind, shape.tokens, shape.seqs, shape.width, shape.decode_steps)
