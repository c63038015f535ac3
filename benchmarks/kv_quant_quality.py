"""CPU measurement: per-token vs per-block scales of an 8-bit KV cache, on SmolLM2.

Usage: PYTHONPATH=. python3 -m benchmarks.kv_quant_quality [--out DIR] [--mode decode]

Teacher forcing as tests/engine/test_kv_quantization_quality.py (engine/teacher_forcing.py:
20 chat prompts x 64 tokens, the bf16-cache engine's greedy continuations), top-1
agreement and mean KL against the bf16 cache, for each 8-bit dtype and scale layout:

  per token (engine)      the engine's QuantizedKV: one scale per token, KV head and K|V
  per token (emulated)    a float32 cache holding each vector quantized and dequantized
                          with the engine's scale: must match the engine (checks the
                          emulation)
  (the per-block scales below are max / the format's largest value, without e4m3's
  search over grid shifts)
  per block, oracle       one scale per block, KV head and K|V, from the block's final
                          maximum known in advance (bf16 run): the best any per-block
                          scale can do
  per block, first write  the scale set by the tokens of the step that opens the block
                          (writes its offset 0); later tokens saturate to it, as a writer
                          that never requantizes a block must

The emulated layouts run the engine's seams on a float32 cache; only what is stored
differs. About 15 minutes on a 2-core CPU. Prints a markdown table (and writes it and a
JSON to --out).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import time

import jax.numpy as jnp
import numpy as np

from engine import steps
from engine import teacher_forcing as tf
from pallas_kernels import quantization


def quantize_with(x, scale, name):
  """x [..., d] stored in `name` with the given scales [...], back in float32."""
  fmt = quantization.FORMATS[name]
  safe = jnp.where(scale > 0, scale, 1.0)[..., None]
  y = jnp.clip(x.astype(jnp.float32) / safe, -fmt.qmax, fmt.qmax)
  if name == "int8":
    y = jnp.trunc(jnp.where(y >= 0, y + 0.5, y - 0.5))
  else:
    y = y.astype(jnp.float8_e4m3fn).astype(jnp.float32)
  return jnp.where(scale[..., None] > 0, y * safe, 0.0)


def _layered(seam, num_layers):
  """`steps.layered` for a (float32 values, per-block state) cache."""
  def layered(q, k, v, cache, layer, meta):
    values = cache[0]
    return seam(q, k, v, cache, steps.layer_meta(meta, layer, values.shape[0] // num_layers,
                                                 values.shape[3]))
  return layered


def _seams(config, name, scales_of, make_state):
  """Seams storing K/V quantized and dequantized (`quantize_with`) with the scales
  `scales_of(kv [n, hkv, 2, d], state, slots, block_size) -> (scales [n, hkv, 2], state)`
  in a float32 cache; the cache is (values, state), state = make_state(values shape)."""
  def wrap(engine_seam):
    def seam(q, k, v, cache, meta):
      values, state = cache
      kv = jnp.stack([k, v], axis=2)                               # [n, hkv, 2, d]
      scales, state = scales_of(kv, state, meta["slots"], values.shape[3])
      kv = quantize_with(kv, scales, name)
      out, values = engine_seam(q, kv[:, :, 0], kv[:, :, 1], values, meta)
      return out, (values, state)
    return _layered(seam, config.num_layers)
  return tf.Seams(lambda shape: (jnp.zeros(shape, jnp.float32), make_state(shape)),
                  wrap(functools.partial(steps.decode_attention, backend="xla")),
                  wrap(functools.partial(steps.prefill_attention, backend="xla")))


def per_token(config, name):
  """The engine's scales (quantization.quantize: e4m3's the best of its grid shifts)."""
  storage = quantization.storage_dtype(name)
  return _seams(config, name, lambda kv, state, slots, bs: (
      quantization.quantize(kv, storage)[1], state), lambda shape: jnp.zeros(()))


def per_block_oracle(config, name, block_amax):
  qmax = quantization.FORMATS[name].qmax
  return _seams(config, name, lambda kv, state, slots, bs: (state[slots // bs] / qmax, state),
                lambda shape: jnp.asarray(block_amax))


def per_block_first_write(config, name):
  qmax = quantization.FORMATS[name].qmax

  def scales_of(kv, state, slots, bs):
    blocks, amax = slots // bs, jnp.max(jnp.abs(kv), axis=-1)         # [n], [n, hkv, 2]
    opened = jnp.zeros(state.shape[0], bool).at[blocks].max(slots % bs == 0)
    fresh = jnp.zeros_like(state).at[blocks].max(amax)
    state = jnp.where(opened[:, None, None], fresh, state)
    return state[blocks] / qmax, state
  return _seams(config, name, scales_of, lambda shape: jnp.zeros(shape[:3]))


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=None, help="output folder (default: none)")
  parser.add_argument("--mode", choices=("decode", "chunked"), default="decode",
                      help="feed the continuation through decode or chunked prefill")
  args = parser.parse_args()
  from models import load_model  # pylint: disable=g-import-not-at-top
  model = load_model(None, dtype="float32")
  cfg, tok = model.config, model.tokenizer
  prompts = tf.quality_prompts(tok)
  base = tf.logits(model, tf.engine_seams(cfg, "bfloat16"), prompts, tf.QUALITY_TOKENS,
                   pick=lambda logits: logits.argmax(-1))
  block_amax = np.abs(np.asarray(base.cache, np.float32)).max(axis=(3, 4))   # [rows, hkv, 2]
  rows = []
  for name in quantization.FORMATS:
    variants = {"per token (engine)": tf.engine_seams(cfg, name),
                "per token (emulated)": per_token(cfg, name),
                "per block, oracle": per_block_oracle(cfg, name, block_amax),
                "per block, first write": per_block_first_write(cfg, name)}
    for label, seams in variants.items():
      t0 = time.time()
      forced = tf.logits(model, seams, prompts, tf.QUALITY_TOKENS,
                         continuations=base.continuations,
                         mode=args.mode)
      rows.append(dict(dtype=name, scales=label, mode=args.mode, seconds=time.time() - t0,
                       **tf.agreement(base.logits, forced.logits)))
      print(json.dumps(rows[-1]), flush=True)
  lines = ["| KV dtype | scales | top-1 agreement | mean KL (nats) | max KL |", "|---|---|---|---|---|"]
  lines += [f"| {r['dtype']} | {r['scales']} | {100 * r['top1_agreement']:.2f} % | "
            f"{r['mean_kl']:.5f} | {r['max_kl']:.3f} |" for r in rows]
  print("\n".join(lines))
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "kv_quant_quality.json"), "w") as f:
      json.dump(rows, f, indent=1)
    with open(os.path.join(args.out, "kv_quant_quality.md"), "w") as f:
      f.write("\n".join(lines) + "\n")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
