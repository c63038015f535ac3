"""The single place that chooses which implementation runs the kernels.

The engine always passes `backend=None`; only this module maps the platform
to an implementation, so the choice can change with measurements without
touching callers.
"""

from __future__ import annotations

import jax

# NOTE: "xla" is the pure-jnp reference path (also the CPU path of the engine).
# "triton" is Pallas lowered through Triton. "mosaic" is Pallas Mosaic GPU
# (Hopper: wgmma, TMA) for prefill and decode; its KV write is still the Triton
# kernel, and cases its kernels do not take (float32 or 8-bit caches, head_dim
# not a multiple of 64, prefill GQA groups over 16) run the Triton kernels
# (prefill.py, decode.py). An engine asked for "mosaic" with an 8-bit cache
# refuses it (EngineConfig): only the default falls back silently.
KNOWN_BACKENDS = ("triton", "mosaic", "xla")


def default_backend() -> str:
  """Returns the backend used when the caller passes `backend=None`.

  On a Hopper GPU (compute capability 9.x: H100, H200) "mosaic": on an H200
  its prefill kernel reached 90 % of cuDNN's causal rate against Triton's 42 %,
  its decode kernel 92-113 % of a read-only pass over the same KV bytes against
  Triton's 60-87 % (1.26-1.36x faster at 16-128-token blocks; docs/benchmarks.md,
  2026-12-02). On other GPUs "triton" (the Mosaic kernels need wgmma and TMA);
  everywhere else the XLA reference.
  """
  if jax.default_backend() != "gpu":
    return "xla"
  capability = getattr(jax.devices()[0], "compute_capability", "")
  return "mosaic" if str(capability).split(".")[0] == "9" else "triton"


def reads_whole_block_table(backend: str) -> bool:
  """Whether an attention backend's cost grows with the block table's width.

  NOTE: the Triton kernels bound every loop by each row's own length (decode:
  `cdiv(length, block_size)` pages; prefill: the tile's visible context), so a
  table padded to the model's context costs them only its int32 transfer and
  the engine compiles one width. The XLA reference gathers every block of the
  table: on CPU a SmolLM2 decode step of 8 rows at 100 tokens took 131 ms with
  an 8-block table and 434 ms with a 128-block one (2048-token context), so it
  keeps a bucket per power-of-two width.
  """
  return resolve_backend(backend) == "xla"


def resolve_backend(backend: str | None) -> str:
  """Maps `None` to `default_backend()` and validates an explicit name."""
  if backend is None:
    return default_backend()
  if backend not in KNOWN_BACKENDS:
    raise ValueError(
        f"unknown backend {backend!r}; expected one of {KNOWN_BACKENDS} or None"
    )
  return backend
