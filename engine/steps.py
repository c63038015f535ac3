"""The jitted steps: prefill and decode forwards over the paged cache, and the sampler.

The forwards take the KV cache (a tuple with one `[num_blocks, kv_heads, 2,
block_size, head_dim]` array per layer) as a donated argument and return the
updated cache, so XLA writes the new K/V in place, plus the logits. The
sampler writes each step's sampled tokens into a small device token buffer
(one slot per running request), and the next decode forward reads them there,
so the host can schedule step N+1 before step N's tokens have reached it.
"""
from __future__ import annotations

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


def _sampler_inputs(sample_slots, sampling: SamplingTensors):
  """The sampler's inputs as (int32 [4, rows], f32 [3, rows]): shapes that depend on rows only."""
  seed = jax.lax.bitcast_convert_type(sampling.seed, jnp.int32)
  return (jnp.stack([sample_slots, sampling.top_k, seed, sampling.step]),
          jnp.stack([sampling.temperature, sampling.top_p, sampling.min_p]))


def _decode_forward(params, kv_cache, token_buffer, tokens, input_slots, sample_slots, positions,
                    slots, block_tables, lengths, sampling, *, config, attention_fn):
  # NOTE: a row whose input token was sampled by the previous step (not yet on
  # the host) reads it from the device token buffer.
  pending = jnp.take(token_buffer, jnp.maximum(input_slots, 0))     # [rows]
  tokens = jnp.where(input_slots >= 0, pending, tokens)
  meta = {"slots": slots, "block_tables": block_tables, "lengths": lengths}
  with jax.named_scope("decode_forward"):
    hidden, kv_cache = llama.forward(params, config, tokens, positions, kv_cache, meta,
                                     attention_fn)          # hidden [rows, hidden]
  with jax.named_scope("lm_head"):
    logits = llama.compute_logits(params, config, hidden)   # [rows, vocab]
  return kv_cache, logits, _sampler_inputs(sample_slots, sampling)


def _prefill_forward(params, kv_cache, token_buffer, tokens, positions, slots, block_tables,
                     cu_q_lens, kv_lens, logits_indices, sample_slots, sampling, *, config,
                     attention_fn):
  del token_buffer                  # NOTE: prefill tokens are always known on the host
  meta = {"slots": slots, "block_tables": block_tables, "cu_q_lens": cu_q_lens,
          "kv_lens": kv_lens}
  with jax.named_scope("prefill_forward"):
    hidden, kv_cache = llama.forward(params, config, tokens, positions, kv_cache, meta,
                                     attention_fn)          # hidden [tokens, hidden]
  with jax.named_scope("lm_head"):
    last = jnp.take(hidden, logits_indices, axis=0)         # [seqs, hidden]
    logits = llama.compute_logits(params, config, last)     # [seqs, vocab]
  return kv_cache, logits, _sampler_inputs(sample_slots, sampling)


def _sample_step(token_buffer, logits, sampler_inputs, *, sampling_mode):
  """Samples one token per row into the token buffer; (buffer, token ids, logprobs)."""
  ints, floats = sampler_inputs                             # [4, rows], [3, rows]
  sampling = SamplingTensors(temperature=floats[0], top_k=ints[1], top_p=floats[1],
                             min_p=floats[2], step=ints[3],
                             seed=jax.lax.bitcast_convert_type(ints[2], jnp.uint32))
  with jax.named_scope("sample"):
    token_ids, logprobs = sample(logits, sampling, sampling_mode)
  return token_buffer.at[ints[0]].set(token_ids), token_ids, logprobs


def _from_packed(forward):
  """`forward` taking (params, kv_cache, token_buffer, ints, floats, *, layout)."""
  def packed(params, kv_cache, token_buffer, ints, floats, *, layout):
    return forward(params, kv_cache, token_buffer, **packing.unpack(ints, floats, layout))
  return packed


def make_steps(config, backend: str | None, mesh=None):
  """Returns (decode, prefill, sample), jitted; the forwards donate the cache.

  decode/prefill(params, kv_cache, token_buffer, ints, floats, *, layout)
      -> (kv_cache, logits [rows, vocab] f32, sampler_inputs)
  sample(token_buffer, logits, sampler_inputs, *, sampling_mode)
      -> (token_buffer, token ids [rows], logprobs [rows])   (token_buffer donated)
  The sampler is its own small program, so its three variants (engine/sampler.py)
  multiply only its own compilations, not the model's. Built per runner, so two
  engines with different settings live side by side. With a tensor-parallel
  `mesh` the attention seams run per shard inside `shard_map` (see
  engine/parallel.py); XLA partitions the rest.
  """
  backend = pallas_kernels.resolve_backend(backend)
  decode_attn = functools.partial(decode_attention, backend=backend)
  prefill_attn = functools.partial(prefill_attention, backend=backend)
  if mesh is not None:
    decode_attn = parallel.shard_attention(decode_attn, mesh, ("slots", "block_tables", "lengths"))
    prefill_attn = parallel.shard_attention(
        prefill_attn, mesh, ("slots", "block_tables", "cu_q_lens", "kv_lens"))
  jit = functools.partial(jax.jit, donate_argnames=("kv_cache",), static_argnames=("layout",))
  decode = jit(_from_packed(functools.partial(_decode_forward, config=config,
                                              attention_fn=decode_attn)))
  prefill = jit(_from_packed(functools.partial(_prefill_forward, config=config,
                                               attention_fn=prefill_attn)))
  sampler = jax.jit(_sample_step, donate_argnames=("token_buffer",),
                    static_argnames=("sampling_mode",))
  return decode, prefill, sampler
