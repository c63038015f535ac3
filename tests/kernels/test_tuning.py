"""Per-device tuning tables: lookup, fallback, and the checked-in tables' configurations."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels as pk
from pallas_kernels import heuristics, tuning
from pallas_kernels.decode_triton import decode_triton
from tests.kernels import helpers

TABLES = sorted(tuning.TABLE_DIR.glob("*.json"))
FIELDS = {"batch", "context", "kv_heads", "head_dim", "block_size", "itemsize",
          "num_splits", "pages_per_step", "num_warps", "num_stages"}


def test_a_table_is_checked_in_for_the_h200():
  assert tuning.device_slug("NVIDIA H200") == "nvidia-h200"
  assert tuning.load_table("NVIDIA H200")["device_kind"] == "NVIDIA H200"


@pytest.mark.parametrize("path", TABLES, ids=lambda p: p.stem)
def test_table_entries_are_complete_and_named_after_their_device(path):
  tbl = json.loads(path.read_text())
  assert tuning.device_slug(tbl["device_kind"]) == path.stem
  assert "decode" in tbl or "decode_mosaic" in tbl  # tune_kernels' or the probe's
  if "decode" in tbl:
    assert tbl["measured"] and tbl["command"]
  if "decode_mosaic" in tbl:
    assert tbl["decode_mosaic_command"]
  for e in tbl.get("decode", []):
    assert FIELDS <= set(e), e
    assert e["num_splits"] * e["pages_per_step"] <= e["context"] // e["block_size"]


def test_no_table_means_the_shape_heuristics():
  got = tuning.decode_config("cpu", 64, 8, 128, 16, 128, 2)
  assert got == tuning.heuristic_decode_config(64, 8, 128, 16, 128, 2)
  assert got.num_splits == heuristics.decode_num_splits(64, 8, 128, 16)


def test_nearest_entry_and_split_rescaled_to_the_measured_program_count(monkeypatch):
  entries = [dict(batch=64, context=2048, kv_heads=8, head_dim=128, block_size=16,
                  itemsize=2, num_splits=1, pages_per_step=8, num_warps=4, num_stages=3),
             dict(batch=8, context=8192, kv_heads=8, head_dim=128, block_size=16,
                  itemsize=2, num_splits=4, pages_per_step=2, num_warps=8, num_stages=4)]
  monkeypatch.setattr(tuning, "load_table", lambda kind: {"decode": entries})
  assert tuning.decode_config("x", 64, 8, 128, 16, 128, 2) == tuning.DecodeConfig(1, 8, 4, 3)
  # 8 x 8192 measured 4 splits over 64 programs; 4 rows have half the programs.
  assert tuning.decode_config("x", 4, 8, 512, 16, 128, 2) == tuning.DecodeConfig(8, 2, 8, 4)
  # Never more splits than steps: 16 blocks in steps of 2 pages.
  assert tuning.decode_config("x", 1, 8, 16, 16, 128, 2).num_splits == 8
  # Another head_dim or block size has no entry: heuristics.
  assert tuning.decode_config("x", 64, 8, 128, 16, 64, 2) == (
      tuning.heuristic_decode_config(64, 8, 128, 16, 64, 2))


def _tabled_configs():
  return sorted({(e["block_size"], e["pages_per_step"], e["num_splits"])
                 for p in TABLES for e in json.loads(p.read_text()).get("decode", [])})


@pytest.mark.parametrize("cfg", _tabled_configs(), ids=str)
def test_every_tabled_configuration_is_exact(cfg):
  """Each (block size, pages per step, splits) a table picks, against the reference."""
  block_size, pages, splits = cfg
  rng = np.random.default_rng(block_size + pages)
  lengths = [1, 0, 5 * block_size + 3, pages * splits * block_size]
  paged = helpers.make_paged(rng, lengths, 2, 64, block_size, np.float32)
  q = jnp.asarray(rng.standard_normal((len(lengths), 8, 64)), jnp.float32)
  args = (q, jnp.asarray(paged.kv_cache), jnp.asarray(paged.block_tables),
          jnp.asarray(lengths, jnp.int32))
  out = decode_triton(*args, scale=0.125, num_splits=splits, pages_per_step=pages,
                      interpret=helpers.INTERPRET)
  ref = pk.paged_decode_attention_reference(*args, scale=0.125)
  assert helpers.rel_err(np.asarray(out, np.float64), np.asarray(ref, np.float64)) < (
      helpers.tolerance(np.float32))


def test_tuner_times_short_rows_in_a_wide_table_and_keeps_the_best_overall():
  from benchmarks import tune_kernels as tk
  assert tk.lengths_of(4096, 16) == [256, 1024, 4096]
  assert tk.lengths_of(64, 16) == [16, 64]         # never under one block
  fast_long = dict(cfg="a", us=[30.0, 40.0, 100.0], error=None)
  even = dict(cfg="b", us=[12.0, 36.0, 110.0], error=None)
  broken = dict(cfg="c", us=[float("nan")] * 3, error="compile error")
  # "b" is 2.5x better on short rows and 10 % worse on long ones: the geometric mean wins.
  assert tk.pick([fast_long, even, broken])["cfg"] == "b"
  assert tk.pick([fast_long, broken])["cfg"] == "a"
  q, kv, tables, lengths = tk.make_problem(jax.random.key(0), 2, 64, 4, 2, 8, 16)
  assert tables.shape == (2, 4) and lengths.tolist() == [64, 64]
  assert tk.with_length((q, kv, tables, lengths), 16)[3].tolist() == [16, 16]


def test_partial_retune_replaces_only_its_block_sizes():
  from benchmarks import tune_kernels as tk
  entry = lambda bs, splits: dict(block_size=bs, batch=64, num_splits=splits)
  old = dict(command="first run", decode=[entry(16, 1), entry(64, 1), entry(128, 1)])
  new = dict(command="tune", measured="2026-12-02", decode=[entry(64, 4)])
  out = tk.merged(new, old, {64})
  assert sorted((e["block_size"], e["num_splits"]) for e in out["decode"]) == [
      (16, 1), (64, 4), (128, 1)]
  assert out["command"].startswith("first run") and "[64] re-measured 2026-12-02" in out["command"]


MOSAIC_FIELDS = {"batch", "context", "kv_heads", "head_dim", "block_size", "itemsize",
                 "block_kv", "stages", "num_splits"}


@pytest.mark.parametrize("path", TABLES, ids=lambda p: p.stem)
def test_mosaic_decode_entries_are_valid_tilings_that_fit(path):
  from pallas_kernels.decode_mosaic import DecodeMosaicConfig  # pylint: disable=g-import-not-at-top
  from pallas_kernels.decode_mosaic_q8_compute import q_cols  # pylint: disable=g-import-not-at-top
  from pallas_kernels.prefill_mosaic import SMEM_BYTES  # pylint: disable=g-import-not-at-top
  for e in json.loads(path.read_text()).get("decode_mosaic", []):
    assert MOSAIC_FIELDS <= set(e), e
    cfg = DecodeMosaicConfig(block_kv=e["block_kv"], stages=e["stages"],
                             num_splits=e["num_splits"],
                             qk_8bit=e.get("qk_8bit", False),
                             v_converters=e.get("v_converters", 1),
                             streams=e.get("streams", 1), ctas=e.get("ctas", 0),
                             issuers=e.get("issuers", 1))
    if e["itemsize"] == 2:  # the 8-bit kernel's options are its entries' only
      assert not cfg.qk_8bit and cfg.v_converters == 1 and cfg.streams == 1, e
      assert cfg.ctas == 0 and cfg.issuers == 1, e
    assert e["kv_heads"] % cfg.streams == 0, e
    assert not cfg.qk_8bit or e["kv_cache_dtype"] == "int8", e  # supports()
    # An 8-bit entry's q is bf16, its query tile the group's q_cols columns.
    cols = 0 if e["itemsize"] == 2 else q_cols(e["q_heads"] // e["kv_heads"])
    assert cfg.smem_bytes(e["head_dim"], 2, cols) <= SMEM_BYTES, e
    assert e.get("kv_cache_dtype", "bfloat16") in (
        ("bfloat16",) if e["itemsize"] == 2 else ("int8", "float8_e4m3")), e
    assert e["num_splits"] * e["block_kv"] <= e["context"], e


def test_mosaic_decode_nearest_entry_else_heuristics(monkeypatch):
  from pallas_kernels.decode_mosaic import DecodeMosaicConfig as C  # pylint: disable=g-import-not-at-top
  assert tuning.decode_mosaic_config("cpu", 8, 8, 512, 16, 128, 2) == (
      heuristics.decode_mosaic_config(8, 8, 512, 16))
  assert heuristics.decode_mosaic_config(8, 8, 512, 16) == C(128, 2, 2)   # 128 CTAs
  assert heuristics.decode_mosaic_config(64, 8, 128, 16) == C(128, 2, 1)
  assert heuristics.decode_mosaic_config(1, 8, 16, 16).num_splits == 2    # 2 steps only
  entries = [dict(batch=64, context=2048, kv_heads=8, head_dim=128, block_size=16,
                  itemsize=2, block_kv=128, stages=2, num_splits=1),
             dict(batch=8, context=8192, kv_heads=8, head_dim=128, block_size=16,
                  itemsize=2, block_kv=64, stages=3, num_splits=2)]
  monkeypatch.setattr(tuning, "load_table", lambda kind: {"decode_mosaic": entries})
  assert tuning.decode_mosaic_config("x", 64, 8, 128, 16, 128, 2) == C(128, 2, 1)
  # 8 x 8192 measured 2 splits over 64 programs; 2 rows have a quarter of them.
  assert tuning.decode_mosaic_config("x", 2, 8, 512, 16, 128, 2) == C(64, 3, 8)
  # Never more splits than steps of the table's width: 4 blocks = 1 step of 64.
  assert tuning.decode_mosaic_config("x", 1, 8, 4, 16, 128, 2).num_splits == 1
  assert tuning.decode_mosaic_config("x", 64, 8, 128, 32, 128, 2) == (
      heuristics.decode_mosaic_config(64, 8, 128, 32))
  # An 8-bit KV dtype takes its own entries only (none of bf16's).
  assert tuning.decode_mosaic_entry("x", 64, 8, 128, 16, 128, "int8") is None
  int8 = dict(entries[1], itemsize=1, kv_cache_dtype="int8", block_kv=128, stages=4)
  entries.append(int8)
  assert tuning.decode_mosaic_entry("x", 64, 8, 128, 16, 128, "int8") is int8
  assert tuning.decode_mosaic_entry("x", 64, 8, 128, 16, 128, "float8_e4m3") is None
  assert tuning.decode_mosaic_config("x", 8, 8, 512, 16, 128, 1, "int8") == C(128, 4, 2)
  # An 8-bit entry's kernel options come with its tiling.
  int8.update(qk_8bit=True, v_converters=2)
  assert tuning.decode_mosaic_config("x", 8, 8, 512, 16, 128, 1, "int8") == C(
      128, 4, 2, qk_8bit=True, v_converters=2)
  # Two streams pair KV heads: a model with an odd count runs one a CTA.
  int8.update(block_kv=64, v_converters=1, streams=2)
  assert tuning.decode_mosaic_config("x", 8, 8, 512, 16, 128, 1, "int8").streams == 2
  assert tuning.decode_mosaic_config("x", 8, 3, 512, 16, 128, 1, "int8").streams == 1
  # CTAs taking items in turn: the entry's count, whatever the batch
  int8.update(ctas=132, issuers=2)
  got = tuning.decode_mosaic_config("x", 8, 8, 512, 16, 128, 1, "int8")
  assert (got.ctas, got.issuers) == (132, 2)
  # four issuers need two streams: an odd KV-head count runs one stream, two issuers
  int8.update(issuers=4)
  got = tuning.decode_mosaic_config("x", 8, 3, 512, 16, 128, 1, "int8")
  assert (got.streams, got.issuers) == (1, 2)
  # dynamic tickets come with the entry's CTA count
  assert not got.dynamic
  int8.update(dynamic=True)
  assert tuning.decode_mosaic_config("x", 8, 8, 512, 16, 128, 1, "int8").dynamic
  assert tuning.decode_mosaic_entry("x", 64, 8, 128, 16, 128)["itemsize"] == 2
