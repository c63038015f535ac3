"""Planned step shapes, counted on the host without compiling anything."""
from __future__ import annotations

import dataclasses
import os

import pytest

from engine import EngineConfig
from engine.buckets import Buckets, plan
from engine.shape_plan import buckets_for, planned_shapes
from models.config import ModelConfig
from models.weights.random_init import config_path

# The default serving configuration of issue 19 (measured: 255 executables before).
SERVING = dict(max_num_seqs=256, max_model_len=4096, max_batch_tokens=2048, block_size=16,
               enable_prefix_caching=True)


@pytest.fixture(scope="module")
def llama3_8b() -> ModelConfig:
  return ModelConfig.from_json(config_path("llama3-8b"))


@pytest.mark.parametrize("decode_steps", [1, 4])
def test_default_serving_config_plans_at_most_40_shapes_on_the_gpu(llama3_8b, decode_steps):
  config = EngineConfig(**SERVING, attention_backend="triton", num_decode_steps=decode_steps)
  shapes = planned_shapes(config, llama3_8b)
  # 9 decode row buckets (1..256) x {1, k} iterations + 8 prefill token buckets (16..2048),
  # one block-table width (4096 / 16 = 256 blocks), any sampler variant.
  assert len(shapes) == 9 * len({1, decode_steps}) + 8 <= 40
  assert {s.width for s in shapes} == {256}
  assert len(set(shapes)) == len(shapes)
  prefill = [s for s in shapes if s.kind == "prefill"]
  assert [(s.tokens, s.seqs) for s in prefill] == [(t, min(t, 256)) for t in
                                                   (16, 32, 64, 128, 256, 512, 1024, 2048)]
  assert {s.decode_steps for s in shapes if s.kind == "decode"} == {1, decode_steps}


@pytest.mark.parametrize("k", [2, 4, 8])
def test_speculation_adds_one_verify_shape_per_decode_row_bucket(llama3_8b, k):
  config = EngineConfig(**SERVING, attention_backend="triton", speculative="ngram",
                        num_speculative_tokens=k)
  shapes = planned_shapes(config, llama3_8b)
  verify = [s for s in shapes if s.kind == "verify"]
  # 9 decode + 8 prefill + 9 verify (rows 1..256, k + 1 token slots each).
  assert len(shapes) == 9 + 8 + 9 <= 40
  assert [(s.tokens, s.seqs, s.width) for s in verify] == [
      (r * (k + 1), r, 256) for r in (1, 2, 4, 8, 16, 32, 64, 128, 256)]


def test_the_xla_reference_keeps_table_width_buckets(llama3_8b):
  # NOTE: its gather is over the whole table (pallas_kernels.reads_whole_block_table).
  config = EngineConfig(**SERVING, attention_backend="xla")
  widths = buckets_for(config, 4096).table_widths
  assert widths == (16, 32, 64, 128, 256)
  assert len(planned_shapes(config, llama3_8b)) == (9 + 8) * 5


def test_widths_are_powers_of_two_covering_the_context():
  b = Buckets.create(max_num_seqs=3, max_batch_tokens=100, max_model_len=3000, block_size=16,
                     width_buckets=False)
  assert b.table_widths == (256,) and b.decode_rows == (1, 2, 4)
  assert b.prefill_tokens == (16, 32, 64, 128)
  assert [s.kind for s in plan(b)] == ["decode"] * 3 + ["prefill"] * 4


def test_the_runner_warms_exactly_the_planned_shapes():
  from engine import LLM
  tiny = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments",
                      "tiny_llama.json")
  kw = dict(max_num_seqs=3, max_batch_tokens=32, max_model_len=600, num_decode_steps=2)
  llm = LLM(f"random:{tiny}", **kw)
  runner = llm.engine.runner
  want = planned_shapes(EngineConfig(model=f"random:{tiny}", **kw), llm.engine.model.config)
  assert runner.planned_shapes() == want
  assert [dataclasses.astuple(s) for s in want if s.kind == "decode"] == [
      ("decode", r, r, w, k) for r in (1, 2, 4) for w in (16, 32, 64) for k in (1, 2)]
