"""The jitted prefill and decode steps: model forward over the paged cache + sampling.

Both take the KV cache (a tuple with one `[num_blocks, kv_heads, 2,
block_size, head_dim]` array per layer) as a donated argument and return the
updated cache, so XLA writes the new K/V in place. Both also carry a small
device token buffer (one slot per running request): each step writes its
sampled tokens there, and the next decode step reads them back on the device,
so the host can schedule step N+1 before step N's tokens have reached it.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

import pallas_kernels
from engine import packing, parallel
from engine.sampler import SamplingTensors, sample
from models import llama


def _written(layer_cache, k, v, slots, backend):
  layer_cache = pallas_kernels.write_kv(layer_cache, k, v, slots, backend=backend)
  if backend != "xla":
    return layer_cache
  # NOTE: the barrier keeps XLA from fusing the in-place write into the gathers
  # of the XLA attention path; fused, XLA:CPU copied the whole cache every layer
  # (measured: 0.6 s vs 0.06 s per SmolLM2 decode step). With the Pallas kernels
  # it cost 1.5-2.5 ms per decode step on an H100 (benchmarks/step_breakdown.py).
  return jax.lax.optimization_barrier(layer_cache)


def decode_attention(q, k, v, layer_cache, meta, *, backend):
  """Attention seam for a decode step: write this token's K/V, attend over the cache."""
  layer_cache = _written(layer_cache, k, v, meta["slots"], backend)
  out = pallas_kernels.paged_decode_attention(
      q, layer_cache, meta["block_tables"], meta["lengths"], backend=backend)
  return out, layer_cache


def prefill_attention(q, k, v, layer_cache, meta, *, backend):
  """Attention seam for a prefill step: write the chunk's K/V, attend causally over cache + chunk."""
  layer_cache = _written(layer_cache, k, v, meta["slots"], backend)
  out = pallas_kernels.paged_prefill_attention(
      q, layer_cache, meta["block_tables"], meta["cu_q_lens"], meta["kv_lens"], backend=backend)
  return out, layer_cache


def _decode_step(params, kv_cache, token_buffer, tokens, input_slots, sample_slots, positions,
                 slots, block_tables, lengths, num_steps, sampling: SamplingTensors, *, config,
                 attention_fn, sampling_mode, decode_steps: int = 1):
  """`decode_steps` (static) decode iterations; returns tokens and logprobs [decode_steps, rows].

  NOTE: iteration j feeds iteration j-1's sampled tokens back in, at position
  + j, with the slot looked up on the device from the block table. A row with
  num_steps <= j is padding from then on: it writes the null slot 0, reads
  nothing (length 0) and sends its token to the trash slot.
  """
  # NOTE: a row whose input token was sampled by the previous step (not yet on
  # the host) reads it from the device token buffer.
  pending = jnp.take(token_buffer, jnp.maximum(input_slots, 0))     # [rows]
  tokens = jnp.where(input_slots >= 0, pending, tokens)
  block_size = kv_cache[0].shape[3]
  trash = token_buffer.shape[0] - 1
  sampled, logprobs = [], []
  for j in range(decode_steps):
    active = j < num_steps                                          # [rows]
    if j:
      pos = positions + j
      block = jnp.take_along_axis(block_tables, (pos // block_size)[:, None], axis=1,
                                  mode="clip")[:, 0]
      slots = jnp.where(active, block * block_size + pos % block_size, 0)
      lengths = jnp.where(active, pos + 1, 0)
    meta = {"slots": slots, "block_tables": block_tables, "lengths": lengths}
    with jax.named_scope("decode_forward"):
      hidden, kv_cache = llama.forward(params, config, tokens, positions + j, kv_cache, meta,
                                       attention_fn)        # hidden [rows, hidden]
    with jax.named_scope("sample"):
      logits = llama.compute_logits(params, config, hidden)   # [rows, vocab]
      step_sampling = dataclasses.replace(sampling, step=sampling.step + j)
      tokens, token_logprobs = sample(logits, step_sampling, sampling_mode)
    token_buffer = token_buffer.at[jnp.where(active, sample_slots, trash)].set(tokens)
    sampled.append(tokens)
    logprobs.append(token_logprobs)
  return kv_cache, token_buffer, jnp.stack(sampled), jnp.stack(logprobs)


def _prefill_step(params, kv_cache, token_buffer, tokens, positions, slots, block_tables,
                  cu_q_lens, kv_lens, logits_indices, sample_slots, sampling: SamplingTensors, *,
                  config, attention_fn, sampling_mode):
  meta = {"slots": slots, "block_tables": block_tables, "cu_q_lens": cu_q_lens,
          "kv_lens": kv_lens}
  with jax.named_scope("prefill_forward"):
    hidden, kv_cache = llama.forward(params, config, tokens, positions, kv_cache, meta,
                                     attention_fn)          # hidden [tokens, hidden]
  with jax.named_scope("sample"):
    last = jnp.take(hidden, logits_indices, axis=0)         # [seqs, hidden]
    logits = llama.compute_logits(params, config, last)     # [seqs, vocab]
    token_ids, logprobs = sample(logits, sampling, sampling_mode)
  return kv_cache, token_buffer.at[sample_slots].set(token_ids), token_ids[None], logprobs[None]


def _from_packed(step):
  """`step` taking (params, kv_cache, token_buffer, ints, floats, *, layout, sampling_mode, ...)."""
  def packed(params, kv_cache, token_buffer, ints, floats, *, layout, sampling_mode, **static):
    return step(params, kv_cache, token_buffer, **packing.unpack(ints, floats, layout),
                sampling_mode=sampling_mode, **static)
  return packed


def make_steps(config, backend: str | None, mesh=None):
  """Returns (decode_step, prefill_step), jitted with the cache donated.

  With a tensor-parallel `mesh` the attention seams run per shard inside
  `shard_map` (see engine/parallel.py); XLA partitions the rest.
  NOTE: memoized per (model config, backend, mesh): engines that agree on
  those share the jitted functions and so the executables compiled for each
  shape (a sweep builds one engine per run; the runner compiles ahead of time
  and shares them through engine/executables.py). The functions are pure (all
  state is passed in), so engines with different block sizes, caches or
  settings still live side by side; they only compile different shapes.
  """
  return _make_steps(config, pallas_kernels.resolve_backend(backend), mesh)


@functools.lru_cache(maxsize=None)
def _make_steps(config, backend: str, mesh):
  decode_attn = functools.partial(decode_attention, backend=backend)
  prefill_attn = functools.partial(prefill_attention, backend=backend)
  if mesh is not None:
    decode_attn = parallel.shard_attention(decode_attn, mesh, ("slots", "block_tables", "lengths"))
    prefill_attn = parallel.shard_attention(
        prefill_attn, mesh, ("slots", "block_tables", "cu_q_lens", "kv_lens"))
  jit = functools.partial(jax.jit, donate_argnames=("kv_cache", "token_buffer"),
                          static_argnames=("layout", "sampling_mode", "decode_steps"))
  decode = jit(_from_packed(functools.partial(_decode_step, config=config,
                                              attention_fn=decode_attn)))
  prefill = jit(_from_packed(functools.partial(_prefill_step, config=config,
                                               attention_fn=prefill_attn)))
  return decode, prefill
