"""Host-only parts of the HTTP API and of `bench serve`: request parsing, the
benchmark's workloads and figures (no server, no JAX)."""
from __future__ import annotations

import pytest

from research import workload as wl
from serving.bench import workloads
from serving.bench.result import RequestResult
from serving.bench.summary import Slo, summarize
from serving.http.errors import ApiError
from serving.http.protocol import ChatTurn, parse_chat, parse_completion


def test_completion_prompt_forms():
  assert parse_completion({"prompt": [[3, 4]]}).prompt_ids == (3, 4)
  assert parse_completion({"prompt": ["hi"]}).prompt == "hi"
  r = parse_completion({"prompt": "hi", "stream": True, "stream_options": {"include_usage": True},
                        "max_tokens": 5, "temperature": 0, "logprobs": 0, "user": "u",
                        "top_k": None})
  assert (r.stream, r.include_usage, r.logprobs) == (True, True, True)
  assert r.sampling == {"temperature": 0.0, "max_tokens": 5}


@pytest.mark.parametrize("body, param", [
    ({"prompt": []}, "prompt"),
    ({"prompt": [True, 2]}, "prompt"),
    ({"prompt": "hi", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"prompt": "hi", "max_tokens": 2 ** 40}, "max_tokens"),
    ({"prompt": "hi", "temperature": float("nan")}, "temperature"),
    ({"prompt": "hi", "echo": True}, "echo"),
    ({"prompt": "hi", "presence_penalty": 0.5}, "presence_penalty"),
    ({"prompt": "hi", "stop": [1]}, "stop"),
])
def test_completion_refusals_name_the_field(body, param):
  with pytest.raises(ApiError) as err:
    parse_completion(body)
  assert (err.value.status, err.value.param) == (400, param)


def test_chat_turns_and_refusals():
  r = parse_chat({"messages": [{"role": "user", "content": [
      {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
      "max_completion_tokens": 7})
  assert r.messages == (ChatTurn("user", "ab"),) and r.sampling["max_tokens"] == 7
  for body, param in [({"messages": []}, "messages"),
                      ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
                       "messages[0].content"),
                      ({"messages": [{"role": "user", "content": "x"}], "tools": []}, "tools"),
                      ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
                       "top_logprobs"),
                      ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 3,
                        "max_completion_tokens": 4}, "max_completion_tokens")]:
    with pytest.raises(ApiError) as err:
      parse_chat(body)
    assert err.value.param == param


def test_workloads_are_deterministic_and_sized():
  a = workloads.fixed(5, 12, 7, rate=4.0, seed=1, vocab_size=100)
  assert a == workloads.fixed(5, 12, 7, rate=4.0, seed=1, vocab_size=100)
  assert all(len(r.prompt_ids) == 12 and r.max_tokens == 7 for r in a)
  assert all(0 < t < 100 for r in a for t in r.prompt_ids)
  assert a[0].arrival_s == 0 and sorted(r.arrival_s for r in a) == [r.arrival_s for r in a]
  assert workloads.poisson_arrivals(3, float("inf"), 0) == [0.0] * 3
  times = workloads.poisson_arrivals(4000, 10.0, 0)
  assert times[-1] / 3999 == pytest.approx(0.1, rel=0.05)   # mean gap 1 / rate
  inc = workloads.incident(20, 2.0, 0, 0.1, 1000)
  trace = wl.generate(wl.WorkloadConfig(num_requests=20, rate=2.0, scale=0.1))
  assert [r.prompt_ids for r in inc] == [tuple(t.prompt_token_ids(1000)) for t in trace]


def _result(rid, start, chunks, end, tokens, error=None):
  return RequestResult(rid, start=start, end=end, chunk_times=chunks, prompt_tokens=10,
                       output_tokens=tokens, error=error)


def test_summary_figures():
  results = [_result("a", 0.0, [0.1, 0.2, 0.3], 0.3, 3),      # ttft 100, tpot 100, itl 100 100
             _result("b", 1.0, [1.4, 1.5], 1.5, 2),            # ttft 400, tpot 100, itl 100
             _result("c", 0.0, [], 0.1, None, error="HTTP 429")]
  s = summarize(results, duration_s=2.0, slo=Slo(ttft_s=0.2, tpot_s=0.15))
  assert (s["completed"], s["failed"], s["total_output_tokens"]) == (2, 1, 5)
  assert s["request_throughput"] == 1.0 and s["output_throughput"] == 2.5
  assert s["ttft"]["mean_ms"] == pytest.approx(250) and s["ttft"]["median_ms"] == pytest.approx(250)
  assert s["tpot"]["mean_ms"] == pytest.approx(100)
  assert s["itl"]["median_ms"] == pytest.approx(100)
  assert s["good_requests"] == 1 and s["goodput"] == 0.5
  assert s["errors"] == ["HTTP 429"]
