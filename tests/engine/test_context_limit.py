"""max_model_len against the KV cache: refused at start-up when one request could
outgrow the whole cache, the default capped to it, max_tokens capped at admission,
and error messages that name the limit the user set."""
from __future__ import annotations

import os

import pytest

from engine import EngineConfig, FinishReason, SamplingParams
from engine import context_limit as cl

TINY = "random:" + os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments",
                                "tiny_llama.json")


def test_resolve_names_what_set_the_limit():
  assert cl.resolve(None, 8192, 1001, 16, "--num-blocks 1001") == cl.ContextLimit(
      4096, "the default cap of 4096")
  assert cl.resolve(None, 2048, 1001, 16, "x") == cl.ContextLimit(2048, "the model's context")
  small = cl.resolve(None, 8192, 9, 16, "--num-blocks 9")
  assert small.tokens == 128 and "what the KV cache holds: 8 blocks x 16 tokens" in small.source
  assert cl.resolve(100, 8192, 9, 16, "x") == cl.ContextLimit(100, "set by --max-model-len")
  assert cl.resolve(9000, 8192, 1001, 16, "x").tokens == 8192
  with pytest.raises(ValueError) as err:
    cl.resolve(200, 8192, 9, 16, "sized from --kv-cache-memory-bytes 4096")
  msg = str(err.value)
  assert "--max-model-len" in msg and "128 tokens" in msg and "--kv-cache-memory-bytes" in msg
  # Research runs keep the old rule.
  assert cl.resolve(200, 8192, 9, 16, "x", allow_small_kv_cache=True).tokens == 200
  assert cl.resolve(None, 8192, 9, 16, "x", allow_small_kv_cache=True).tokens == 4096


def test_prompt_errors_blame_the_limit_not_the_model():
  with pytest.raises(ValueError) as err:
    cl.check_prompt(100, cl.ContextLimit(100, "set by --max-model-len"))
  assert str(err.value) == ("prompt has 100 tokens; with one generated token that exceeds "
                            "max_model_len = 100 tokens (set by --max-model-len)")
  cl.check_prompt(99, cl.ContextLimit(100, "x"))
  assert cl.max_new_tokens(10 ** 9, 30, cl.ContextLimit(100, "x")) == 70
  assert cl.max_new_tokens(5, 30, cl.ContextLimit(100, "x")) == 5


def test_engine_config_refuses_before_any_weights_load():
  with pytest.raises(ValueError, match=r"--max-model-len.*--num-blocks 5"):
    EngineConfig(model="/no/such/model.gguf", num_blocks=5, max_model_len=100)
  EngineConfig(model="/no/such/model.gguf", num_blocks=5, max_model_len=64)
  EngineConfig(num_blocks=5, max_model_len=100, allow_small_kv_cache=True)
  with pytest.raises(ValueError, match="max_model_len must be >= 2"):
    EngineConfig(max_model_len=1)


def test_engine_refuses_a_budget_sized_cache_smaller_than_max_model_len():
  from engine import LLMEngine
  # tiny_llama: 2 layers x 2 KV heads x 16 dims x 2 (K, V) x 4 bytes = 512 bytes per token.
  with pytest.raises(ValueError) as err:
    LLMEngine(EngineConfig(model=TINY, max_model_len=256, kv_cache_memory_bytes=64 * 512))
  assert "--max-model-len" in str(err.value) and "--kv-cache-memory-bytes 32768" in str(err.value)


@pytest.mark.parametrize("allocator", ["paged", "contiguous"])
def test_a_request_that_asks_for_more_than_the_cache_finishes_with_length(allocator):
  """A cache of 4 x 16 tokens and no max_model_len: the default is capped to 64 tokens,
  so max_tokens 10**9 finishes at the cache's size (it used to stream until the cache
  was full and then fail with FinishReason.ERROR; contiguous refused it outright)."""
  from engine import LLMEngine
  engine = LLMEngine(EngineConfig(model=TINY, num_blocks=5, max_num_seqs=2,
                                  max_batch_tokens=16, allocator=allocator))
  assert engine.max_model_len == 64
  engine.add_request("a", prompt_token_ids=list(range(3, 13)), sampling_params=SamplingParams(
      temperature=0.0, max_tokens=10 ** 9, ignore_eos=True))
  tokens, final = [], None
  while engine.has_unfinished_requests():
    for d in engine.step():
      tokens += d.token_ids
      final = d if d.finished else final
  assert final.error is None and final.finish_reason == FinishReason.LENGTH
  assert len(tokens) == 64 - 10
