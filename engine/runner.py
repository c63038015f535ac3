"""The only place that touches device arrays: the KV cache, the token buffer
and the compiled steps.

`execute()` pads a schedule to its buckets, dispatches the decode step and the
prefill step (both run asynchronously on the device, the cache donated from
one to the next; one compiled executable per step shape of `planned_shapes()`,
whatever the sampler variant, see engine/executables.py) and returns a
`PendingStep` whose sampled tokens are copied back to the host asynchronously;
the engine collects them one step later, after it has dispatched the next step.
"""
from __future__ import annotations

import dataclasses
import functools
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from engine import executable_store, executables, kv_layout, packing, parallel, step_inputs
from engine.buckets import Buckets, StepShape, plan
from engine.scheduler import ScheduledRequest, ScheduleOutput
from engine.steps import make_steps, make_verify_step
import pallas_kernels
from pallas_kernels import quantization


@dataclasses.dataclass(frozen=True)
class CacheConfig:
  num_blocks: int            # including the null block 0
  block_size: int
  dtype: str = "float32"     # a KV-cache dtype name (engine/kv_layout.py ITEMSIZE)


@dataclasses.dataclass
class PendingStep:
  """Sampled tokens of one step, still on their way from the device."""
  # (rows, (token_ids, logprobs) on device, each [steps, rows]); a verify step adds
  # each row's count of output tokens [rows] (the rest of its tokens are rejected).
  groups: list[tuple[list[ScheduledRequest], tuple]]

  def result(self) -> dict[str, list[tuple[int, float]]]:
    """Blocks until the tokens are on the host.

    Returns {request_id: [(token, logprob), ...]} of the sampling rows, one
    pair per token the row sampled (several in a multi-step decode or a verify step).
    """
    host = jax.device_get([arrays for _, arrays in self.groups])
    out = {}
    for (rows, _), (tokens, logprobs, *counts) in zip(self.groups, host):
      tokens, logprobs = tokens.T.tolist(), logprobs.T.tolist()
      counts = counts[0].tolist() if counts else None
      for i, s in enumerate(rows):
        if s.samples:
          n = s.num_sampled if counts is None else counts[i]
          out[s.request.request_id] = list(zip(tokens[i][:n], logprobs[i][:n]))
    return out


