"""A real `pagedjax serve` subprocess on loopback, driven over gRPC.

NOTE: one server for the whole module (loading and compiling take a while on
CPU); the SIGTERM test stops it, so it is the last test of the file.
"""
from __future__ import annotations

import concurrent.futures
import json
import shlex
import signal
import subprocess
import time

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from engine import SamplingParams
from engine.prompts import encode_prompt
from serving.client import PagedJaxClient
from tests.serving.conftest import MAX_WAITING, REPO, ServerProcess, pagedjax_cmd, subprocess_env

PROMPT = "The capital of France is"
CHAT = [{"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a primary color."}]


def _greedy(llm, max_tokens, prompt=None, ids=None):
  params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
  if ids is not None:
    return llm.generate(prompt_token_ids=[ids], sampling_params=params, use_tqdm=False)[0]
  return llm.generate([prompt], params, use_tqdm=False)[0]


@pytest.fixture(scope="module")
def server_process(serving_tmp):
  srv = ServerProcess(serving_tmp, "--max-waiting", str(MAX_WAITING), "--shutdown-grace", "60")
  try:
    yield srv
  finally:
    srv.stop()


@pytest.fixture(scope="module")
def expected(server_process, reference_llm):
  """LLM.generate's greedy outputs for PROMPT and CHAT (the parity reference).

  NOTE: computed while the server subprocess loads and compiles.
  """
  chat_ids = encode_prompt(reference_llm.tokenizer, messages=CHAT)
  return {"prompt": _greedy(reference_llm, 8, prompt=PROMPT),
          "chat": _greedy(reference_llm, 6, ids=chat_ids), "chat_ids": chat_ids}


@pytest.fixture(scope="module")
def server(server_process, expected):
  server_process.wait_ready()
  return server_process


def test_health_and_reflection(server):
  assert server.client.health() == "SERVING"
  assert server.client.health("pagedjax.v1.Inference") == "SERVING"
  stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(server.target))
  reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
      list_services="")])))
  names = {s.name for s in reply.list_services_response.service}
  assert {"pagedjax.v1.Inference", "grpc.health.v1.Health"} <= names


def test_unary_and_stream_match_llm_generate(server, expected):
  ref = expected["prompt"]
  unary = server.client.generate(PROMPT, temperature=0.0, max_tokens=8, request_id="u-1")
  assert unary.request_id == "u-1"
  assert (unary.text, unary.token_ids) == (ref.text, ref.token_ids)
  assert unary.finish_reason == ref.finish_reason.value
  chunks = list(server.client.generate_stream(PROMPT, temperature=0.0, max_tokens=8,
                                              request_id="s-1"))
  assert all(c.request_id == "s-1" for c in chunks)
  assert [c.finished for c in chunks] == [False] * (len(chunks) - 1) + [True]
  assert "".join(c.text for c in chunks) == ref.text
  assert [t for c in chunks for t in c.token_ids] == ref.token_ids
  usage = chunks[-1].usage
  assert usage.prompt_tokens == len(ref.prompt_token_ids)
  assert usage.completion_tokens == len(ref.token_ids)
  assert usage.time_to_first_token_s > 0


def test_prefix_cache_hits_show_in_usage_and_metrics(server):
  long_prompt = "Here is a list of fruits: apple, banana, cherry, grape, lemon, mango. " * 3
  first = server.client.generate(long_prompt, temperature=0.0, max_tokens=2)
  second = server.client.generate(long_prompt, temperature=0.0, max_tokens=2)
  assert first.usage.prompt_tokens > 32 and first.usage.cached_prompt_tokens == 0
  # NOTE: only whole 16-token blocks are cached, and the last prompt token is recomputed.
  assert second.usage.cached_prompt_tokens >= 16
  assert second.usage.cached_prompt_tokens < second.usage.prompt_tokens
  assert second.text == first.text
  m = server.metrics()
  assert m["pagedjax_prefix_cache_hit_tokens_total"] >= second.usage.cached_prompt_tokens
  assert m["pagedjax_prefix_cache_query_tokens_total"] >= 2 * first.usage.prompt_tokens - 1


def test_chat_messages_match_llm_generate(server, expected):
  ids, ref = expected["chat_ids"], expected["chat"]
  got = server.client.generate(messages=CHAT, temperature=0.0, max_tokens=6)
  assert (got.text, got.token_ids) == (ref.text, ref.token_ids)
  assert got.usage.prompt_tokens == len(ids)
  assert server.client.tokenize(messages=CHAT) == ids


def test_tokenize_matches_tokenizer(server, reference_llm):
  assert server.client.tokenize("Hello, world!") == reference_llm.tokenizer.encode("Hello, world!")


