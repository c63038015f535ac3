"""The incident workload generator and the JSONL trace format."""
from __future__ import annotations

import json

import numpy as np
import pytest

from research import workload as w


def test_generated_mix_lengths_and_arrivals_follow_the_config():
  cfg = w.WorkloadConfig(num_requests=3000, rate=4.0, chat_fraction=0.7, seed=7)
  trace = w.generate(cfg)
  chat = [r for r in trace if r.product == "chat"]
  report = [r for r in trace if r.product == "report"]
  assert abs(len(chat) / len(trace) - 0.7) < 0.03
  users = np.array([r.user_prompt_len for r in trace])
  assert users.min() >= 20 and users.max() <= 2000
  assert np.median(users) == pytest.approx(np.sqrt(20 * 2000), rel=0.15)   # log-uniform
  assert all(35 <= r.max_tokens <= 65 for r in chat)
  assert all(1050 <= r.max_tokens <= 1950 for r in report)
  gaps = np.diff([r.arrival_time for r in trace])
  assert gaps.min() >= 0 and np.mean(gaps) == pytest.approx(1 / 4.0, rel=0.08)
  assert all(r.system_prompt_len == 220 for r in trace)


def test_system_prompt_is_shared_and_user_prompts_differ():
  trace = w.generate(w.WorkloadConfig(num_requests=20, num_system_prompts=2, num_tenants=3,
                                      seed=1))
  ids = [r.prompt_token_ids(1000) for r in trace]
  for r, toks in zip(trace, ids):
    assert len(toks) == r.prompt_len
    assert toks[:220] == w.system_prompt_ids(r.system_prompt, 220, 1000)
    assert r.cache_salt == r.tenant
  assert len({tuple(t[220:]) for t in ids}) == len(ids)
  assert {r.system_prompt for r in trace} == {0, 1}
  assert {r.tenant for r in trace} == {"t0", "t1", "t2"}


def test_scale_shrinks_every_length():
  full = w.generate(w.WorkloadConfig(num_requests=50, seed=3))
  small = w.generate(w.WorkloadConfig(num_requests=50, seed=3, scale=0.1))
  assert [r.product for r in full] == [r.product for r in small]
  assert all(s.system_prompt_len == 22 for s in small)
  for f, s in zip(full, small):
    assert s.max_tokens == max(1, round(f.max_tokens * 0.1)) or abs(
        s.max_tokens - f.max_tokens * 0.1) <= 1


def test_trace_round_trip_and_explicit_token_ids(tmp_path):
  trace = w.generate(w.WorkloadConfig(num_requests=30, num_tenants=2, seed=5))
  trace.append(w.TraceRequest("real-1", 99.0, "chat", 8, tenant="acme", cache_salt="acme",
                              token_ids=(5, 6, 7)))
  path = tmp_path / "t.jsonl"
  w.write_trace(path, trace)
  back = w.read_trace(path)
  assert back == sorted(trace, key=lambda r: r.arrival_time)
  assert back[-1].prompt_token_ids(10) == [5, 6, 7]
  assert back[0].prompt_token_ids(500) == trace[0].prompt_token_ids(500)
  with pytest.raises(ValueError, match="outside"):
    back[-1].prompt_token_ids(6)


@pytest.mark.parametrize("line, match", [
    ('{"request_id": "a", "arrival_time": 0, "product": "chat", "max_tokens": 4, '
     '"user_prompt_len": 3, "colour": 1}', "unknown field"),
    ('{"request_id": "a", "arrival_time": -1, "product": "chat", "max_tokens": 4, '
     '"user_prompt_len": 3}', "arrival_time"),
    ("not json", "not JSON"),
])
def test_bad_trace_lines_raise(tmp_path, line, match):
  path = tmp_path / "bad.jsonl"
  path.write_text(line + "\n")
  with pytest.raises(ValueError, match=match):
    w.read_trace(path)


def test_bad_config_raises():
  with pytest.raises(ValueError, match="chat_fraction"):
    w.WorkloadConfig(chat_fraction=1.5)
  with pytest.raises(ValueError, match="scale"):
    w.WorkloadConfig(scale=0)
  assert json.loads(json.dumps(w.to_json(w.generate(w.WorkloadConfig(num_requests=1))[0])))