class ModelRunner:
  """Holds params, the paged KV cache and the bucketed compiled steps of one engine."""

  def __init__(self, model, cache: CacheConfig, buckets: Buckets, backend: str | None = None,
               mesh=None, max_num_seqs: int | None = None, num_decode_steps: int = 1,
               num_speculative_tokens: int = 0, cache_dir: str | None = None):
    self.model = model
    self.config = model.config
    self.cache_config = cache
    self.buckets = buckets
    self.mesh = mesh
    self.num_decode_steps = num_decode_steps
    self.num_speculative_tokens = num_speculative_tokens     # k of the verify step; 0: none
    # NOTE: with a tensor-parallel mesh each device allocates only its kv heads' slice.
    device = parallel.cache_sharding(mesh) if mesh is not None else None
    # NOTE: an 8-bit dtype gives a QuantizedKV (values, scales) pytree; the steps
    # carry, donate and return it as they do one array.
    self.kv_cache = quantization.empty(
        kv_layout.cache_shape(self.config, cache.num_blocks, cache.block_size), cache.dtype,
        device=device)
    # One token-buffer slot per running request, plus a trash slot for padding rows.
    num_slots = (max_num_seqs or max(buckets.decode_rows)) + 1
    self.trash_slot = num_slots - 1
    replicated = NamedSharding(mesh, PartitionSpec()) if mesh is not None else None
    self.token_buffer = jnp.zeros((num_slots,), jnp.int32, device=replicated)
    self._free_slots = list(range(num_slots - 1))
    self._slot_of: dict[str, int] = {}
    self._decode, self._prefill = make_steps(self.config, backend, mesh)
    self._steps = {"decode": self._decode, "prefill": self._prefill}
    if num_speculative_tokens:
      self._steps["verify"] = make_verify_step(self.config, backend, mesh)
    self._shared = {kind: executables.shared(step) for kind, step in self._steps.items()}
    # NOTE: the hot path. (kind, layout, decode iterations) fixes every
    # argument's shape: the layout fixes the packed buffers', and params, cache
    # and token buffer never change shape (donated, they come back as they went
    # in). The sampler variant is data (`SamplingTensors.mode`), not a key.
    self._executables: dict[tuple, jax.stages.Compiled] = {}
    self._compiler_options = executables.compiler_options(_platform(mesh))
    # NOTE: compiled steps serialized beside the compilation cache (None: cache off, a
    # mesh, or not a GPU); a hit skips tracing and lowering (engine/executable_store.py).
    # NOTE: the steps close over the model config and the backend (make_steps), which the
    # arguments' signature does not show: same shapes, another backend must be a miss.
    self._disk = executable_store.open_store(
        cache_dir, self._compiler_options, mesh, _platform(mesh),
        steps=repr((self.config, pallas_kernels.resolve_backend(backend))))
    self.num_compilations = 0          # by this runner (not those it found shared)
    self.compile_seconds = 0.0
    self.lower_seconds = 0.0           # of those, tracing and lowering (the rest: XLA, or a cache load)
    self.warm = False                  # warmup() finished: a compile now is a bug
    self._planned = plan(buckets, num_decode_steps, num_speculative_tokens)

  @property
  def num_loaded(self) -> int:
    """Executables of these steps loaded whole from the executable store (no tracing)."""
    return self._disk.num_loaded if self._disk is not None else 0

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
    if out.decodes and any(s.draft_token_ids for s in out.decodes):
      inputs = step_inputs.build_verify(out.decodes, self.buckets, bs, self.token_slot,
                                        self.num_speculative_tokens)
      groups.append((out.decodes, self._run("verify", inputs, 1)))
    elif out.decodes:
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

  def planned_shapes(self) -> tuple[StepShape, ...]:
    """Every step shape this runner can dispatch (what `warmup` compiles); no compiling."""
    return self._planned

  def warmup(self, threads: int | None = None,
             progress: Callable[[int, int, StepShape], None] | None = None) -> None:
    """Compiles every planned step shape now, so that serving never compiles.

    Lowers them one by one here (tracing holds the GIL) while `threads` threads
    (default: one per core) compile them (XLA releases the GIL); executables
    another runner compiled for the same signature are reused. `progress(done,
    total, shape)` is called as each one is ready, from the compiling thread.
    """
    t0 = time.perf_counter()
    threads = threads or executables.default_threads()
    shapes = self.planned_shapes()
    lock, done = threading.Lock(), [0]

    def ready(shape, _future):
      with lock:
        done[0] += 1
        if progress is not None:
          progress(done[0], len(shapes), shape)
    pending = {}
    with executables.compiler(threads) as pool:
      for shape in shapes:
        key, ints, floats = self._warmup_inputs(shape)
        pending[key] = self._submit(key, ints, floats, pool)
        pending[key][1].add_done_callback(functools.partial(ready, shape))
    compiled = sum(self._store(key, *submitted) for key, submitted in pending.items())
    seconds = time.perf_counter() - t0
    self.num_compilations += compiled
    self.compile_seconds += seconds
    self.warm = True
    logging.info("warmup: %d step shapes, %d compilations in %.1f s with %d threads "
                 "(%.1f s of it tracing and lowering; %d loaded whole from %s)", len(shapes),
                 compiled, seconds, threads, self.lower_seconds,
                 self._disk.num_loaded if self._disk else 0,
                 self._disk.directory if self._disk else "no executable store")

  def _warmup_inputs(self, shape: StepShape) -> tuple:
    """(key, ints, floats) of one planned shape, all padding."""
    if shape.kind == "decode":
      x = step_inputs.empty_decode(shape.seqs, shape.width, self.trash_slot)
    elif shape.kind == "verify":
      x = step_inputs.empty_verify(shape.seqs, self.num_speculative_tokens, shape.width,
                                   self.trash_slot)
    else:
      x = step_inputs.empty_prefill(shape.tokens, shape.seqs, shape.width, self.trash_slot)
    ints, floats, layout = packing.pack(x)
    return (shape.kind, layout, shape.decode_steps), ints, floats

  def _run_decode(self, x: step_inputs.DecodeInputs, steps: int = 1):
    """Dispatches one decode step of `steps` iterations."""
    return self._run("decode", x, steps)

  def _run_prefill(self, x: step_inputs.PrefillInputs):
    return self._run("prefill", x, 1)

  def _run(self, kind: str, x, steps: int):
    ints, floats, layout = packing.pack(x)        # NOTE: one transfer each, not a dozen
    key = (kind, layout, steps)
    executable = self._executables.get(key)
    if executable is None:
      executable = self._executable(key, ints, floats)
    # NOTE: (token_ids, logprobs), and a verify step's counts of output tokens.
    self.kv_cache, self.token_buffer, *outputs = executable(
        self.model.params, self.kv_cache, self.token_buffer, ints, floats)
    return tuple(outputs)

  def _executable(self, key: tuple, ints, floats) -> jax.stages.Compiled:
    """A miss of the fast path: the shared executable for these arguments, or a new compile."""
    t0 = time.perf_counter()
    with executables.compiler(1) as inline:
      submitted = self._submit(key, ints, floats, inline)
    if self._store(key, *submitted):
      seconds = time.perf_counter() - t0
      self.num_compilations += 1
      self.compile_seconds += seconds
      if self.warm:      # NOTE: planned_shapes() missed a shape: every stream stalled
        logging.warning("compiled %s in %.2fs AFTER warm-up: a step shape missing from "
                        "planned_shapes() (a bug)", _describe(key), seconds)
      else:
        logging.info("compiled %s in %.2fs", _describe(key), seconds)
    return self._executables[key]

  def _submit(self, key: tuple, ints, floats, pool) -> tuple:
    """(shared key, future executable, is new): the one another runner compiled for the
    same signature, else this one's lowering handed to `pool` to compile."""
    shared_key = self._shared_key(key, ints, floats)
    found = self._shared[key[0]].get(shared_key)
    if found is not None:
      return shared_key, executables.done(found), False
    loaded = self._disk.load(shared_key) if self._disk is not None else None
    if loaded is not None:
      return shared_key, executables.done(loaded), True
    t0 = time.perf_counter()
    lowered = self._lower(key, ints, floats)
    self.lower_seconds += time.perf_counter() - t0
    future = pool.submit(lowered.compile, self._compiler_options)
    if self._disk is not None:
      future.add_done_callback(functools.partial(self._save, shared_key))
    return shared_key, future, True

  def _save(self, shared_key: tuple, future) -> None:
    if future.exception() is None:
      self._disk.save(shared_key, future.result())

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
    kind, layout, steps = key
    static = {"decode_steps": steps} if kind == "decode" else {}
    return self._steps[kind].lower(*self._args(ints, floats), layout=layout, **static)


def _describe(key: tuple) -> str:
  """An executable key for the log: kind, tokens' and block tables' shapes, iterations."""
  kind, layout, steps = key
  shapes = {name: shape for name, _, shape, _ in layout}
  return (f"{kind} step (tokens {shapes['tokens']}, block tables {shapes['block_tables']}, "
          f"{steps} iteration{'s' if steps > 1 else ''})")


def _platform(mesh) -> str:
  """The platform the steps compile for: the mesh's devices', else the default device's."""
  return (mesh.devices.flat[0] if mesh is not None else jax.devices()[0]).platform