def test_32_concurrent_streams_are_complete_and_unmixed(server):
  prompts = ["The capital of France is", "One, two, three,", "def fibonacci(n):",
             "The color of the sky is"]
  expected = {p: server.client.generate(p, temperature=0.0, max_tokens=6) for p in prompts}
  assert len({e.text for e in expected.values()}) == len(prompts)  # distinguishable

  def stream(i: int):
    with PagedJaxClient(server.target) as c:
      return i, list(c.generate_stream(prompts[i % 4], temperature=0.0, max_tokens=6,
                                       request_id=f"c{i}"))

  with concurrent.futures.ThreadPoolExecutor(32) as pool:
    results = dict(pool.map(stream, range(32)))
  assert sorted(results) == list(range(32))
  for i, chunks in results.items():
    want = expected[prompts[i % 4]]
    assert {c.request_id for c in chunks} == {f"c{i}"}
    assert chunks[-1].finished and chunks[-1].finish_reason == want.finish_reason
    assert "".join(c.text for c in chunks) == want.text, f"stream {i} mixed or lost tokens"
    assert [t for c in chunks for t in c.token_ids] == want.token_ids
  assert server.wait_metric("pagedjax_kv_blocks_used", 0.0)["pagedjax_kv_blocks_used"] == 0.0


BAD_REQUESTS = [
    (dict(prompt=""), "prompt"),
    (dict(prompt="hi", messages=[{"role": "user", "content": "hi"}]), "prompt"),
    (dict(prompt="word " * 300), "prompt"),
    (dict(prompt="hi", temperature=-0.5), "temperature"),
    (dict(prompt="hi", top_p=0.0), "top_p"),
    (dict(prompt="hi", top_p=1.5), "top_p"),
    (dict(prompt="hi", max_tokens=0), "max_tokens"),
    (dict(prompt="hi", top_k=-7), "top_k"),
    (dict(prompt="hi", min_p=2.0), "min_p"),
    (dict(prompt="hi", stop=[""]), "stop"),
    (dict(prompt="hi", seed=-3), "seed"),
    (dict(prompt="hi", stop_token_ids=[-1]), "stop_token_ids"),
    (dict(messages=[{"role": "robot", "content": "hi"}]), "messages[0].role"),
    (dict(messages=[{"role": "user", "content": "a"}, {"role": "", "content": "b"}]),
     "messages[1].role"),
]


@pytest.mark.parametrize("kwargs,field", BAD_REQUESTS, ids=[f for _, f in BAD_REQUESTS])
def test_bad_input_is_invalid_argument_naming_the_field(server, kwargs, field):
  for call in (server.client.generate, lambda **kw: list(server.client.generate_stream(**kw))):
    with pytest.raises(grpc.RpcError) as err:
      call(**kwargs)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.value.details()
  ok = server.client.generate("Hi", temperature=0.0, max_tokens=1)
  assert ok.usage.completion_tokens == 1


def _running_stream(server, max_tokens=200):
  stream = server.client.generate_stream("Once upon a time", temperature=0.0,
                                         max_tokens=max_tokens, ignore_eos=True)
  it = iter(stream)
  first = next(it)
  assert not first.finished
  return stream, it


def test_cancel_mid_stream_frees_blocks(server):
  aborted = server.metrics().get('pagedjax_requests_finished_total{finish_reason=abort}', 0.0)
  stream, it = _running_stream(server)
  next(it)
  m = server.metrics()
  assert m["pagedjax_requests_running"] == 1 and m["pagedjax_kv_blocks_used"] > 0
  stream.cancel()
  m = server.wait_metric("pagedjax_kv_blocks_used", 0.0)
  assert m["pagedjax_kv_blocks_used"] == 0 and m["pagedjax_requests_running"] == 0
  assert m["pagedjax_requests_finished_total{finish_reason=abort}"] == aborted + 1


def test_deadline_expiry_frees_blocks(server):
  with pytest.raises(grpc.RpcError) as err:
    server.client.generate("Once upon a time", temperature=0.0, max_tokens=240,
                           ignore_eos=True, timeout=1.5)
  assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
  m = server.wait_metric("pagedjax_kv_blocks_used", 0.0)
  assert m["pagedjax_kv_blocks_used"] == 0 and m["pagedjax_requests_running"] == 0


def test_full_waiting_queue_is_resource_exhausted(server):
  running = [_running_stream(server)[0] for _ in range(4)]      # max_num_seqs = 4
  waiting = [server.client.generate_stream("Once upon a time", max_tokens=200)
             for _ in range(MAX_WAITING)]
  try:
    m = server.wait_metric("pagedjax_requests_waiting", float(MAX_WAITING))
    assert m["pagedjax_requests_waiting"] == MAX_WAITING
    with pytest.raises(grpc.RpcError) as err:
      server.client.generate("Hi", max_tokens=1)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max-waiting" in err.value.details()
  finally:
    for s in waiting + running:
      s.cancel()
  m = server.wait_metric("pagedjax_kv_blocks_used", 0.0)
  assert m["pagedjax_kv_blocks_used"] == 0 and m["pagedjax_requests_waiting"] == 0
  assert server.client.generate("Hi", temperature=0.0, max_tokens=1).usage.completion_tokens == 1


