"""The HTTP API inside the test process: API keys (401, tenants; the same `ApiKeys` and
salt rule as gRPC), tenant-scoped prefix-cache salts, field bounds, a full queue (429) and
draining (503)."""
from __future__ import annotations

import threading

import openai
import pytest

from serving.auth import ApiKeys
from serving.server import InferenceServer, ServerConfig
from tests.serving.conftest import ENGINE_KWARGS

MODEL = "SmolLM2-135M-Instruct.Q4_1"
KEY_A, KEY_B = "key-a-0123456789abcdef", "key-b-0123456789abcdef"
KEYS = {KEY_A: "tenant-a", KEY_B: "tenant-b"}
SHARED = "Here is a list of fruits: apple, banana, cherry, grape, lemon, mango. " * 3


@pytest.fixture(scope="module")
def server(smollm2_model):
  from engine import EngineConfig, LLMEngine
  engine = LLMEngine(EngineConfig(**ENGINE_KWARGS), model=smollm2_model)
  srv = InferenceServer(engine, ServerConfig(host="127.0.0.1", port=0, metrics_port=None,
                                             http_port=0, max_waiting=1, shutdown_grace_s=5,
                                             api_keys=ApiKeys.from_mapping(KEYS)))
  srv.start()
  try:
    yield srv
  finally:
    srv.shutdown(grace_s=0)


def _client(server, key: str) -> openai.OpenAI:
  return openai.OpenAI(base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key=key,
                       max_retries=0, timeout=120)


def _cached(client, salt: str | None = None) -> int:
  extra = {"cache_salt": salt} if salt else None
  r = client.completions.create(model=MODEL, prompt=SHARED, max_tokens=1, temperature=0,
                                extra_body=extra)
  return r.usage.prompt_tokens_details.cached_tokens


def test_oversized_fields_are_400_naming_the_field(server):
  client = _client(server, KEY_A)
  for extra, param in (({"cache_salt": "s" * 257}, "cache_salt"),
                       ({"stop": [f"s{i}" for i in range(17)]}, "stop"),
                       ({"stop_token_ids": list(range(257))}, "stop_token_ids")):
    body = dict(extra_body={k: v for k, v in extra.items() if k != "stop"})
    with pytest.raises(openai.BadRequestError) as err:
      client.completions.create(model=MODEL, prompt="hi", max_tokens=1,
                                stop=extra.get("stop"), **body)
    assert err.value.body["param"] == param, err.value.body


def test_bad_key_is_401_and_health_needs_none(server):
  with pytest.raises(openai.AuthenticationError) as err:
    _client(server, "wrong").models.list()
  assert err.value.body["code"] == "invalid_api_key"
  with pytest.raises(openai.AuthenticationError):
    _client(server, "wrong").completions.create(model=MODEL, prompt="hi", max_tokens=1)
  import urllib.request
  with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/health") as resp:
    assert resp.status == 200
  assert [m.id for m in _client(server, KEY_A).models.list().data] == [MODEL]


def test_tenants_never_share_cached_blocks(server):
  a, b = _client(server, KEY_A), _client(server, KEY_B)
  assert _cached(a, "same") == 0
  assert _cached(a, "same") >= 16          # the tenant's own cache hits
  assert _cached(b, "same") == 0           # the same client salt from another tenant misses
  assert _cached(b, "same") >= 16
  assert _cached(a) == 0                   # no salt is a separate cache of the tenant


def test_full_queue_is_429_and_draining_is_503(server):
  client = _client(server, KEY_A)
  # NOTE: 4 running (max_num_seqs) + 1 waiting (max_waiting) fill the server.
  streams = [client.completions.create(model=MODEL, prompt=f"Count to {i}:", max_tokens=200,
                                       temperature=0, stream=True) for i in range(4)]
  for s in streams:
    next(iter(s))                           # running: it has its first token
  waiting = threading.Thread(target=lambda: client.completions.create(
      model=MODEL, prompt="Wait:", max_tokens=1, temperature=0))
  waiting.start()
  try:
    _wait_until(lambda: server._loop.num_waiting() == 1)
    with pytest.raises(openai.RateLimitError) as err:
      client.completions.create(model=MODEL, prompt="One more:", max_tokens=1)
    assert err.value.body["code"] == "queue_full"
  finally:
    for s in streams:
      s.close()
    waiting.join(120)
  server._admissions.start_draining()
  with pytest.raises(openai.InternalServerError) as err:
    client.completions.create(model=MODEL, prompt="Late:", max_tokens=1)
  assert err.value.status_code == 503


def _wait_until(cond, timeout: float = 60.0) -> None:
  import time
  deadline = time.monotonic() + timeout
  while not cond():
    assert time.monotonic() < deadline, "condition not reached"
    time.sleep(0.05)


def test_a_model_without_tokenizer_serves_token_id_prompts():
  """Random weights (as on the GPU benchmarks) have no tokenizer: ids in, no text out."""
  from engine import EngineConfig, LLMEngine
  engine = LLMEngine(EngineConfig(model="random:smollm2-135m", **ENGINE_KWARGS))
  srv = InferenceServer(engine, ServerConfig(host="127.0.0.1", port=0, metrics_port=None,
                                             http_port=0, served_model_name="rnd"))
  srv.start()
  try:
    client = _client(srv, "none")
    chunks = list(client.completions.create(
        model="rnd", prompt=[5, 6, 7], max_tokens=3, temperature=0, stream=True, logprobs=0,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert [c.choices[0].text for c in chunks[:-1]] == ["", "", ""]
    assert all(t.startswith("token_id:") for c in chunks[:-1] for t in c.choices[0].logprobs.tokens)
    assert chunks[-1].usage.completion_tokens == 3 and chunks[-1].usage.prompt_tokens == 3
    # NOTE: token ids never queue for the tokenizer's threads: a full tokenize queue
    # (as under a burst of text prompts) does not refuse them.
    from serving.tokenize_pool import PoolFullError

    def full(*args, **kwargs):
      raise PoolFullError("server is busy: tokenize queue full")
    submit, srv._tokenize_pool.submit = srv._tokenize_pool.submit, full
    assert client.completions.create(model="rnd", prompt=[5, 6], max_tokens=1).usage.prompt_tokens == 2
    with pytest.raises(openai.RateLimitError):
      client.completions.create(model="rnd", prompt="text")
    srv._tokenize_pool.submit = submit
    for call in (lambda: client.completions.create(model="rnd", prompt="text"),
                 lambda: client.chat.completions.create(
                     model="rnd", messages=[{"role": "user", "content": "hi"}])):
      with pytest.raises(openai.BadRequestError) as err:
        call()
      assert "no tokenizer" in err.value.body["message"]
  finally:
    srv.shutdown(grace_s=0)
