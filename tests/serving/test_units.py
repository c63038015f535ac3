"""Fast serving tests that need no model: stubs, flags, JSONL parsing, metrics."""
from __future__ import annotations

import argparse
import filecmp
import os
import subprocess

import pytest

from serving import batch_io
from serving.engine_flags import add_engine_args, engine_config_from_args
from serving.metrics import ServingMetrics
from serving.sampling_flags import add_sampling_args, sampling_kwargs_from_args
from tests.serving.conftest import REPO

STUBS = ("pagedjax_pb2.py", "pagedjax_pb2.pyi", "pagedjax_pb2_grpc.py")


def test_committed_stubs_match_a_regeneration(tmp_path):
  subprocess.run(["bash", "scripts/gen_proto.sh", str(tmp_path)], cwd=REPO, check=True,
                 env={**os.environ, "PYTHON": os.path.join(REPO, ".venv/bin/python")})
  rel = os.path.join("serving", "proto", "pagedjax", "v1")
  for name in STUBS:
    assert filecmp.cmp(os.path.join(REPO, rel, name), tmp_path / rel / name, shallow=False), (
        f"{name} is stale: run scripts/gen_proto.sh")


def test_engine_flags_build_the_config_and_keep_its_defaults():
  from engine import EngineConfig
  parser = argparse.ArgumentParser()
  add_engine_args(parser)
  assert engine_config_from_args(parser.parse_args([])) == EngineConfig()
  args = parser.parse_args(["--block-size", "32", "--no-enable-prefix-caching",
                            "--max-num-seqs", "3", "--engine-seed", "5", "--warmup",
                            "--num-decode-steps", "4"])
  cfg = engine_config_from_args(args, max_model_len=128)
  assert (cfg.block_size, cfg.enable_prefix_caching, cfg.max_num_seqs, cfg.seed, cfg.warmup,
          cfg.max_model_len, cfg.num_decode_steps) == (32, False, 3, 5, True, 128, 4)
  with pytest.raises(ValueError, match="--block-size"):
    engine_config_from_args(parser.parse_args(["--block-size", "12"]))
  with pytest.raises(ValueError, match="--num-decode-steps"):
    engine_config_from_args(parser.parse_args(["--num-decode-steps", "0"]))


def test_warmup_and_compilation_cache_flags():
  from serving.commands import serve
  parser = argparse.ArgumentParser()
  serve.add_arguments(parser)
  assert parser.parse_args([]).engine_warmup is True       # serve: warm unless --no-warmup
  assert parser.parse_args(["--no-warmup"]).engine_warmup is False
  assert parser.parse_args(["--warmup"]).engine_warmup is True
  off = engine_config_from_args(parser.parse_args(["--no-compilation-cache"]))
  assert off.compilation_cache_dir == "off"
  moved = engine_config_from_args(parser.parse_args(["--compilation-cache-dir", "/tmp/x"]))
  assert moved.compilation_cache_dir == "/tmp/x"


def test_compile_and_speculation_counters_reach_prometheus():
  from engine.engine import EngineStats
  metrics = ServingMetrics()
  stats = dict(num_running=0, num_waiting=0, kv_blocks_used=0, kv_blocks_total=8,
               prefix_query_tokens_total=0, prefix_hit_tokens_total=0, num_preemptions_total=0,
               prompt_tokens_total=0, prefill_tokens_computed_total=0,
               generation_tokens_total=0, num_compilations=4, compile_seconds=2.5)
  metrics.observe_stats(EngineStats(**stats))
  metrics.observe_stats(EngineStats(**dict(stats, num_compilations=5, compile_seconds=3.0)))
  text = metrics.render()
  assert "pagedjax_compilations_total 5.0" in text
  assert "pagedjax_compile_seconds_total 3.0" in text
  assert "pagedjax_spec_proposed_tokens_total 0.0" in text
  metrics.observe_stats(EngineStats(**dict(stats, spec_proposed_tokens_total=9,
                                           spec_accepted_tokens_total=4)))
  text = metrics.render()
  assert "pagedjax_spec_proposed_tokens_total 9.0" in text
  assert "pagedjax_spec_accepted_tokens_total 4.0" in text


