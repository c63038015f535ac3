"""The OpenAI-compatible HTTP API of a real `pagedjax serve --http-port` subprocess,
driven with the real `openai` client on loopback (and raw HTTP for what the
client hides), plus `pagedjax bench serve` against it.

NOTE: one server for the whole module (loading and compiling take a while on CPU).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine import SamplingParams
from engine.prompts import encode_prompt
from tests.serving.conftest import REPO, ServerProcess, free_port, pagedjax_cmd, subprocess_env

MODEL = "SmolLM2-135M-Instruct.Q4_1"
PROMPT = "The capital of France is"
CHAT = [{"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a primary color."}]


@pytest.fixture(scope="module")
def server_process(serving_tmp):
  srv = ServerProcess(serving_tmp, "--http-port", str(free_port()))
  try:
    yield srv
  finally:
    srv.stop()


@pytest.fixture(scope="module")
def expected(server_process, reference_llm):
  """LLM.generate's greedy outputs (computed while the server loads)."""
  params = SamplingParams(temperature=0.0, max_tokens=8, logprobs=True)
  chat_ids = encode_prompt(reference_llm.tokenizer, messages=CHAT)
  gen = lambda **kw: reference_llm.generate(sampling_params=params, use_tqdm=False, **kw)[0]
  return {"prompt": gen(prompts=[PROMPT]), "chat": gen(prompt_token_ids=[chat_ids])}


@pytest.fixture(scope="module")
def server(server_process, expected):
  server_process.wait_ready()
  return server_process


def _http_port(server) -> int:
  args = server.proc.args
  return int(args[args.index("--http-port") + 1])


@pytest.fixture(scope="module")
def client(server):
  with openai.OpenAI(base_url=f"http://127.0.0.1:{_http_port(server)}/v1", api_key="unused",
                     max_retries=0, timeout=120) as c:
    yield c


def _raw(server, path: str, body: bytes | None = None) -> tuple[int, dict | str]:
  url = f"http://127.0.0.1:{_http_port(server)}{path}"
  req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(req, timeout=60) as resp:
      status, text = resp.status, resp.read().decode()
  except urllib.error.HTTPError as e:
    status, text = e.code, e.read().decode()
  try:
    return status, json.loads(text)
  except json.JSONDecodeError:
    return status, text


def test_models_health_and_metrics(server, client):
  assert [m.id for m in client.models.list().data] == [MODEL]
  assert _raw(server, "/health") == (200, {"status": "ok"})
  status, text = _raw(server, "/metrics")
  assert status == 200
  names = {f.name for f in text_string_to_metric_families(text)}
  assert {"pagedjax_kv_blocks_total", "pagedjax_time_to_first_token_seconds"} <= names
  # NOTE: the same registry as the metrics port.
  blocks = [s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == "pagedjax_kv_blocks_total"]
  assert blocks == [server.metrics()["pagedjax_kv_blocks_total"]]


def test_completion_unary_stream_and_token_ids_match_llm_generate(client, expected):
  ref = expected["prompt"]
  kw = dict(model=MODEL, max_tokens=8, temperature=0)
  unary = client.completions.create(prompt=PROMPT, logprobs=0, **kw)
  choice = unary.choices[0]
  assert (choice.text, choice.finish_reason) == (ref.text, ref.finish_reason.value)
  assert choice.logprobs.token_logprobs == pytest.approx(ref.logprobs, abs=1e-4)
  assert len(choice.logprobs.tokens) == len(ref.token_ids)
  assert unary.usage.prompt_tokens == len(ref.prompt_token_ids)
  assert unary.usage.completion_tokens == len(ref.token_ids)
  assert unary.usage.prompt_tokens_details.cached_tokens == 0
  chunks = list(client.completions.create(prompt=PROMPT, stream=True,
                                          stream_options={"include_usage": True}, **kw))
  assert "".join(c.choices[0].text for c in chunks[:-1]) == ref.text
  assert [c.choices[0].finish_reason for c in chunks[:-1]][-1] == ref.finish_reason.value
  assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(ref.token_ids)
  assert all(c.usage is None for c in chunks[:-1])
  by_ids = client.completions.create(prompt=list(ref.prompt_token_ids), **kw)
  assert by_ids.choices[0].text == ref.text


