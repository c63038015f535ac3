"""The jitted prefill and decode steps: model forward over the paged cache + sampling.

Both take the KV cache (ONE `[num_layers * num_blocks, kv_heads, 2,
block_size, head_dim]` array, layer l's block b at row l * num_blocks + b; see
`layer_meta`; for an 8-bit cache a `QuantizedKV` of that array and its scales,
addressed by the same rows) as a donated argument and return the updated cache, so XLA
writes the new K/V in place: the model's layer scan carries the whole cache
and each layer's kernels see all of it. Both also carry a small
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
from pallas_kernels.quantization import values_of
from engine.sampler import SamplingTensors, sample_cheapest
from engine.spec import rejection
from models import llama


def _written(kv_cache, k, v, slots, backend, interpret):
  kv_cache = pallas_kernels.write_kv(kv_cache, k, v, slots, backend=backend, interpret=interpret)
  if backend != "xla":
    return kv_cache
  # NOTE: the barrier keeps XLA from fusing the in-place write into the gathers
  # of the XLA attention path; fused, XLA:CPU copied the whole cache every layer
  # (measured: 0.6 s vs 0.06 s per SmolLM2 decode step). With the Pallas kernels
  # it cost 1.5-2.5 ms per decode step on an H100 (benchmarks/step_breakdown.py).
  return jax.lax.optimization_barrier(kv_cache)


def decode_attention(q, k, v, kv_cache, meta, *, backend, interpret=False):
  """Attention seam for a decode step: write this token's K/V, attend over the cache.

  `interpret` runs the Pallas kernels in interpret mode (CPU tests of the "triton" backend).
  """
  kv_cache = _written(kv_cache, k, v, meta["slots"], backend, interpret)
  out = pallas_kernels.paged_decode_attention(
      q, kv_cache, meta["block_tables"], meta["lengths"], backend=backend, interpret=interpret)
  return out, kv_cache


def prefill_attention(q, k, v, kv_cache, meta, *, backend, interpret=False):
  """Attention seam for a prefill step: write the chunk's K/V, attend causally over cache + chunk."""
  kv_cache = _written(kv_cache, k, v, meta["slots"], backend, interpret)
  out = pallas_kernels.paged_prefill_attention(
      q, kv_cache, meta["block_tables"], meta["cu_q_lens"], meta["kv_lens"], backend=backend,
      interpret=interpret)
  return out, kv_cache


def layer_meta(meta: dict, layer, blocks_per_layer: int, block_size: int) -> dict:
  """`meta` (block tables and slots of layer 0) addressing layer `layer` of the flat cache.

  NOTE: layer l's block b is row l * blocks_per_layer + b of the cache, so the
  null block 0 and slot 0 of padding become layer l's own null block; the
  kernels see the whole cache and need no layer argument. The runner keeps
  num_layers * num_blocks * block_size below 2**31 (int32 slots).
  """
  out = dict(meta)
  out["block_tables"] = meta["block_tables"] + layer * blocks_per_layer
  out["slots"] = meta["slots"] + layer * (blocks_per_layer * block_size)
  return out


def layered(attention_fn, num_layers: int):
  """The model's seam `(q, k, v, kv_cache, layer, meta)` over the flat cache of
  `num_layers` layers, from a seam `(q, k, v, kv_cache, meta)` of one layer's tables."""
  def seam(q, k, v, kv_cache, layer, meta):
    values = values_of(kv_cache)
    blocks_per_layer = values.shape[0] // num_layers
    return attention_fn(q, k, v, kv_cache,
                        layer_meta(meta, layer, blocks_per_layer, values.shape[3]))
  return seam


def _decode_step(params, kv_cache, token_buffer, tokens, input_slots, sample_slots, positions,
                 slots, block_tables, lengths, num_steps, sampling: SamplingTensors, *, config,
                 attention_fn, decode_steps: int = 1):
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
  block_size = values_of(kv_cache).shape[3]
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
      tokens, token_logprobs = sample_cheapest(logits, step_sampling)
    token_buffer = token_buffer.at[jnp.where(active, sample_slots, trash)].set(tokens)
    sampled.append(tokens)
    logprobs.append(token_logprobs)
  return kv_cache, token_buffer, jnp.stack(sampled), jnp.stack(logprobs)


def _prefill_forward(params, kv_cache, tokens, positions, slots, block_tables, cu_q_lens,
                     kv_lens, *, config, attention_fn):
  """The model over packed chunks of several sequences (prefill and verify steps)."""
  meta = {"slots": slots, "block_tables": block_tables, "cu_q_lens": cu_q_lens,
          "kv_lens": kv_lens}
  with jax.named_scope("prefill_forward"):
    return llama.forward(params, config, tokens, positions, kv_cache, meta,
                         attention_fn)              # hidden [tokens, hidden]


