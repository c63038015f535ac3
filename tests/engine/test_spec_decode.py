"""Speculative decoding (n-gram) on SmolLM2: the output is exactly that of decoding without
it, greedy against the dense reference on every parity prompt (with continuous batching,
chunked prefill, prefix caching, preemption), and sampled, stopped, length-capped and
logprob'd outputs against the engine without speculation."""
from __future__ import annotations

import numpy as np
import pytest

from engine import LLM, EngineConfig, FinishReason, LLMEngine, SamplingParams
from models import load_model
from models.reference import reference_generate
from tests.engine.test_engine_parity import QUESTIONS, SYSTEM, run_engine

MAX_NEW = 24
# Prompts the model answers by quoting: most drafts are accepted, several per step.
QUOTES = ["Repeat the following sentence exactly: The invoice of March was charged twice "
          "because the payment provider retried the request after a timeout.",
          "Quote the first line of this ticket verbatim, then summarise it.\nTicket 4411: "
          "Customer cannot log in after the password reset email expired."]
ENGINE = dict(max_num_seqs=4, max_batch_tokens=256, max_model_len=512)
SPEC = dict(speculative="ngram", num_speculative_tokens=4)


@pytest.fixture(scope="module")
def smollm():
  return load_model(None, dtype="float32")


@pytest.fixture(scope="module")
def prompts(smollm):
  tok = smollm.tokenizer
  chats = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]
           for q in QUESTIONS] + [[{"role": "user", "content": q}] for q in QUOTES]
  return [tok.encode(tok.apply_chat_template(c)) for c in chats]


@pytest.fixture(scope="module")
def expected(smollm, prompts):
  cfg = smollm.config
  return [reference_generate(cfg, smollm.params, ids, MAX_NEW, cfg.eos_token_ids)
          for ids in prompts]


def run(engine: LLMEngine, prompts, arrivals=None, params=None) -> dict[str, list[int]]:
  """`run_engine` at this file's MAX_NEW tokens unless `params`."""
  return run_engine(engine, prompts, arrivals,
                    params=params or SamplingParams(temperature=0.0, max_tokens=MAX_NEW))


def check(engine, outputs, expected):
  for i, want in enumerate(expected):
    assert outputs[str(i)] == want, f"request {i}"
  stats = engine.stats()
  assert stats.spec_accepted_tokens_total >= 2 * MAX_NEW // 3      # the quotes' drafts
  assert stats.spec_proposed_tokens_total > stats.spec_accepted_tokens_total
  assert engine.kv.num_used_blocks == 0


@pytest.mark.parametrize("block_size,k", [(8, 4), (16, 7)])
def test_greedy_equals_the_reference_with_staggered_arrivals(smollm, prompts, expected,
                                                             block_size, k):
  engine = LLMEngine(EngineConfig(**ENGINE, **dict(SPEC, num_speculative_tokens=k),
                                  block_size=block_size, enable_prefix_caching=False),
                     model=smollm)
  outputs = run(engine, prompts, arrivals=[0, 0, 2, 3, 7, 1, 9])
  check(engine, outputs, expected)
  s = engine.stats()
  # Fewer steps than tokens: every accepted draft saved one.
  assert s.generation_tokens_total == sum(len(e) for e in expected)


def test_greedy_with_chunked_prefill_and_prefix_hits(smollm, prompts, expected):
  engine = LLMEngine(EngineConfig(**dict(ENGINE, max_batch_tokens=24), **SPEC, block_size=16),
                     model=smollm)
  first = run(engine, prompts[:1])
  assert first["0"] == expected[0]
  outputs = run(engine, prompts[1:], arrivals=[0, 1, 1, 2, 5, 6])
  check(engine, outputs, expected[1:])
  assert engine.stats().prefix_hit_tokens_total > 0


