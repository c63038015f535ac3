"""Scheduler unit tests over the real KV cache managers (no model: tokens are fed by hand)."""
from __future__ import annotations

import pytest

from engine.contiguous import ContiguousKVCacheManager
from engine.kv_cache_manager import KVCacheManager
from engine.outputs import FinishReason
from engine.request import Request, RequestStatus
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler, SchedulerConfig


def make(num_blocks=64, block_size=4, budget=32, max_seqs=8, chunked=True, caching=True,
         watermark=0.0, max_model_len=256, kv=None, decode_steps=1):
  kv = kv or KVCacheManager(num_blocks, block_size, enable_prefix_caching=caching)
  cfg = SchedulerConfig(max_model_len=max_model_len, max_num_seqs=max_seqs,
                        max_batch_tokens=budget, enable_chunked_prefill=chunked,
                        watermark=watermark, num_decode_steps=decode_steps)
  return Scheduler(cfg, kv)


def req(rid, n, max_tokens=8, priority=0, start=0):
  return Request(rid, list(range(start, start + n)), SamplingParams(max_tokens=max_tokens),
                 priority=priority)


def run_step(s: Scheduler, token=7):
  """One schedule + update; every sampling row's tokens land at once, all `token`."""
  out = s.schedule()
  s.update(out)
  for x in out.decodes + out.prefills:
    if x.samples:
      x.request.land([(token, 0.0)] * x.num_sampled, s.config.max_model_len)
  return out


def test_decodes_first_then_prefill_chunks_under_budget():
  s = make(budget=10)
  a, b = req("a", 6), req("b", 30, start=100)
  s.add(a)
  run_step(s)                                  # a prefilled in one chunk, sampled
  s.add(b)
  out = run_step(s)
  assert [x.request.request_id for x in out.decodes] == ["a"]
  assert [(x.request.request_id, x.start, x.num_new_tokens) for x in out.prefills] == [("b", 0, 9)]
  assert not out.prefills[0].samples
  out = run_step(s)                            # b continues where it stopped
  assert [(x.start, x.num_new_tokens) for x in out.prefills] == [(9, 9)]
  assert out.num_scheduled_tokens == 10


def test_no_chunking_requires_budget_for_whole_prompt():
  with pytest.raises(ValueError, match="max_batch_tokens"):
    make(budget=16, chunked=False, max_model_len=64)
  s = make(budget=64, chunked=False, max_model_len=64)
  s.add(req("a", 40))
  s.add(req("b", 40))
  out = run_step(s)
  assert [(x.request.request_id, x.num_new_tokens) for x in out.prefills] == [("a", 40)]


def test_preempts_latest_admitted_and_keeps_outputs():
  s = make(num_blocks=1 + 5, block_size=4, budget=64)   # 2+2 blocks + 1 reserved
  a, b = req("a", 7), req("b", 7)
  s.add(a)
  s.add(b)
  run_step(s)                                  # each holds 2 blocks; each sampled one token
  assert a.num_output_tokens == b.num_output_tokens == 1
  run_step(s)                                  # 8 tokens each: still 2 blocks each
  out = run_step(s)                            # token 9 needs a 3rd block: b is preempted
  assert [r.request_id for r in out.preempted] == ["b"]
  assert b.status == RequestStatus.WAITING and b.num_computed_tokens == 0
  assert b.output_token_ids == [7, 7]          # generated tokens survive
  assert s.waiting[0] is b and s.num_preemptions == 1


def test_preempts_lowest_priority_first():
  s = make(num_blocks=1 + 5, block_size=4, budget=64)
  a, b = req("a", 7, priority=5), req("b", 7, priority=0)
  s.add(a)
  s.add(b)
  for _ in range(3):
    out = run_step(s)
  assert [r.request_id for r in s.waiting] == ["a"]


def test_watermark_blocks_admission():
  s = make(num_blocks=1 + 10, block_size=4, budget=64, watermark=0.5)
  s.add(req("a", 16))      # 4 blocks: fits under 5
  s.add(req("b", 8))       # 4 + 2 + 1 reserved > 5
  out = run_step(s)
  assert [x.request.request_id for x in out.prefills] == ["a"]
  assert len(s.waiting) == 1