def test_metrics_endpoint_has_every_metric(server):
  m = server.metrics()
  for name in ("pagedjax_time_to_first_token_seconds_count",
               "pagedjax_inter_token_latency_seconds_count",
               "pagedjax_e2e_request_latency_seconds_count",
               "pagedjax_requests_running", "pagedjax_requests_waiting",
               "pagedjax_kv_blocks_used", "pagedjax_kv_blocks_total",
               "pagedjax_prefix_cache_query_tokens_total",
               "pagedjax_prefix_cache_hit_tokens_total", "pagedjax_preemptions_total",
               "pagedjax_generation_tokens_total", "pagedjax_prompt_tokens_total"):
    assert name in m, name
  assert m["pagedjax_kv_blocks_total"] > 0
  assert m["pagedjax_e2e_request_latency_seconds_count"] >= 40
  assert m["pagedjax_generation_tokens_total"] >= m["pagedjax_inter_token_latency_seconds_count"]
  assert m["pagedjax_prompt_tokens_total"] > 0


def test_serve_warms_up_by_default_and_never_compiles_after(server, reference_llm):
  """No --warmup flag: every planned step shape compiled before SERVING, none since."""
  from engine.shape_plan import planned_shapes
  planned = len(planned_shapes(reference_llm.engine.config, reference_llm.engine.model.config))
  with open(server.log_path) as f:
    log = f.read()
  assert f"pagedjax serve: SERVING ({planned} step shapes planned; {planned} compilations in " \
      in log
  assert "AFTER warm-up" not in log
  m = server.metrics()
  assert m["pagedjax_compilations_total"] == planned
  assert m["pagedjax_compile_seconds_total"] > 0


def test_client_cli_streams_and_prints_json(server, serving_tmp):
  want = server.client.generate(PROMPT, temperature=0.0, max_tokens=5)
  args = ["client", "--host", "127.0.0.1", "--port", str(server.port), "--no-chat-template",
          "--temperature", "0", "--max-tokens", "5"]
  env = subprocess_env(serving_tmp)
  streamed = subprocess.run(pagedjax_cmd(*args, PROMPT), cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
  assert streamed.returncode == 0, streamed.stderr
  assert streamed.stdout == want.text + "\n"
  assert "length" in streamed.stderr and "cut at --max-tokens 5" in streamed.stderr
  as_json = subprocess.run(pagedjax_cmd(*args, "--json", PROMPT), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=60)
  obj = json.loads(as_json.stdout)
  assert (obj["text"], obj["token_ids"], obj["finish_reason"]) == (
      want.text, want.token_ids, "length")
  plain = subprocess.run(pagedjax_cmd(*args, "--no-stream", "--logprobs", PROMPT), cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=60)
  assert plain.stdout == want.text + "\n"
  table = plain.stderr.splitlines()
  assert [int(row.split()[1]) for row in table[1:6]] == want.token_ids
  assert table[-1].startswith("pagedjax: the answer was cut at --max-tokens 5")
  # A bad value is refused before sending, naming the flag; the server would say
  # INVALID_ARGUMENT (exit status 1).
  bad = subprocess.run(pagedjax_cmd(*args[:-2], "--max-tokens", "0", PROMPT), cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=60)
  assert bad.returncode == 2 and "--max-tokens must be >= 1" in bad.stderr
  wrong = subprocess.run(pagedjax_cmd(*args, "--stop-token-id", "-1", PROMPT), cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=60)
  assert wrong.returncode == 2 and "--stop-token-id" in wrong.stderr


def _readme_client_command(port: int) -> list[str]:
  """The README's client example, verbatim but for the port (this server's)."""
  from tests.test_readme import readme_blocks
  (line,) = [ln for b in readme_blocks("bash") for ln in b.splitlines()
             if "pagedjax client" in ln]
  argv = shlex.split(line.split("#")[0])
  args = argv[[i for i, a in enumerate(argv) if a.endswith("pagedjax")][0] + 1:]
  assert args[args.index("--port") + 1] == "50051"
  args[args.index("--port") + 1] = str(port)
  return args


def test_readme_client_example_gives_the_answer(server, serving_tmp, reference_llm):
  """Chat template, greedy, 128 tokens: the same answer as `LLM.chat`."""
  args = _readme_client_command(server.port)
  proc = subprocess.run(pagedjax_cmd(*args), cwd=REPO, env=subprocess_env(serving_tmp),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  answer = proc.stdout.lower()
  assert "scattering" in answer and "blue" in answer and "light" in answer, proc.stdout
  (want,) = reference_llm.chat([{"role": "user", "content": args[-1]}], use_tqdm=False)
  assert proc.stdout == want.text + "\n"


def test_sigterm_drains_in_flight_then_exits(server):
  """Must stay last: it shuts the module's server down."""
  stream, it = _running_stream(server, max_tokens=24)
  server.proc.send_signal(signal.SIGTERM)
  deadline = time.monotonic() + 10
  while server.client.health(timeout=2) != "NOT_SERVING":
    assert time.monotonic() < deadline, "health never went NOT_SERVING"
    time.sleep(0.05)
  with pytest.raises(grpc.RpcError) as err:
    server.client.generate("Hi", max_tokens=1)
  assert err.value.code() == grpc.StatusCode.UNAVAILABLE
  rest = list(it)
  assert rest[-1].finished and rest[-1].finish_reason == "length"
  assert rest[-1].usage.completion_tokens == 24
  assert server.proc.wait(60) == 0, server.log()
