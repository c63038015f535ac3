"""Clear ValueErrors for malformed arguments, and backend resolution."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import pallas_kernels as pk

I32 = jnp.int32


def _decode_args(**over):
  args = dict(q=jnp.zeros((2, 8, 64)), kv_cache=jnp.zeros((5, 2, 2, 16, 64)),
              block_tables=jnp.zeros((2, 3), I32), lengths=jnp.zeros((2,), I32))
  args.update(over)
  return args


def _prefill_args(**over):
  args = dict(q=jnp.zeros((10, 8, 64)), kv_cache=jnp.zeros((5, 2, 2, 16, 64)),
              block_tables=jnp.zeros((2, 3), I32),
              cu_q_lens=jnp.zeros((3,), I32), kv_lens=jnp.zeros((2,), I32))
  args.update(over)
  return args


DECODE_BAD = [
    (dict(q=jnp.zeros((2, 8))), "q must have shape"),
    (dict(q=jnp.zeros((2, 8, 32))), "head_dim"),
    (dict(q=jnp.zeros((2, 7, 64))), "multiple of num_kv_heads"),
    (dict(q=jnp.zeros((2, 8, 64), jnp.int32)), "q dtype"),
    (dict(kv_cache=jnp.zeros((5, 2, 3, 16, 64))), "axis 2"),
    (dict(kv_cache=jnp.zeros((5, 2, 2, 16))), "kv_cache must have shape"),
    (dict(kv_cache=jnp.zeros((5, 2, 2, 24, 64))), "power of two"),
    (dict(kv_cache=jnp.zeros((5, 2, 2, 4, 64))), "power of two"),
    (dict(kv_cache=jnp.zeros((5, 2, 2, 512, 64))), "power of two"),
    (dict(kv_cache=jnp.zeros((5, 2, 2, 16, 64), jnp.float16)),
     "kv_cache dtype"),
    (dict(block_tables=jnp.zeros((2, 3))), "block_tables must be int32"),
    (dict(block_tables=jnp.zeros((3, 3), I32)), "block_tables batch"),
    (dict(block_tables=jnp.zeros((2,), I32)), "block_tables must have rank 2"),
    (dict(lengths=jnp.zeros((3,), I32)), "lengths batch"),
    (dict(lengths=jnp.zeros((2,), jnp.int64 if jax.config.jax_enable_x64
                            else jnp.float32)), "lengths must be int32"),
]


@pytest.mark.parametrize("fn", [pk.paged_decode_attention,
                                pk.paged_decode_attention_reference])
@pytest.mark.parametrize("over,msg", DECODE_BAD)
def test_decode_rejects(fn, over, msg):
  with pytest.raises(ValueError, match=msg):
    fn(**_decode_args(**over))


PREFILL_BAD = [
    (dict(cu_q_lens=jnp.zeros((2,), I32)), "cu_q_lens must have"),
    (dict(kv_lens=jnp.zeros((3,), I32)), "kv_lens must have"),
    (dict(cu_q_lens=jnp.zeros((3,))), "cu_q_lens must be int32"),
    (dict(q=jnp.zeros((10, 7, 64))), "multiple of num_kv_heads"),
    (dict(block_tables=jnp.zeros((2, 3, 1), I32)), "rank 2"),
]


@pytest.mark.parametrize("fn", [pk.paged_prefill_attention,
                                pk.paged_prefill_attention_reference])
@pytest.mark.parametrize("over,msg", PREFILL_BAD)
def test_prefill_rejects(fn, over, msg):
  with pytest.raises(ValueError, match=msg):
    fn(**_prefill_args(**over))


@pytest.mark.parametrize("k_shape,slots,msg", [
    ((3, 2, 32), (3,), "k must have shape"),
    ((3, 2, 64), (4,), "slot_mapping has 4 entries"),
])
def test_write_kv_rejects(k_shape, slots, msg):
  cache = jnp.zeros((5, 2, 2, 16, 64))
  k = jnp.zeros(k_shape)
  with pytest.raises(ValueError, match=msg):
    pk.write_kv(cache, k, k, jnp.zeros(slots, I32))


def test_write_kv_rejects_float_slots():
  k = jnp.zeros((3, 2, 64))
  with pytest.raises(ValueError, match="slot_mapping must be int32"):
    pk.write_kv(jnp.zeros((5, 2, 2, 16, 64)), k, k, jnp.zeros((3,)))


def test_backend_resolution():
  expected = "xla"
  if jax.default_backend() == "gpu":  # Mosaic prefill on Hopper only (wgmma)
    hopper = str(jax.devices()[0].compute_capability).startswith("9")
    expected = "mosaic" if hopper else "triton"
  assert pk.default_backend() == expected
  assert pk.resolve_backend(None) == expected
  assert pk.resolve_backend("xla") == "xla"
  assert pk.resolve_backend("triton") == "triton"
  assert pk.resolve_backend("mosaic") == "mosaic"
  with pytest.raises(ValueError, match="unknown backend"):
    pk.resolve_backend("cuda")
  with pytest.raises(ValueError, match="unknown backend"):
    pk.paged_decode_attention(**_decode_args(), backend="tpu")


def test_num_splits_must_be_positive():
  with pytest.raises(ValueError, match="num_splits"):
    pk.paged_decode_attention(**_decode_args(), backend="xla", num_splits=0)


def test_public_names():
  assert sorted(pk.__all__) == sorted([
      "paged_decode_attention", "paged_prefill_attention", "write_kv",
      "paged_decode_attention_reference", "paged_prefill_attention_reference",
      "write_kv_reference", "default_backend", "resolve_backend", "reads_whole_block_table",
      "QuantizedKV"])


@pytest.mark.parametrize("capability,expected", [("9.0", "mosaic"), ("8.0", "triton"),
                                                 ("10.0", "triton")])
def test_default_backend_is_mosaic_on_hopper_only(monkeypatch, capability, expected):
  """The GPU is faked (none here): a device's compute capability picks the default."""
  device = type("FakeGpu", (), {"compute_capability": capability})()
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  monkeypatch.setattr(jax, "devices", lambda *a: [device])
  assert pk.default_backend() == expected