def test_chat_unary_and_stream_go_through_the_chat_template(client, expected):
  ref = expected["chat"]
  kw = dict(model=MODEL, messages=CHAT, max_tokens=8, temperature=0)
  unary = client.chat.completions.create(logprobs=True, **kw)
  msg = unary.choices[0].message
  assert (msg.role, msg.content) == ("assistant", ref.text)
  assert [c.logprob for c in unary.choices[0].logprobs.content] == pytest.approx(
      ref.logprobs, abs=1e-4)
  assert unary.usage.prompt_tokens == len(ref.prompt_token_ids)
  chunks = list(client.chat.completions.create(stream=True, **kw))
  assert chunks[0].choices[0].delta.role == "assistant"
  assert "".join(c.choices[0].delta.content or "" for c in chunks) == ref.text
  assert chunks[-1].choices[0].finish_reason == ref.finish_reason.value
  assert all(c.usage is None for c in chunks)   # no include_usage: no usage chunk


def test_cached_prompt_tokens_show_in_usage(client):
  prompt = "Here is a list of fruits: apple, banana, cherry, grape, lemon, mango. " * 3
  kw = dict(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
  first, second = (client.completions.create(**kw) for _ in range(2))
  assert first.usage.prompt_tokens > 32
  assert first.usage.prompt_tokens_details.cached_tokens == 0
  # NOTE: only whole 16-token blocks are cached, and the last prompt token is recomputed.
  assert 16 <= second.usage.prompt_tokens_details.cached_tokens < second.usage.prompt_tokens


@pytest.mark.parametrize("kwargs, status, param, code", [
    (dict(n=2), 400, "n", None),
    (dict(temperature=-1), 400, "temperature", None),
    (dict(top_p=0), 400, "top_p", None),
    (dict(seed=-3), 400, "seed", None),
    (dict(logprobs=2), 400, "logprobs", None),
    (dict(prompt="word " * 300), 400, "prompt", "context_length_exceeded"),
    (dict(prompt=[60000, 1]), 400, None, None),                 # id outside the vocabulary
    (dict(prompt=["a", "b"]), 400, "prompt", None),
    (dict(extra_body={"top_k": "many"}), 400, "top_k", None),
    (dict(extra_body={"bogus": 1}), 400, "bogus", None),
    (dict(model="gpt-4"), 404, "model", "model_not_found"),
])
def test_bad_requests_get_openai_errors(client, kwargs, status, param, code):
  kw = dict(model=MODEL, prompt=PROMPT, max_tokens=2) | kwargs
  with pytest.raises(openai.APIStatusError) as err:
    client.completions.create(**kw)
  assert err.value.status_code == status
  body = err.value.body   # the client unwraps {"error": {...}}
  assert set(body) == {"message", "type", "param", "code"} and body["message"]
  assert (body["param"], body["code"]) == (param, code)


def test_malformed_bodies_paths_and_chat_roles(server, client):
  status, body = _raw(server, "/v1/completions", b"{not json")
  assert status == 400 and "not valid JSON" in body["error"]["message"]
  status, body = _raw(server, "/v1/nowhere")
  assert status == 404 and body["error"]["code"] == "not_found"
  status, body = _raw(server, "/v1/completions", b"x" * (17 << 20))
  assert status == 413 and body["error"]["type"] == "invalid_request_error"
  with pytest.raises(openai.BadRequestError) as err:
    client.chat.completions.create(model=MODEL, messages=[{"role": "wizard", "content": "hi"}])
  assert "unknown chat role" in err.value.body["message"]
  assert err.value.body["param"] == "messages[0].role"


def test_disconnect_aborts_and_frees_blocks(server, client):
  before = server.metrics()
  assert before["pagedjax_kv_blocks_used"] == 0.0
  stream = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=200,
                                     temperature=0, stream=True)
  got = [next(iter(stream)) for _ in range(2)]
  assert got[0].choices[0].finish_reason is None
  assert server.metrics()["pagedjax_kv_blocks_used"] > 0
  stream.close()   # drops the connection mid-stream
  key = 'pagedjax_requests_finished_total{finish_reason=abort}'
  m = server.wait_metric(key, before.get(key, 0.0) + 1)
  assert m[key] == before.get(key, 0.0) + 1
  assert server.wait_metric("pagedjax_kv_blocks_used", 0.0)["pagedjax_kv_blocks_used"] == 0.0
  assert m.get('pagedjax_requests_finished_total{finish_reason=length}') == before.get(
      'pagedjax_requests_finished_total{finish_reason=length}')


