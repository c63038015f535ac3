"""Per-device tiling of the GPU kernels, from tables measured on each device.

A table is `pallas_kernels/tuning/<device slug>.json`, written by
`python -m benchmarks.tune_kernels --write-table` on the device itself: one
entry per measured shape class with the fastest configuration found there.
A problem takes the entry nearest to it (same block size and head_dim first,
then the closest number of programs and context on a log scale); its split
count is rescaled so that batch x kv_heads x splits stays what was measured.
A device with no table, or a shape with no entry of its block size and
head_dim, gets `heuristics` (the Triton decode's tuned on an H100, 2026-11-22;
the Mosaic decode's on an H200, 2026-12-02). The table's "decode" entries
tile the Triton decode kernel, its "decode_mosaic" entries the Mosaic one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import re

from pallas_kernels import heuristics
from pallas_kernels.decode_mosaic import DecodeMosaicConfig

TABLE_DIR = pathlib.Path(__file__).with_name("tuning")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  num_splits: int
  pages_per_step: int
  num_warps: int
  num_stages: int


def device_slug(device_kind: str) -> str:
  """'NVIDIA H200' -> 'nvidia-h200' (the table's file name)."""
  return re.sub(r"[^a-z0-9]+", "-", device_kind.lower()).strip("-")


@functools.cache
def load_table(device_kind: str) -> dict:
  """The device's table ({} if none is checked in)."""
  path = TABLE_DIR / f"{device_slug(device_kind)}.json"
  return json.loads(path.read_text()) if path.exists() else {}


def _distance(entry: dict, programs: int, context: int) -> float:
  return (abs(math.log2(programs / (entry["batch"] * entry["kv_heads"])))
          + abs(math.log2(context / entry["context"])))


def _pow2_at_most(x: float) -> int:
  return 1 << max(0, int(math.floor(math.log2(max(x, 1.0)))))


def decode_config(device_kind: str, batch: int, num_kv_heads: int, max_blocks: int,
                  block_size: int, head_dim: int, itemsize: int) -> DecodeConfig:
  """The decode kernel's tiling for this problem on this device."""
  entries = [e for e in load_table(device_kind).get("decode", ())
             if e["block_size"] == block_size and e["head_dim"] == head_dim
             and e["itemsize"] == itemsize]
  if not entries:
    return heuristic_decode_config(batch, num_kv_heads, max_blocks, block_size, head_dim,
                                   itemsize)
  programs = batch * num_kv_heads
  e = min(entries, key=lambda e: _distance(e, programs, max_blocks * block_size))
  steps = -(-max_blocks // e["pages_per_step"])
  measured = e["batch"] * e["kv_heads"] * e["num_splits"]
  splits = min(_pow2_at_most(measured / programs), heuristics.MAX_SPLITS, _pow2_at_most(steps))
  return DecodeConfig(splits, e["pages_per_step"], e["num_warps"], e["num_stages"])


def decode_mosaic_config(device_kind: str, batch: int, num_kv_heads: int,
                         max_blocks: int, block_size: int, head_dim: int,
                         itemsize: int, kv_cache_dtype: str = "bfloat16"):
  """The Mosaic decode kernel's tiling (a DecodeMosaicConfig) for this
  problem: the nearest "decode_mosaic" entry of the device's table, its
  splits rescaled as decode_config's; else heuristics.decode_mosaic_config."""
  e = decode_mosaic_entry(device_kind, batch, num_kv_heads, max_blocks,
                          block_size, head_dim, kv_cache_dtype)
  if e is None or e["itemsize"] != itemsize:
    return heuristics.decode_mosaic_config(batch, num_kv_heads, max_blocks,
                                           block_size)
  steps = -(-max_blocks * block_size // e["block_kv"])
  measured = e["batch"] * e["kv_heads"] * e["num_splits"]
  splits = min(_pow2_at_most(measured / (batch * num_kv_heads)),
               heuristics.MAX_SPLITS, _pow2_at_most(steps))
  streams = e.get("streams", 1)
  streams = streams if num_kv_heads % streams == 0 else 1
  # NOTE: at most two issuers a stream (DecodeMosaicConfig), so they follow streams.
  issuers = min(e.get("issuers", 1), 2 * streams)
  return DecodeMosaicConfig(block_kv=e["block_kv"], stages=e["stages"],
                            num_splits=splits, qk_8bit=e.get("qk_8bit", False),
                            v_converters=e.get("v_converters", 1), streams=streams,
                            ctas=e.get("ctas", 0), issuers=issuers,
                            dynamic=e.get("dynamic", False))


def decode_mosaic_entry(device_kind: str, batch: int, num_kv_heads: int,
                        max_blocks: int, block_size: int, head_dim: int,
                        kv_cache_dtype: str = "bfloat16") -> dict | None:
  """The device table's "decode_mosaic" entry nearest to this problem among
  those of its block size, head_dim and KV-cache dtype (entries without a
  kv_cache_dtype are bfloat16's), or None."""
  entries = [e for e in load_table(device_kind).get("decode_mosaic", ())
             if e["block_size"] == block_size and e["head_dim"] == head_dim
             and e.get("kv_cache_dtype", "bfloat16") == kv_cache_dtype]
  if not entries:
    return None
  programs = batch * num_kv_heads
  return min(entries, key=lambda e: _distance(e, programs, max_blocks * block_size))


def prefill_mosaic_q8_measured_faster(device_kind: str, head_dim: int,
                                      kv_cache_dtype: str) -> bool:
  """Whether the device table's "prefill_mosaic_q8" entries of this head_dim
  and KV-cache dtype exist and each timed the Mosaic prefill over the 8-bit
  cache faster than the Triton kernel in the same run
  (benchmarks/mosaic_probe.py --write-table)."""
  entries = [e for e in load_table(device_kind).get("prefill_mosaic_q8", ())
             if e["head_dim"] == head_dim and e["kv_cache_dtype"] == kv_cache_dtype]
  return bool(entries) and all(e["us"] < e["triton_us"] for e in entries)


def heuristic_decode_config(batch: int, num_kv_heads: int, max_blocks: int, block_size: int,
                            head_dim: int, itemsize: int) -> DecodeConfig:
  """The shape-only choice (`heuristics`), for devices without a table."""
  pages = heuristics.decode_pages_per_step(block_size)
  return DecodeConfig(
      heuristics.decode_num_splits(batch, num_kv_heads, max_blocks, block_size), pages, 4,
      heuristics.num_stages(pages * block_size, head_dim, itemsize))
