"""LLMEngine / LLM behaviour on SmolLM2: sampling parameters, stops, abort, bad input."""
from __future__ import annotations

import numpy as np
import pytest

from engine import LLM, EngineConfig, FinishReason, LLMEngine, SamplingParams
from models import load_model
from models.reference import reference_logits

# The same shapes as test_engine_parity.py, so the on-disk compilation cache is shared.
ENGINE = dict(max_num_seqs=4, max_batch_tokens=256, max_model_len=512, block_size=16)
QUESTION = "Name three colours of the rainbow."


@pytest.fixture(scope="module")
def smollm():
  return load_model(None, dtype="float32")


@pytest.fixture(scope="module")
def llm(smollm):
  return LLM(loaded_model=smollm, **ENGINE)


@pytest.fixture(scope="module")
def prompt(llm):
  return llm.tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}])


def greedy(max_tokens=24, **kw):
  return SamplingParams(temperature=0.0, max_tokens=max_tokens, **kw)


@pytest.fixture(scope="module")
def baseline(llm, prompt):
  (out,) = llm.generate(prompt, greedy(), use_tqdm=False)
  assert out.finish_reason == FinishReason.LENGTH and len(out.token_ids) == 24
  return out


def test_stop_string_is_excluded_from_text(llm, prompt, baseline):
  words = baseline.text.split()
  stop = " " + words[len(words) // 2]
  (out,) = llm.generate(prompt, greedy(stop=[stop]), use_tqdm=False)
  assert out.finish_reason == FinishReason.STOP
  assert out.text == baseline.text[:baseline.text.index(stop)]
  assert stop not in out.text


def test_streamed_text_never_contains_part_of_stop_string(llm, prompt, baseline):
  stop = baseline.text[len(baseline.text) // 2:len(baseline.text) // 2 + 6]
  engine = llm.engine
  engine.add_request("s", prompt, greedy(stop=[stop]))
  pieces = []
  while engine.has_unfinished_requests():
    pieces += [d.text for d in engine.step() if d.request_id == "s"]
  text = "".join(pieces)
  assert text == baseline.text[:baseline.text.index(stop)]


def test_stop_token_ids_and_ignore_eos(llm, prompt, baseline):
  target = baseline.token_ids[5]
  (out,) = llm.generate(prompt, greedy(stop_token_ids=[target]), use_tqdm=False)
  assert out.token_ids == baseline.token_ids[:baseline.token_ids.index(target) + 1]
  assert out.finish_reason == FinishReason.STOP
  eos = llm.engine.model.config.eos_token_ids
  short = llm.tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+2?"}])
  (ended,) = llm.generate(short, greedy(max_tokens=40), use_tqdm=False)
  assert ended.finish_reason == FinishReason.STOP and ended.token_ids[-1] in eos
  (forced,) = llm.generate(short, greedy(max_tokens=len(ended.token_ids) + 3, ignore_eos=True),
                           use_tqdm=False)
  assert forced.finish_reason == FinishReason.LENGTH
  assert forced.token_ids[:len(ended.token_ids)] == ended.token_ids


def test_logprobs_match_reference(llm, smollm, prompt, baseline):
  (out,) = llm.generate(prompt, greedy(max_tokens=3, logprobs=True), use_tqdm=False)
  assert len(out.logprobs) == 3
  logits = reference_logits(smollm.config, smollm.params, out.prompt_token_ids)[-1]
  logits = logits.astype(np.float64)
  want = logits[out.token_ids[0]] - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max()
  assert abs(out.logprobs[0] - want) < 1e-4
  assert all(lp <= 0 for lp in out.logprobs)


def test_seeded_sampling_is_reproducible_and_batch_independent(llm, prompt):
  params = SamplingParams(temperature=0.9, top_p=0.95, seed=1234, max_tokens=12)
  (alone,) = llm.generate(prompt, params, use_tqdm=False)
  others = SamplingParams(temperature=1.0, seed=5, max_tokens=12)
  batch = llm.generate(["Hello", prompt, "Tell me a joke"], [others, params, others],
                       use_tqdm=False)
  assert batch[1].token_ids == alone.token_ids
  (other_seed,) = llm.generate(prompt, SamplingParams(temperature=0.9, top_p=0.95, seed=99,
                                                      max_tokens=12), use_tqdm=False)
  assert other_seed.token_ids != alone.token_ids


def test_abort_frees_blocks_and_reports(llm, prompt):
  engine = llm.engine
  engine.add_request("a", prompt, greedy(max_tokens=200))
  for _ in range(3):
    engine.step()
  assert engine.kv.num_used_blocks > 0
  engine.abort("a")
  finals = []
  while engine.has_unfinished_requests():
    finals += [d for d in engine.step() if d.finished]
  assert [(d.request_id, d.finish_reason) for d in finals] == [("a", FinishReason.ABORT)]
  assert engine.kv.num_used_blocks == 0


def test_bad_requests_raise_and_change_nothing(llm):
  engine = llm.engine
  with pytest.raises(ValueError, match="empty"):
    engine.add_request("x", "")
  with pytest.raises(ValueError, match="max_model_len = 512 tokens"):
    engine.add_request("x", prompt_token_ids=[1] * engine.max_model_len)
  with pytest.raises(ValueError, match="lie in"):
    engine.add_request("x", prompt_token_ids=[10 ** 9])
  engine.add_request("dup", "hi", greedy(max_tokens=1))
  with pytest.raises(ValueError, match="already in use"):
    engine.add_request("dup", "hi")
  while engine.has_unfinished_requests():
    engine.step()
  assert engine.stats().num_waiting == 0 and engine.kv.num_used_blocks == 0


def test_two_engines_with_different_block_sizes_in_one_process(smollm, prompt, baseline):
  a = LLMEngine(EngineConfig(**dict(ENGINE, block_size=16)), model=smollm)
  b = LLMEngine(EngineConfig(**dict(ENGINE, block_size=32)), model=smollm)
  ids = smollm.tokenizer.encode(prompt)
  for engine in (a, b):
    engine.add_request("r", prompt_token_ids=ids, sampling_params=greedy())
  tokens = {id(a): [], id(b): []}
  while a.has_unfinished_requests() or b.has_unfinished_requests():
    for engine in (a, b):               # interleaved steps
      for d in engine.step():
        tokens[id(engine)] += d.token_ids
  assert tokens[id(a)] == tokens[id(b)] == baseline.token_ids


def test_engines_with_the_same_model_share_compiled_steps(smollm, prompt, baseline):
  """make_steps is memoized per (model config, backend, mesh) and so are the executables
  compiled for it: a second engine with the same settings compiles nothing new; another
  block size compiles its own shapes (tests/engine/test_warmup.py counts exactly)."""
  ids = smollm.tokenizer.encode(prompt)

  def run(block_size):
    engine = LLMEngine(EngineConfig(**dict(ENGINE, block_size=block_size)), model=smollm)
    engine.add_request("r", prompt_token_ids=ids, sampling_params=greedy())
    tokens = []
    while engine.has_unfinished_requests():
      tokens += [t for d in engine.step() for t in d.token_ids]
    return engine.runner, tokens
  first, tokens_a = run(16)
  second, tokens_b = run(16)
  assert second._decode is first._decode
  assert second.num_compilations == 0
  assert all(second._executables[k] is first._executables[k] for k in second._executables)
  third, tokens_c = run(8)
  assert third.num_compilations > 0
  assert tokens_a == tokens_b == tokens_c == baseline.token_ids


def test_multi_step_decode_gives_the_same_outputs(smollm, llm, prompt, baseline):
  """4 decode iterations per step: same tokens, text, logprobs and stops as one."""
  multi = LLM(loaded_model=smollm, num_decode_steps=4, **ENGINE)
  words = baseline.text.split()
  short = llm.tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+2?"}])
  cases = [(prompt, greedy()), (prompt, greedy(stop=[" " + words[len(words) // 2]])),
           (prompt, greedy(stop_token_ids=[baseline.token_ids[5]])),
           (short, greedy(max_tokens=40)),
           (prompt, SamplingParams(temperature=0.9, top_p=0.95, seed=7, max_tokens=11,
                                   logprobs=True))]
  want = llm.generate([p for p, _ in cases], [s for _, s in cases], use_tqdm=False)
  got = multi.generate([p for p, _ in cases], [s for _, s in cases], use_tqdm=False)
  for w, g in zip(want, got):
    assert (g.token_ids, g.text, g.finish_reason) == (w.token_ids, w.text, w.finish_reason)
  assert got[0].token_ids == baseline.token_ids
  assert got[3].finish_reason == FinishReason.STOP and got[1].finish_reason == FinishReason.STOP
  np.testing.assert_allclose(got[4].logprobs, want[4].logprobs, atol=1e-5)
  assert multi.engine.kv.num_used_blocks == 0
