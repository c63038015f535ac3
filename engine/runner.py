"""The only place that touches device arrays: the KV cache, the token buffer
and the jitted steps.

`execute()` pads a schedule to its buckets, dispatches the decode step and the
prefill step (both run asynchronously on the device, the cache donated from
one to the next) and returns a `PendingStep` whose sampled tokens are copied
back to the host asynchronously; the engine collects them one step later,
after it has dispatched the next step.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from engine import packing, parallel, step_inputs
from engine.buckets import Buckets
from engine.sampler import MODES, sampling_mode
from engine.scheduler import ScheduledRequest, ScheduleOutput
from engine.steps import make_steps


@dataclasses.dataclass(frozen=True)
class CacheConfig:
  num_blocks: int            # including the null block 0
  block_size: int
  dtype: str = "float32"


def cache_shape(model_config, cache: CacheConfig) -> tuple[int, ...]:
  # [num_blocks, kv_heads, 2 (K, V), block_size, head_dim] per layer.
  return (cache.num_blocks, model_config.num_kv_heads, 2, cache.block_size,
          model_config.head_dim)


def bytes_per_block(model_config, block_size: int, dtype: str) -> int:
  per_layer = model_config.num_kv_heads * 2 * block_size * model_config.head_dim
  return per_layer * model_config.num_layers * jnp.dtype(dtype).itemsize


@dataclasses.dataclass
class PendingStep:
  """Sampled tokens of one step, still on their way from the device."""
  groups: list[tuple[list[ScheduledRequest], tuple]]   # (rows, (token_ids, logprobs) on device)

  def result(self) -> dict[str, tuple[int, float]]:
    """Blocks until the tokens are on the host; {request_id: (token, logprob)} of sampling rows."""
    host = jax.device_get([arrays for _, arrays in self.groups])
    out = {}
    for (rows, _), (tokens, logprobs) in zip(self.groups, host):
      for i, s in enumerate(rows):
        if s.samples:
          out[s.request.request_id] = (int(tokens[i]), float(logprobs[i]))
    return out


class ModelRunner:
  """Holds params, the paged KV cache and the bucketed jitted steps of one engine."""

  def __init__(self, model, cache: CacheConfig, buckets: Buckets, backend: str | None = None,
               mesh=None, max_num_seqs: int | None = None):
    self.model = model
    self.config = model.config
    self.cache_config = cache
    self.buckets = buckets
    self.mesh = mesh
    # NOTE: with a tensor-parallel mesh each device allocates only its kv heads' slice.
    device = parallel.cache_sharding(mesh) if mesh is not None else None
    self.kv_cache = tuple(jnp.zeros(cache_shape(self.config, cache), cache.dtype, device=device)
                          for _ in range(self.config.num_layers))
    # One token-buffer slot per running request, plus a trash slot for padding rows.
    num_slots = (max_num_seqs or max(buckets.decode_rows)) + 1
    self.trash_slot = num_slots - 1
    replicated = NamedSharding(mesh, PartitionSpec()) if mesh is not None else None
    self.token_buffer = jnp.zeros((num_slots,), jnp.int32, device=replicated)
    self._free_slots = list(range(num_slots - 1))
    self._slot_of: dict[str, int] = {}
    self._decode, self._prefill = make_steps(self.config, backend, mesh)
    self._compiled: set[tuple] = set()
    self.compile_seconds = 0.0

  @property
  def num_compilations(self) -> int:
    return len(self._compiled)

  def token_slot(self, request) -> int:
    """The request's slot in the device token buffer (None: the trash slot)."""
    if request is None:
      return self.trash_slot
    slot = self._slot_of.get(request.request_id)
    if slot is None:
      slot = self._slot_of[request.request_id] = self._free_slots.pop()
    return slot

  def release(self, request_id: str) -> None:
    """Frees a finished or preempted request's token slot.

    NOTE: a step still in flight may write the slot; any later step that reuses
    it runs after that one on the device, so the new owner never sees it.
    """
    slot = self._slot_of.pop(request_id, None)
    if slot is not None:
      self._free_slots.append(slot)

  def execute(self, out: ScheduleOutput) -> PendingStep:
    groups = []
    bs = self.cache_config.block_size
    if out.decodes:
      inputs = step_inputs.build_decode(out.decodes, self.buckets, bs, self.token_slot)
      groups.append((out.decodes, self._run_decode(inputs)))
    if out.prefills:
      inputs = step_inputs.build_prefill(out.prefills, self.buckets, bs, self.token_slot)
      groups.append((out.prefills, self._run_prefill(inputs)))
    for _, arrays in groups:
      for a in arrays:
        a.copy_to_host_async()     # NOTE: no blocking transfer here
    return PendingStep(groups)

  def warmup(self) -> None:
    """Compiles every bucket and sampler variant now, so that serving never compiles."""
    t0 = time.perf_counter()
    trash = self.trash_slot
    for mode in MODES:
      for rows, width in self.buckets.decode_shapes():
        x = step_inputs.empty_decode(rows, width, trash)
        jax.block_until_ready(self._run_decode(x, mode))
      for tokens, seqs, width in self.buckets.prefill_shapes():
        x = step_inputs.empty_prefill(tokens, seqs, width, trash)
        jax.block_until_ready(self._run_prefill(x, mode))
    logging.info("warmup: %d compilations in %.1fs", self.num_compilations,
                 time.perf_counter() - t0)

  def _run_decode(self, x: step_inputs.DecodeInputs, mode: str | None = None):
    """Dispatches one decode step; `mode` (a sampler variant) defaults to the cheapest exact one."""
    return self._run(self._decode, ("decode", len(x.tokens), x.block_tables.shape[1]), x, mode)

  def _run_prefill(self, x: step_inputs.PrefillInputs, mode: str | None = None):
    key = ("prefill", len(x.tokens), len(x.kv_lens), x.block_tables.shape[1])
    return self._run(self._prefill, key, x, mode)

  def _run(self, step, shape_key: tuple, x, mode: str | None):
    mode = mode or sampling_mode(x.sampling)
    with self._track(shape_key + (mode,)):
      ints, floats, layout = packing.pack(x)      # NOTE: one transfer each, not a dozen
      self.kv_cache, self.token_buffer, token_ids, logprobs = step(
          self.model.params, self.kv_cache, self.token_buffer, ints, floats, layout=layout,
          sampling_mode=mode)
    return token_ids, logprobs

  @contextlib.contextmanager
  def _track(self, key):
    new = key not in self._compiled
    t0 = time.perf_counter()
    yield
    if new:
      self._compiled.add(key)
      self.compile_seconds += time.perf_counter() - t0
      logging.info("compiled %s in %.2fs", key, time.perf_counter() - t0)