def test_rejects_prompt_larger_than_whole_cache():
  s = make(num_blocks=1 + 3, block_size=4)
  s.add(req("big", 20))
  out = s.schedule()
  assert [r.request_id for r in out.rejected] == ["big"] and out.is_empty


def test_max_num_seqs_limits_running():
  s = make(max_seqs=2)
  for i in range(4):
    s.add(req(str(i), 3))
  run_step(s)
  assert len(s.running) == 2 and len(s.waiting) == 2


def test_prefix_hit_skips_cached_tokens_but_not_last():
  s = make(block_size=4)
  a = req("a", 12)
  s.add(a)
  run_step(s)
  s.finish(a, FinishReason.STOP)
  b = req("b", 12)                              # same tokens
  s.add(b)
  out = run_step(s)
  (x,) = out.prefills
  assert x.start == 8 and x.num_new_tokens == 4  # blocks 0-1 hit; the last block recomputed
  assert b.num_cached_prompt_tokens == 8


def test_finish_frees_blocks():
  s = make()
  a = req("a", 10)
  s.add(a)
  run_step(s)
  assert s.kv.num_used_blocks > 0
  s.finish(a, FinishReason.ABORT)
  assert s.kv.num_used_blocks == 0 and not s.has_unfinished()


def test_contiguous_manager_reserves_whole_request():
  kv = ContiguousKVCacheManager(1 + 8, 4)
  s = make(kv=kv, budget=64)
  s.add(req("a", 4, max_tokens=12))             # reserves 16 slots = 4 blocks
  s.add(req("b", 4, max_tokens=20))             # needs 6 blocks: only 4 left
  out = run_step(s)
  assert [x.request.request_id for x in out.prefills] == ["a"]
  assert kv.num_used_blocks == 4


def test_multi_step_decode_extends_decode_only_steps():
  s = make(block_size=4, decode_steps=4, max_model_len=64)
  a, b = req("a", 6, max_tokens=10), req("b", 5, max_tokens=3, start=50)
  s.add(a)
  s.add(b)
  out = run_step(s)                            # prefill step: nothing to extend
  assert not out.decodes and [x.num_sampled for x in out.prefills] == [1, 1]
  out = run_step(s)                            # decode-only: a takes 4, b the 2 it has left
  assert [(x.request.request_id, x.start, x.num_new_tokens) for x in out.decodes] == [
      ("a", 6, 4), ("b", 5, 2)]
  assert all(x.samples and x.num_sampled == x.num_new_tokens for x in out.decodes)
  assert len(out.decodes[0].block_table) == 3  # slots for positions 6..9 are allocated
  assert b.num_output_tokens == 3 and a.num_output_tokens == 5
  out = run_step(s)                            # b is done; a gets 4 more (10 in all)
  assert [(x.request.request_id, x.num_new_tokens) for x in out.decodes] == [("a", 4)]
  assert a.num_output_tokens == 9
  out = run_step(s)
  assert [(x.request.request_id, x.num_new_tokens) for x in out.decodes] == [("a", 1)]


def test_multi_step_decode_waits_while_a_prefill_runs_and_is_capped_by_context():
  s = make(block_size=4, budget=8, decode_steps=4, max_model_len=12)
  a = req("a", 6, max_tokens=100)
  s.add(a)
  run_step(s)
  s.add(req("b", 20, start=50))                # 20 tokens > budget: prefilled in chunks
  out = run_step(s)
  assert [x.num_new_tokens for x in out.decodes] == [1] and out.prefills
  s.finish(out.prefills[0].request, FinishReason.ABORT)
  out = run_step(s)                            # decode-only again; context leaves 4 tokens
  assert [(x.start, x.num_new_tokens) for x in out.decodes] == [(7, 4)]
  assert a.num_tokens == 12


def test_multi_step_lookahead_never_preempts():
  # 2 usable blocks of 4, both held by a (6 prompt tokens): its lookahead to
  # positions 6..9 would need a 3rd block, so it decodes one token at a time.
  s = make(num_blocks=3, block_size=4, decode_steps=4)
  a = req("a", 6, max_tokens=20)
  s.add(a)
  run_step(s)
  for start in (6, 7):
    out = run_step(s)
    assert [(x.start, x.num_new_tokens) for x in out.decodes] == [(start, 1)]
    assert not out.preempted and s.kv.num_free_blocks == 0