def _bench(out: str, tmp_root: str, *target: str, extra: tuple[str, ...] = ()) -> dict:
  proc = subprocess.run(
      pagedjax_cmd("bench", "serve", *target, "--num-requests", "3", "--out", out, *extra),
      cwd=REPO, env=subprocess_env(tmp_root), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Output token throughput (tok/s):" in proc.stdout
  for name in ("results.json", "latency_cdf.png", "table.txt"):
    assert os.path.getsize(os.path.join(out, name)) > 0
  with open(os.path.join(out, "results.json")) as f:
    return json.load(f)


def test_bench_serve_over_http_and_grpc(server, serving_tmp, tmp_path):
  fixed = ("--workload", "fixed", "--input-len", "20", "--output-len", "4",
           "--concurrency", "2", "--slo-ttft", "60000", "--slo-tpot", "0.001")
  for name, target in (("http", ("--base-url", f"http://127.0.0.1:{_http_port(server)}")),
                       ("grpc", ("--grpc", server.target))):
    res = _bench(str(tmp_path / name), serving_tmp, *target, extra=fixed)
    s = res["summary"]
    assert (s["completed"], s["failed"], s["total_output_tokens"]) == (3, 0, 12), s
    assert 0 < s["ttft"]["median_ms"] <= s["e2e_latency"]["median_ms"]
    assert s["itl"]["mean_ms"] > 0 and s["tpot"]["p99_ms"] > 0
    assert s["good_requests"] == 0    # a 1-microsecond TPOT SLO is never met
    # NOTE: gRPC gets text prompts fitted to 20 tokens through the Tokenize RPC.
    assert all((r["prompt_tokens"], r["output_tokens"]) == (20, 4) for r in res["requests"])


def test_bench_serve_replays_a_trace(server, serving_tmp, tmp_path):
  trace = tmp_path / "trace.jsonl"
  lines = [{"request_id": f"t{i}", "arrival_time": 0.3 * i, "product": "chat",
            "max_tokens": 3, "token_ids": [5 + i, 6, 7, 8, 9]} for i in range(3)]
  trace.write_text("".join(json.dumps(x) + "\n" for x in lines))
  t0 = time.monotonic()
  res = _bench(str(tmp_path / "trace"), serving_tmp, "--base-url",
               f"http://127.0.0.1:{_http_port(server)}", extra=("--trace", str(trace)))
  assert time.monotonic() - t0 > 0.6            # the last request waited for its arrival
  assert res["summary"]["completed"] == 3
  assert sorted(r["request_id"] for r in res["requests"]) == ["t0", "t1", "t2"]
  assert all((r["prompt_tokens"], r["output_tokens"]) == (5, 3) for r in res["requests"])


def _readme_blocks() -> tuple[str, str]:
  with open(os.path.join(REPO, "README.md")) as f:
    text = f.read()
  part = text.split("<!-- http-example:start")[1].split("<!-- http-example:end -->")[0]
  shell = part.split("```bash\n")[1].split("```")[0]
  python = part.split("```python\n")[1].split("```")[0]
  return shell, python


def test_readme_http_example_runs_verbatim(server, expected, capsys):
  shell, python = _readme_blocks()
  port = str(_http_port(server))
  assert shell.startswith("pagedjax serve --http-port 8000 &")
  curl = shell.split("\n", 1)[1].replace("8000", port)   # the server is already up
  reply = json.loads(subprocess.run(["bash", "-c", curl], capture_output=True, text=True,
                                    check=True, timeout=60).stdout)
  assert reply["choices"][0]["text"] == expected["prompt"].text
  exec(compile(python.replace("8000", port), "README.md", "exec"), {})
  assert capsys.readouterr().out.strip()   # the streamed answer was printed
