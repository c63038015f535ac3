"""The single place that chooses which implementation runs the kernels.

The engine always passes `backend=None`; only this module maps the platform
to an implementation, so the choice can change with measurements without
touching callers.
"""

from __future__ import annotations

import jax

# NOTE: "xla" is the pure-jnp reference path (also the CPU path of the engine).
# "triton" is Pallas lowered through Triton. "mosaic" (Mosaic GPU) is not
# implemented yet and is rejected explicitly rather than silently remapped.
KNOWN_BACKENDS = ("triton", "xla")
UNIMPLEMENTED_BACKENDS = ("mosaic",)


def default_backend() -> str:
  """Returns the backend used when the caller passes `backend=None`.

  On GPU this is the Triton-lowered Pallas kernel (the one measured fastest
  on H100, see docs/benchmarks.md); everywhere else the XLA reference.
  """
  if jax.default_backend() == "gpu":
    return "triton"
  return "xla"


def resolve_backend(backend: str | None) -> str:
  """Maps `None` to `default_backend()` and validates an explicit name."""
  if backend is None:
    return default_backend()
  if backend in UNIMPLEMENTED_BACKENDS:
    raise ValueError(
        f"backend {backend!r} is not implemented; use one of {KNOWN_BACKENDS}"
    )
  if backend not in KNOWN_BACKENDS:
    raise ValueError(
        f"unknown backend {backend!r}; expected one of {KNOWN_BACKENDS} or None"
    )
  return backend
