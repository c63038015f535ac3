"""pagedjax engine: continuous batching over a paged KV cache."""
from engine.config import EngineConfig
from engine.outputs import FinishReason, RequestOutput, TokenDelta, Usage
from engine.sampling_params import SamplingParams


def __getattr__(name):
  # The engine and LLM import JAX and the model; load them on first use only.
  if name in ("LLMEngine", "EngineStats"):
    from engine import engine as _engine
    return getattr(_engine, name)
  if name == "LLM":
    from engine.llm import LLM
    return LLM
  raise AttributeError(name)


__all__ = ["EngineConfig", "EngineStats", "FinishReason", "LLM", "LLMEngine", "RequestOutput",
           "SamplingParams", "TokenDelta", "Usage"]