def test_sampling_flags_default_to_sampling_params():
  from engine import SamplingParams
  parser = argparse.ArgumentParser()
  add_sampling_args(parser)
  defaults = sampling_kwargs_from_args(parser.parse_args([]))
  assert SamplingParams(**defaults) == SamplingParams()
  assert "seed" not in defaults and "stop" not in defaults     # unset: None is left out
  got = sampling_kwargs_from_args(parser.parse_args(
      ["--temperature", "0.5", "--stop", "a", "--stop", "b", "--stop-token-id", "7",
       "--ignore-eos"]))
  assert got == {**defaults, "temperature": 0.5, "stop": ["a", "b"], "stop_token_ids": [7],
                 "ignore_eos": True}


@pytest.mark.parametrize("line,error", [
    ("[1, 2]", "JSON object"),
    ('{"prompt": "x"}', "'id'"),
    ('{"id": true, "prompt": "x"}', "'id'"),
    ('{"id": "a"}', "exactly one of"),
    ('{"id": "a", "prompt": "x", "messages": [{"role": "user", "content": "y"}]}',
     "exactly one of"),
    ('{"id": "a", "prompt": ""}', "'prompt'"),
    ('{"id": "a", "messages": [{"role": "user"}]}', "'messages'"),
    ('{"id": "a", "prompt": "x", "cache_salt": 3}', "cache_salt"),
    ('{"id": "a", "prompt": "x", "priority": "high"}', "priority"),
    ('{"id": "a", "prompt": "x", "temprature": 0}', "temprature"),
])
def test_bad_batch_lines(line, error):
  got = batch_io.parse_line(line, 4)
  assert isinstance(got, batch_io.BadLine) and error in got.error


def test_good_batch_line():
  got = batch_io.parse_line(
      '{"id": 3, "messages": [{"role": "user", "content": "y"}], "top_p": 0.5, '
      '"cache_salt": "s", "priority": -1}', 9)
  assert isinstance(got, batch_io.BatchItem)
  assert (got.id, got.sampling, got.cache_salt, got.priority, got.key) == (
      3, {"top_p": 0.5}, "s", -1, "id:3")


def test_two_servers_metrics_live_in_one_process():
  a, b = ServingMetrics(), ServingMetrics()  # no duplicate-registration error
  a.ttft.observe(0.5)

  class Stats:
    num_running, num_waiting, kv_blocks_used, kv_blocks_total = 1, 2, 3, 10
    prefix_query_tokens_total, prefix_hit_tokens_total = 40, 16
    num_preemptions_total, prompt_tokens_total, generation_tokens_total = 0, 40, 9
    num_compilations, compile_seconds = 4, 1.5
    spec_proposed_tokens_total, spec_accepted_tokens_total = 0, 0

  a.observe_stats(Stats)
  a.observe_stats(Stats)  # totals are not double counted
  text_a, text_b = a.render(), b.render()
  assert "pagedjax_time_to_first_token_seconds_count 1.0" in text_a
  assert "pagedjax_time_to_first_token_seconds_count 0.0" in text_b
  assert "pagedjax_prefix_cache_hit_tokens_total 16.0" in text_a
  assert "pagedjax_kv_blocks_used 3.0" in text_a and "pagedjax_kv_blocks_used 0.0" in text_b


def test_a_burst_that_fits_the_sequence_slots_is_not_refused():
  """max_waiting counts requests beyond the free sequence slots: 4 slots + 1 waiting take a
  burst of 5 submitted before the engine admits any (it admits over several steps)."""
  import types
  from serving.engine_loop import EngineLoop, QueueFullError, Submission
  engine = types.SimpleNamespace(config=types.SimpleNamespace(max_num_seqs=4))
  loop = EngineLoop(engine, ServingMetrics(), max_waiting=1)
  for i in range(5):
    loop.submit(Submission(f"r{i}", [1, 2], None))
  assert loop.num_waiting() == 5
  with pytest.raises(QueueFullError, match="--max-waiting=1"):
    loop.submit(Submission("r5", [1, 2], None))
