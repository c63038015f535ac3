"""XLA flags the engine wants, set by the entry points before the backend starts.

`--xla_gpu_command_buffer_update_mode=SKIP_TEMP` gives the temporary buffers of
a compiled step stable device addresses. Together with the runner's persistent
input/output buffers (engine/runner.py) every buffer a step's CUDA graph
touches then keeps its address, so XLA launches the graph as recorded instead
of re-recording it on every call (measured on an H100 host: a Llama-3.2-1B
decode step's dispatch took 1.4-1.6 ms with re-recording, 0.3-0.5 ms without).
XLA:CPU parses and ignores it.

NOTE: XLA reads XLA_FLAGS once, when the first backend starts, so
`apply_xla_flags()` must run before anything touches a device. The `pagedjax`
CLI and the benchmarks call it first thing; library users call it themselves
(without it the engine is as correct, only its GPU dispatch is slower).
"""
from __future__ import annotations

import os

FLAGS = ("--xla_gpu_command_buffer_update_mode=SKIP_TEMP",)


def apply_xla_flags(environ=None) -> str:
  """Adds each of FLAGS to XLA_FLAGS unless that flag is already set; returns the result."""
  environ = os.environ if environ is None else environ
  current = environ.get("XLA_FLAGS", "").split()
  names = {f.split("=", 1)[0] for f in current}
  added = [f for f in FLAGS if f.split("=", 1)[0] not in names]
  environ["XLA_FLAGS"] = " ".join(current + added)
  return environ["XLA_FLAGS"]
