"""`InferenceServer` inside the test process: per-instance state, the engine's
context limit from a small KV cache, and the cache-salt policy."""
from __future__ import annotations

import concurrent.futures
import threading
import time

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.auth import ApiKeys
from serving.client import PagedJaxClient
from serving.server import InferenceServer, ServerConfig
from tests.serving.conftest import ENGINE_KWARGS

KEY = "k" * 24


def test_max_model_len_over_the_cache_is_refused_before_loading():
  from engine import EngineConfig
  with pytest.raises(ValueError) as err:
    EngineConfig(**ENGINE_KWARGS, num_blocks=4)     # 3 usable blocks of 16: 48 < 256 tokens
  assert "--max-model-len" in str(err.value) and "--num-blocks 4" in str(err.value)
  assert "48 tokens" in str(err.value) and "model's context" not in str(err.value)


def test_two_servers_in_one_process_and_a_prompt_longer_than_the_cache(smollm2_model):
  from engine import EngineConfig, LLMEngine
  small = dict(ENGINE_KWARGS, max_model_len=None)
  # NOTE: 4 blocks (3 usable) of 16 tokens: max_model_len defaults to the 48 tokens they hold.
  tiny = LLMEngine(EngineConfig(**small, num_blocks=4), model=smollm2_model)
  other = LLMEngine(EngineConfig(**small, block_size=32, num_blocks=8), model=smollm2_model)
  assert (tiny.max_model_len, other.max_model_len) == (48, 224)
  configs = [ServerConfig(port=0, metrics_port=0, max_waiting=4, shutdown_grace_s=5),
             ServerConfig(port=0, metrics_port=0, max_waiting=4, shutdown_grace_s=5,
                          api_keys=ApiKeys.from_mapping({KEY: "a"}),
                          client_cache_salt="reject")]
  servers = [InferenceServer(e, c) for e, c in zip((tiny, other), configs)]
  try:
    for s in servers:
      s.start()
    assert servers[0].port != servers[1].port
    prompt = "one two three four five six seven eight nine ten " * 10
    with PagedJaxClient(f"127.0.0.1:{servers[0].port}") as c:
      c.wait_until_serving(timeout=30)
      assert 48 < len(c.tokenize(prompt)) < 256
      with pytest.raises(grpc.RpcError) as err:
        c.generate(prompt, max_tokens=1)
      assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
      assert "max_model_len = 48 tokens (what the KV cache holds: 3 blocks x 16" in (
          err.value.details())
      assert c.health() == "SERVING"
    with PagedJaxClient(f"127.0.0.1:{servers[1].port}", api_key=KEY) as c:
      with pytest.raises(grpc.RpcError) as err:
        c.generate("Hi", max_tokens=1, cache_salt="mine")
      assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
      assert "cache_salt" in err.value.details() and "reject" in err.value.details()
    m0, m1 = (s.metrics.render() for s in servers)
    assert 'pagedjax_requests_rejected_total{code="invalid_argument"} 1.0' in m0
    assert 'finish_reason="error"' not in m0 + m1
    assert "pagedjax_kv_blocks_total 3.0" in m0 and "pagedjax_kv_blocks_total 7.0" in m1
    assert "pagedjax_kv_blocks_used 0.0" in m0
  finally:
    for s in servers:
      s.shutdown(grace_s=0)


def test_health_is_not_serving_until_the_warm_up_is_done(smollm2_model):
  """The server listens at once; health says NOT_SERVING while the engine loop warms up
  (held back here by a gate around the real warm-up) and SERVING after; a request sent
  meanwhile waits and is then served."""
  from engine import EngineConfig, LLMEngine
  engine = LLMEngine(EngineConfig(**ENGINE_KWARGS), model=smollm2_model)
  gate, warm_up = threading.Event(), engine.warmup
  engine.warmup = lambda **kw: (gate.wait(60), warm_up(**kw))
  server = InferenceServer(engine, ServerConfig(host="127.0.0.1", port=0, metrics_port=None,
                                                max_waiting=4, shutdown_grace_s=5), warmup=True)
  pool = concurrent.futures.ThreadPoolExecutor(1)
  try:
    server.start()
    with PagedJaxClient(f"127.0.0.1:{server.port}") as c:
      assert c.health() == c.health("pagedjax.v1.Inference") == "NOT_SERVING"
      early = pool.submit(c.generate, "The capital of France is", temperature=0.0, max_tokens=3)
      time.sleep(0.5)
      assert not early.done() and not server.wait_until_serving(0)
      gate.set()
      assert server.wait_until_serving(240)
      assert c.health() == c.health("pagedjax.v1.Inference") == "SERVING"
      assert len(early.result(timeout=120).token_ids) == 3
    assert engine.runner.warm and server.ready_stats.compile_seconds > 0
    samples = {s.name: s.value for f in text_string_to_metric_families(server.metrics.render())
               for s in f.samples}
    assert samples["pagedjax_compilations_total"] == engine.stats().num_compilations
    assert samples["pagedjax_compile_seconds_total"] == pytest.approx(
        engine.stats().compile_seconds)
  finally:
    gate.set()
    server.shutdown(grace_s=0)
    pool.shutdown()
