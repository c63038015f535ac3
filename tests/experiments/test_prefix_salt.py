"""Prefix caching saves the shared system prompt's prefill, and never across cache salts."""
from __future__ import annotations

import dataclasses

from engine.prefix_cache import hash_block
from research import workload as w
from research.replay import ReplayOptions
from tests.experiments.helpers import engine_config, simulate

# Sequential arrivals (one every ~3 s, prefills take a few 50 ms steps): every
# request after the first of its tenant finds the system prompt cached.
CFG = w.WorkloadConfig(num_requests=24, rate=0.3, scale=0.25, num_tenants=2, seed=4)
OPTIONS = ReplayOptions(clock="steps", step_dt=0.05)


def test_prefix_cache_skips_exactly_the_shared_system_prompt_blocks():
  trace = w.generate(CFG)
  sys_len, bs = trace[0].system_prompt_len, 16
  shared = sys_len // bs * bs
  paged, _ = simulate(trace, engine_config("paged", False, 2000))
  cached, log = simulate(trace, engine_config("paged", True, 2000))
  assert paged["preemptions"] == cached["preemptions"] == 0
  tenants = {r.tenant for r in trace}
  expected = (len(trace) - len(tenants)) * shared
  assert cached["prompt_tokens_from_cache"] == expected
  assert paged["prefill_tokens_computed"] - cached["prefill_tokens_computed"] == expected
  hits = {rid: r.num_cached_prompt_tokens for rid, r in log.scheduler.all_requests.items()}
  assert sorted(set(hits.values())) == [0, shared]
  assert cached["cross_salt_hits"] == 0 and log.scheduler.num_reused_blocks == expected // bs


def test_hit_blocks_hash_to_the_requests_own_salt_and_unsalted_traffic_shares():
  trace = w.generate(CFG)
  _, log = simulate(trace, engine_config("paged", True, 2000), OPTIONS)
  sched = log.scheduler
  cache = sched.kv.prefix_cache
  # Every live cache entry of a system-prompt block was hashed with one tenant's salt:
  # recompute the chain per tenant and check no block id answers for two tenants.
  owners = {}
  for tenant in ("t0", "t1"):
    ids, parent = trace[0].prompt_token_ids(512)[:trace[0].system_prompt_len], None
    for i in range(len(ids) // 16):
      parent = hash_block(parent, ids[i * 16:(i + 1) * 16], tenant)
      block = cache.lookup(ids[:(i + 1) * 16] + [0], tenant, max_blocks=i + 1)
      assert len(block) == i + 1
      assert owners.setdefault(block[-1], tenant) == tenant
      assert cache.entry(block[-1]).block_hash == parent
  # Without salts the two tenants share the same blocks: more reuse, fewer misses.
  unsalted = [dataclasses.replace(r, cache_salt=None) for r in trace]
  shared, _ = simulate(unsalted, engine_config("paged", True, 2000), OPTIONS)
  salted, _ = simulate(trace, engine_config("paged", True, 2000), OPTIONS)
  sys_shared = trace[0].system_prompt_len // 16 * 16
  assert shared["prompt_tokens_from_cache"] - salted["prompt_tokens_from_cache"] == sys_shared