def _prefill_step(params, kv_cache, token_buffer, tokens, positions, slots, block_tables,
                  cu_q_lens, kv_lens, logits_indices, sample_slots, sampling: SamplingTensors, *,
                  config, attention_fn):
  hidden, kv_cache = _prefill_forward(params, kv_cache, tokens, positions, slots, block_tables,
                                      cu_q_lens, kv_lens, config=config,
                                      attention_fn=attention_fn)
  with jax.named_scope("sample"):
    last = jnp.take(hidden, logits_indices, axis=0)         # [seqs, hidden]
    logits = llama.compute_logits(params, config, last)     # [seqs, vocab]
    token_ids, logprobs = sample_cheapest(logits, sampling)
  return kv_cache, token_buffer.at[sample_slots].set(token_ids), token_ids[None], logprobs[None]


def _verify_step(params, kv_cache, token_buffer, tokens, positions, slots, block_tables,
                 cu_q_lens, kv_lens, logits_indices, drafts, num_drafts, sample_slots,
                 sampling: SamplingTensors, *, config, attention_fn):
  """Speculative decoding: each row's last token and drafts in one forward (a prefill
  of up to k + 1 tokens), logits at every position, acceptance on the device.

  Returns tokens and logprobs [k + 1, rows] and each row's count of output tokens
  [rows] (accepted drafts + 1; engine/spec/rejection.py).
  NOTE: the K/V of rejected drafts stay in the cache past the row's accepted
  length; the host does not count them as computed, so later steps overwrite them.
  """
  hidden, kv_cache = _prefill_forward(params, kv_cache, tokens, positions, slots, block_tables,
                                      cu_q_lens, kv_lens, config=config,
                                      attention_fn=attention_fn)
  rows, positions_per_row = logits_indices.shape               # [rows, k + 1]
  with jax.named_scope("verify"):
    picked = jnp.take(hidden, logits_indices.reshape(-1), axis=0)
    logits = llama.compute_logits(params, config, picked).reshape(rows, positions_per_row, -1)
    token_ids, logprobs, num_tokens = rejection.verify(logits, drafts, num_drafts, sampling)
  last = jnp.take_along_axis(token_ids, (num_tokens - 1)[:, None], axis=1)[:, 0]
  return (kv_cache, token_buffer.at[sample_slots].set(last), token_ids.T, logprobs.T,
          num_tokens)


def _from_packed(step):
  """`step` taking (params, kv_cache, token_buffer, ints, floats, *, layout, ...)."""
  def packed(params, kv_cache, token_buffer, ints, floats, *, layout, **static):
    return step(params, kv_cache, token_buffer, **packing.unpack(ints, floats, layout), **static)
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


def make_verify_step(config, backend: str | None, mesh=None):
  """The jitted verify step of speculative decoding (`_verify_step`), cache donated;
  memoized like `make_steps`."""
  return _make_verify_step(config, pallas_kernels.resolve_backend(backend), mesh)


def _seams(config, backend: str, mesh):
  """(decode, prefill) attention seams over the flat cache, per shard under a mesh."""
  decode_attn = functools.partial(decode_attention, backend=backend)
  prefill_attn = functools.partial(prefill_attention, backend=backend)
  if mesh is not None:
    decode_attn = parallel.shard_attention(decode_attn, mesh, ("slots", "block_tables", "lengths"))
    prefill_attn = parallel.shard_attention(
        prefill_attn, mesh, ("slots", "block_tables", "cu_q_lens", "kv_lens"))
  return layered(decode_attn, config.num_layers), layered(prefill_attn, config.num_layers)


_jit = functools.partial(jax.jit, donate_argnames=("kv_cache", "token_buffer"),
                         static_argnames=("layout", "decode_steps"))


@functools.lru_cache(maxsize=None)
def _make_steps(config, backend: str, mesh):
  decode_attn, prefill_attn = _seams(config, backend, mesh)
  decode = _jit(_from_packed(functools.partial(_decode_step, config=config,
                                               attention_fn=decode_attn)))
  prefill = _jit(_from_packed(functools.partial(_prefill_step, config=config,
                                                attention_fn=prefill_attn)))
  return decode, prefill


@functools.lru_cache(maxsize=None)
def _make_verify_step(config, backend: str, mesh):
  _, prefill_attn = _seams(config, backend, mesh)
  return _jit(_from_packed(functools.partial(_verify_step, config=config,
                                             attention_fn=prefill_attn)))
