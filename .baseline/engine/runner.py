"""The only place that touches device arrays: the KV cache, the token buffer
and the compiled steps.

`execute()` pads a schedule to its buckets, dispatches the decode step and the
prefill step (both run asynchronously on the device, the cache donated from
one to the next; one compiled executable per bucket shape and sampler mode,
see engine/executables.py) and returns a `PendingStep` whose sampled tokens
are copied back to the host asynchronously; the engine collects them one step
later, after it has dispatched the next step.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from engine import executables, packing, parallel, step_inputs
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

  def result(self) -> dict[str, list[tuple[int, float]]]:
    """Blocks until the tokens are on the host.

    Returns {request_id: [(token, logprob), ...]} of the sampling rows, one
    pair per token the row sampled (several in a multi-step decode).
    """
    host = jax.device_get([arrays for _, arrays in self.groups])
    out = {}
    for (rows, _), (tokens, logprobs) in zip(self.groups, host):    # each [steps, rows]
      tokens, logprobs = tokens.T.tolist(), logprobs.T.tolist()
      for i, s in enumerate(rows):
        if s.samples:
          n = s.num_sampled
          out[s.request.request_id] = list(zip(tokens[i][:n], logprobs[i][:n]))
    return out


class ModelRunner:
  """Holds params, the paged KV cache and the bucketed compiled steps of one engine."""

  def __init__(self, model, cache: CacheConfig, buckets: Buckets, backend: str | None = None,
               mesh=None, max_num_seqs: int | None = None, num_decode_steps: int = 1):
    self.model = model
    self.config = model.config
    self.cache_config = cache
    self.buckets = buckets
    self.mesh = mesh
    self.num_decode_steps = num_decode_steps
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
    self._steps = {"decode": self._decode, "prefill": self._prefill}
    self._shared = {kind: executables.shared(step) for kind, step in self._steps.items()}
    # NOTE: the hot path. (kind, layout, sampling mode, decode iterations)
    # fixes every argument's shape: the layout fixes the packed buffers', and
    # params, cache and token buffer never change shape (donated, they come
    # back as they went in).
    self._executables: dict[tuple, jax.stages.Compiled] = {}
    self.num_compilations = 0          # by this runner (not those it found shared)
    self.compile_seconds = 0.0

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
      steps = self.num_decode_steps if any(s.num_new_tokens > 1 for s in out.decodes) else 1
      groups.append((out.decodes, self._run_decode(inputs, steps=steps)))
    if out.prefills:
      inputs = step_inputs.build_prefill(out.prefills, self.buckets, bs, self.token_slot)
      groups.append((out.prefills, self._run_prefill(inputs)))
    for _, arrays in groups:
      for a in arrays:
        a.copy_to_host_async()     # NOTE: no blocking transfer here
    return PendingStep(groups)

  def warmup(self, threads: int | None = None) -> None:
    """Compiles every bucket and sampler variant now, so that serving never compiles.

    Lowers them one by one here (tracing holds the GIL) while `threads` threads
    (default: one per core) compile them (XLA releases the GIL); executables
    another runner compiled for the same signature are reused.
    """
    t0 = time.perf_counter()
    threads = threads or executables.default_threads()
    pending = {}
    with executables.compiler(threads) as pool:
      for key, ints, floats in self._warmup_inputs():
        if key not in self._executables and key not in pending:
          pending[key] = self._submit(key, ints, floats, pool)
    compiled = sum(self._store(key, *submitted) for key, submitted in pending.items())
    seconds = time.perf_counter() - t0
    self.num_compilations += compiled
    self.compile_seconds += seconds
    logging.info("warmup: %d compilations in %.1f s with %d threads", compiled, seconds, threads)

  def _warmup_inputs(self):
    """(key, ints, floats) of every bucket shape and sampler mode, all padding."""
    trash = self.trash_slot
    shapes = [("decode", step_inputs.empty_decode(rows, width, trash))
              for rows, width in self.buckets.decode_shapes()]
    shapes += [("prefill", step_inputs.empty_prefill(tokens, seqs, width, trash))
               for tokens, seqs, width in self.buckets.prefill_shapes()]
    for kind, x in shapes:
      ints, floats, layout = packing.pack(x)
      for mode in MODES:
        for steps in self._decode_variants() if kind == "decode" else (1,):
          yield (kind, layout, mode, steps), ints, floats

  def _decode_variants(self) -> tuple[int, ...]:
    """Decode iterations per step compiled: 1, and the multi-step count if any."""
    return tuple(sorted({1, self.num_decode_steps}))

  def _run_decode(self, x: step_inputs.DecodeInputs, mode: str | None = None, steps: int = 1):
    """Dispatches one decode step of `steps` iterations; `mode` (a sampler variant)
    defaults to the cheapest exact one."""
    return self._run("decode", x, mode, steps)

  def _run_prefill(self, x: step_inputs.PrefillInputs, mode: str | None = None):
    return self._run("prefill", x, mode, 1)

  def _run(self, kind: str, x, mode: str | None, steps: int):
    ints, floats, layout = packing.pack(x)        # NOTE: one transfer each, not a dozen
    key = (kind, layout, mode or sampling_mode(x.sampling), steps)
    executable = self._executables.get(key)
    if executable is None:
      executable = self._executable(key, ints, floats)
    self.kv_cache, self.token_buffer, token_ids, logprobs = executable(
        self.model.params, self.kv_cache, self.token_buffer, ints, floats)
    return token_ids, logprobs

  def _executable(self, key: tuple, ints, floats) -> jax.stages.Compiled:
    """A miss of the fast path: the shared executable for these arguments, or a new compile."""
    t0 = time.perf_counter()
    with executables.compiler(1) as inline:
      submitted = self._submit(key, ints, floats, inline)
    if self._store(key, *submitted):
      seconds = time.perf_counter() - t0
      self.num_compilations += 1
      self.compile_seconds += seconds
      logging.info("compiled %s in %.2fs", _describe(key), seconds)
    return self._executables[key]

  def _submit(self, key: tuple, ints, floats, pool) -> tuple:
    """(shared key, future executable, is new): the one another runner compiled for the
    same signature, else this one's lowering handed to `pool` to compile."""
    shared_key = self._shared_key(key, ints, floats)
    found = self._shared[key[0]].get(shared_key)
    if found is not None:
      return shared_key, executables.done(found), False
    return shared_key, pool.submit(self._lower(key, ints, floats).compile), True

  def _store(self, key: tuple, shared_key: tuple, future, new: bool) -> bool:
    """Keeps the executable for `key` (shared first if new); returns whether it was compiled."""
    executable = future.result()
    self._executables[key] = self._shared[key[0]].put(shared_key, executable) if new else executable
    return new

  def _args(self, ints, floats) -> tuple:
    return self.model.params, self.kv_cache, self.token_buffer, ints, floats

  def _shared_key(self, key: tuple, ints, floats) -> tuple:
    """`key` plus the full abstract signature, so that no other cache shape can match."""
    return key + (executables.signature(self._args(ints, floats)),)

  def _lower(self, key: tuple, ints, floats) -> jax.stages.Lowered:
    kind, layout, mode, steps = key
    static = {"decode_steps": steps} if kind == "decode" else {}
    return self._steps[kind].lower(*self._args(ints, floats), layout=layout, sampling_mode=mode,
                                   **static)


def _describe(key: tuple) -> tuple:
  """(kind, tokens' shape, block tables' shape, mode, steps) of an executable key, for the log."""
  kind, layout, mode, steps = key
  shapes = {name: shape for name, _, shape, _ in layout}
  return kind, shapes["tokens"], shapes["block_tables"], mode, steps