def test_greedy_with_preemption(smollm, prompts, expected):
  chosen = [prompts[1], prompts[5], prompts[6]]
  blocks = [-(-len(p) // 8) for p in chosen]
  engine = LLMEngine(EngineConfig(**ENGINE, **SPEC, block_size=8, num_blocks=sum(blocks) + 3,
                                  enable_prefix_caching=False, watermark=0.0,
                                  allow_small_kv_cache=True), model=smollm)
  outputs = run(engine, chosen)
  check(engine, outputs, [expected[1], expected[5], expected[6]])
  assert engine.stats().num_preemptions_total > 0


@pytest.fixture(scope="module")
def llms(smollm):
  # NOTE: the contiguous allocator on the speculating side: a region never grows, so every
  # verify row's slots (up to prompt + max_tokens - 1) must lie in it.
  return (LLM(loaded_model=smollm, **ENGINE, block_size=16),
          LLM(loaded_model=smollm, **ENGINE, **SPEC, block_size=16, allocator="contiguous"))


def test_stops_limits_logprobs_and_seeded_sampling_are_unchanged(llms, smollm):
  plain, spec = llms
  tok = smollm.tokenizer
  quote = tok.apply_chat_template([{"role": "user", "content": QUOTES[0]}])
  chat = tok.apply_chat_template([{"role": "user", "content": QUOTES[1]}])
  (base,) = plain.generate(quote, SamplingParams(max_tokens=MAX_NEW), use_tqdm=False)
  words = base.text.split()
  cases = [
      (quote, SamplingParams(max_tokens=MAX_NEW, stop=[" " + words[6]])),   # mid-quote
      (quote, SamplingParams(max_tokens=MAX_NEW, stop_token_ids=[base.token_ids[9]])),
      (quote, SamplingParams(max_tokens=7, logprobs=True)),                # mid-draft cap
      (chat, SamplingParams(max_tokens=60)),                               # EOS
      (quote, SamplingParams(temperature=0.8, seed=3, max_tokens=MAX_NEW, logprobs=True)),
      (chat, SamplingParams(temperature=1.1, top_k=20, top_p=0.9, min_p=0.02, seed=11,
                            max_tokens=MAX_NEW, ignore_eos=True)),
  ]
  want = plain.generate([p for p, _ in cases], [s for _, s in cases], use_tqdm=False)
  got = spec.generate([p for p, _ in cases], [s for _, s in cases], use_tqdm=False)
  for w, g in zip(want, got):
    assert (g.token_ids, g.text, g.finish_reason) == (w.token_ids, w.text, w.finish_reason)
  assert [g.finish_reason for g in got[:4]] == [FinishReason.STOP, FinishReason.STOP,
                                                FinishReason.LENGTH, FinishReason.STOP]
  assert len(got[2].token_ids) == len(got[2].logprobs) == 7
  # NOTE: a verified token's logits come from the prefill attention path, a decoded
  # one's from the decode path: the same math summed in another order. Logits of
  # SmolLM2 reach ~30 (float32 spacing 4e-6 there); measured: up to 1.6e-5 apart.
  for i in (2, 4):
    np.testing.assert_allclose(got[i].logprobs, want[i].logprobs, rtol=0, atol=3e-5)
  again = spec.generate([p for p, _ in cases[4:]], [s for _, s in cases[4:]], use_tqdm=False)
  assert [a.token_ids for a in again] == [g.token_ids for g in got[4:]]
  stats = spec.engine.stats()
  assert stats.spec_accepted_tokens_total > 0 and spec.engine.kv.num_used_blocks == 0


def test_multi_step_decode_and_speculation_are_refused_together():
  with pytest.raises(ValueError, match="num_decode_steps"):
    EngineConfig(**SPEC, num_decode_steps=2)
  with pytest.raises(ValueError, match="speculative"):
    EngineConfig(speculative="draft-model")
  with pytest.raises(ValueError, match="num_speculative_tokens"):
    EngineConfig(speculative="ngram", num_speculative_tokens=0)
  with pytest.raises(ValueError, match="ngram_prompt_lookup_min"):
    EngineConfig(speculative="ngram", ngram_prompt_lookup_min=3, ngram_prompt_lookup_max=2)
  assert EngineConfig(num_decode_steps=2, num_speculative_tokens=0).speculative_tokens == 0
