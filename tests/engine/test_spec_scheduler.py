"""Speculative decoding in the scheduler: drafts within the leftover budget, the limits and
the free blocks, never by preempting; rejected drafts rolled back, surplus blocks freed."""
from __future__ import annotations

from engine.kv_cache_manager import KVCacheManager
from engine.request import Request
from engine.sampling_params import SamplingParams
from engine.scheduler import Scheduler, SchedulerConfig


class FixedProposer:
  """Proposes `drafts` (truncated to the limit) for every request; records calls."""

  def __init__(self, drafts):
    self.drafts, self.calls, self.forgotten = list(drafts), [], []

  def propose(self, request, max_drafts):
    self.calls.append((request.request_id, max_drafts))
    return self.drafts[:max_drafts]

  def forget(self, request_id):
    self.forgotten.append(request_id)


def make(drafts=(50, 51, 52, 53), num_blocks=64, block_size=4, budget=32, max_model_len=256):
  kv = KVCacheManager(num_blocks, block_size, enable_prefix_caching=True)
  cfg = SchedulerConfig(max_model_len=max_model_len, max_num_seqs=8, max_batch_tokens=budget,
                        watermark=0.0)
  return Scheduler(cfg, kv, FixedProposer(drafts))


def req(rid, n, max_tokens=32, start=0):
  return Request(rid, list(range(start, start + n)), SamplingParams(max_tokens=max_tokens))


def land(s: Scheduler, out, accepted: dict[str, int] | None = None):
  """What the engine core does with a result: each row gets 1 + its accepted drafts."""
  for x in out.decodes + out.prefills:
    if x.samples:
      a = (accepted or {}).get(x.request.request_id, 0)
      tokens = [(t, 0.0) for t in x.draft_token_ids[:a]] + [(7, 0.0)]
      if x.draft_token_ids:
        s.reject_drafts(x.request, x.num_sampled - len(tokens))
      kept, _ = x.request.land(tokens, s.config.max_model_len)
      assert len(kept) == len(tokens)


def step(s, accepted=None):
  out = s.schedule()
  s.update(out)
  land(s, out, accepted)
  return out


def test_decode_rows_verify_drafts_and_keep_the_accepted_ones():
  s = make()
  a = req("a", 6)
  s.add(a)
  out = step(s)                                      # prefill: no drafts
  assert not out.prefills[0].draft_token_ids and a.num_computed_tokens == 6
  out = step(s, accepted={"a": 2})
  (row,) = out.decodes
  assert row.draft_token_ids == (50, 51, 52, 53) and row.num_new_tokens == 5
  assert len(row.block_table) == 3                   # slots for positions 6..10
  assert a.output_token_ids == [7, 50, 51, 7]
  assert a.num_computed_tokens == 9 and a.num_tokens == 10 and a.num_pending_tokens == 0
  assert len(s.kv.block_table("a")) == 3             # 10 tokens: 3 blocks of 4
  out = step(s, accepted={"a": 0})                   # all rejected: back to 3 blocks
  assert out.decodes[0].num_new_tokens == 5 and len(out.decodes[0].block_table) == 4
  assert a.num_computed_tokens == 10 and a.num_tokens == 11
  assert len(s.kv.block_table("a")) == 3 and s.kv.num_used_blocks == 3


def test_drafts_are_capped_by_max_tokens_context_and_leftover_budget():
  s = make(budget=9, max_model_len=64)
  a, b, c = req("a", 4, max_tokens=3), req("b", 5, start=100), req("c", 4, start=200)
  s.add(a)
  s.add(c)
  step(s)                                            # both prefilled; one token each
  s.add(b)
  out = step(s)
  # 2 decodes + b's 5-token prompt leave 2 of 9 tokens: a may sample 2 more (1 + 1
  # draft), c gets the last one.
  rows = {x.request.request_id: x for x in out.decodes}
  assert out.prefills[0].num_new_tokens == 5
  assert rows["a"].draft_token_ids == (50,) and rows["c"].draft_token_ids == (50,)
  assert s.proposer.calls[-2:] == [("a", 1), ("c", 1)]
  assert sum(x.num_new_tokens for x in out.decodes + out.prefills) == 9
  s = make(max_model_len=64)
  d = req("d", 61, start=300)
  s.add(d)
  while not d.output_token_ids:                      # two prefill chunks
    step(s)
  out = step(s)                                      # 62 of 64 tokens: 1 + 1 draft
  assert out.decodes[0].draft_token_ids == (50,)


def test_drafts_take_only_free_blocks_and_never_preempt():
  s = make(num_blocks=6, block_size=4)               # 5 usable blocks
  a, b = req("a", 4), req("b", 4, start=50)
  s.add(a)
  s.add(b)
  step(s)                                            # one block each
  out = s.schedule()                                 # each row takes a second block
  rows = {x.request.request_id: x for x in out.decodes}
  assert rows["a"].draft_token_ids == (50, 51, 52, 53)   # positions 5..8: the last free block
  assert rows["b"].draft_token_ids == (50, 51, 52)   # what its second block holds (5..7)
  assert len(rows["b"].block_table) == 2
  assert s.kv.num_free_blocks == 0 and not out.preempted and s.num_preemptions == 0
  s.update(out)
  land(s, out)                                       # every draft rejected
  assert s.kv.num_free_blocks == 1 and len(s.kv.block_table("a")) == 2


def test_no_drafts_while_a_token_is_pending():
  """A decode row whose input token is still on the device (pipelined steps) verifies
  nothing: its drafts would have to follow a token the host does not know."""
  s = make()
  a = req("a", 6)
  s.add(a)
  s.update(s.schedule())                             # the prefill's token is in flight
  out = s.schedule()
  assert [(x.request, x.num_new_tokens, x.draft_token_ids) for x in out.decodes] == [(a, 1, ())]
  assert not s.proposer.calls


def test_finish_forgets_the_proposers_index():
  from engine.outputs import FinishReason
  s = make()
  a = req("a", 6)
  s.add(a)
  step(s)
  s.finish(a, FinishReason.STOP)
  assert s.proposer.forgotten == ["a"] and s.kv.num_used_blocks == 0

