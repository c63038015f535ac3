"""The paged engine's greedy output equals the dense reference, token for token, on SmolLM2."""
from __future__ import annotations

import pytest

from engine import EngineConfig, LLMEngine, SamplingParams
from models import load_model
from models.reference import reference_generate

MAX_NEW = 10
SYSTEM = ("You are a helpful support assistant for ACME Corp. Answer briefly, politely and "
          "accurately. If you do not know, say so and offer to escalate the ticket to a human.")
QUESTIONS = ["Hi", "How do I reset my password?",
             "My invoice from last month shows a charge twice; can you explain why and refund it?",
             "Write one sentence about the sea.", "What is 2+2?"]


@pytest.fixture(scope="module")
def smollm():
  return load_model(None, dtype="float32")


@pytest.fixture(scope="module")
def prompts(smollm):
  tok = smollm.tokenizer
  return [tok.encode(tok.apply_chat_template([{"role": "system", "content": SYSTEM},
                                              {"role": "user", "content": q}]))
          for q in QUESTIONS]


@pytest.fixture(scope="module")
def expected(smollm, prompts):
  cfg = smollm.config
  return [reference_generate(cfg, smollm.params, ids, MAX_NEW, cfg.eos_token_ids)
          for ids in prompts]


def run_engine(engine: LLMEngine, prompts, arrivals=None, salts=None,
               params: SamplingParams | None = None) -> dict[str, list[int]]:
  """Adds prompt i at step arrivals[i] (greedy, MAX_NEW tokens unless `params`); runs to
  completion; returns tokens per request."""
  arrivals = arrivals or [0] * len(prompts)
  params = params or SamplingParams(temperature=0.0, max_tokens=MAX_NEW)
  outputs: dict[str, list[int]] = {}
  step = 0
  while len(outputs) < len(prompts) or engine.has_unfinished_requests():
    for i, ids in enumerate(prompts):
      if arrivals[i] == step:
        engine.add_request(str(i), prompt_token_ids=ids, sampling_params=params,
                           cache_salt=salts[i] if salts else None)
        outputs[str(i)] = []
    for d in engine.step():
      assert d.error is None, d.error
      outputs[d.request_id] += d.token_ids
    step += 1
    assert step < 500, "engine made no progress"
  return outputs


def make_engine(smollm, **kw) -> LLMEngine:
  cfg = dict(max_num_seqs=4, max_batch_tokens=256, max_model_len=512)
  cfg.update(kw)
  return LLMEngine(EngineConfig(**cfg), model=smollm)


def assert_equal(outputs, expected):
  for i, want in enumerate(expected):
    assert outputs[str(i)] == want, f"request {i}"


@pytest.mark.parametrize("block_size", [8, 16, 32, 128])
def test_mixed_batch_staggered_arrivals(smollm, prompts, expected, block_size):
  engine = make_engine(smollm, block_size=block_size, enable_prefix_caching=False)
  outputs = run_engine(engine, prompts, arrivals=[0, 0, 2, 3, 7])
  assert_equal(outputs, expected)
  assert engine.kv.num_used_blocks == 0


def test_prefix_hits_on_shared_system_prompt(smollm, prompts, expected):
  engine = make_engine(smollm, block_size=16)
  first = run_engine(engine, prompts[:1])
  assert first["0"] == expected[0]
  outputs = run_engine(engine, prompts[1:])
  assert [outputs[str(i)] for i in range(len(prompts) - 1)] == expected[1:]
  stats = engine.stats()
  shared = 16 * (min(len(p) for p in prompts) // 16)
  assert stats.prefix_hit_tokens_total >= shared * (len(prompts) - 1) // 2
  assert stats.prefill_tokens_computed_total < sum(len(p) for p in prompts)


def test_different_salts_never_share(smollm, prompts, expected):
  engine = make_engine(smollm, block_size=16)
  run_engine(engine, prompts[:1], salts=["tenant-a"])
  before = engine.stats().prefix_hit_tokens_total
  outputs = run_engine(engine, prompts[1:2], salts=["tenant-b"])
  assert engine.stats().prefix_hit_tokens_total == before
  assert outputs["0"] == expected[1]


def test_chunked_prefill_small_budget(smollm, prompts, expected):
  engine = make_engine(smollm, block_size=16, max_batch_tokens=24, enable_prefix_caching=False)
  outputs = run_engine(engine, prompts, arrivals=[0, 1, 1, 2, 5])
  assert_equal(outputs, expected)


def test_preemption_with_tiny_pool(smollm, prompts, expected):
  # Both prompts fit at admission (plus one spare block), but not their growth:
  # decoding must preempt one, which later recomputes and finishes identically.
  blocks = [-(-len(p) // 8) for p in prompts[:2]]
  # NOTE: the pool is smaller than max_model_len on purpose (allow_small_kv_cache).
  engine = make_engine(smollm, block_size=8, num_blocks=sum(blocks) + 2,
                       enable_prefix_caching=False, watermark=0.0, allow_small_kv_cache=True)
  outputs = run_engine(engine, prompts[:2])
  assert_equal(outputs, expected[:2])
  assert engine.stats().num_preemptions_total > 0
  assert engine.kv.num_used_blocks == 0


def test_multi_step_decode(smollm, prompts, expected):
  # 4 decode iterations per decode-only step; arrivals force single steps in between,
  # MAX_NEW (10) is no multiple of 4, and prefix hits land mid-way.
  engine = make_engine(smollm, block_size=8, num_decode_steps=4)
  outputs = run_engine(engine, prompts, arrivals=[0, 0, 2, 3, 9])
  assert_equal(outputs, expected)
  assert engine.kv.num_used_blocks == 0


def test_multi_step_decode_with_preemption(smollm, prompts, expected):
  blocks = [-(-len(p) // 8) for p in prompts[:2]]
  engine = make_engine(smollm, block_size=8, num_blocks=sum(blocks) + 2,
                       enable_prefix_caching=False, watermark=0.0, num_decode_steps=3,
                       allow_small_kv_cache=True)
  outputs = run_engine(engine, prompts[:2])
  assert_equal(outputs, expected[:2])
  assert engine.stats().num_preemptions_total > 0
  assert engine.kv.num_used_blocks == 0
