"""`LLM`: offline generation over `LLMEngine`, like vLLM's `LLM.generate` and `LLM.chat`.

As in vLLM, `generate` takes raw prompts (no chat template) and `chat` takes
conversations (the model's chat template applied). The sampling defaults are
`SamplingParams`' (greedy, 128 tokens), the same as the `pagedjax` commands'.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Mapping, Sequence

from tqdm import tqdm

from engine.config import EngineConfig
from engine.engine import LLMEngine
from engine.outputs import OutputAccumulator, RequestOutput
from engine.prompts import encode_prompt
from engine.sampling_params import SamplingParams


class LLM:
  """`LLM(model=None, block_size=16, ...)`: any EngineConfig field as a keyword."""

  def __init__(self, model: str | None = None, *, loaded_model=None, **engine_kwargs):
    self.engine = LLMEngine(EngineConfig(model=model, **engine_kwargs), model=loaded_model)
    self._ids = itertools.count()

  @classmethod
  def from_config(cls, config: EngineConfig, loaded_model=None) -> "LLM":
    fields = {f: getattr(config, f) for f in config.__dataclass_fields__}
    return cls(loaded_model=loaded_model, **fields)

  @property
  def tokenizer(self):
    return self.engine.tokenizer

  def generate(self, prompts: str | Sequence[str] | None = None,
               sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, *,
               prompt_token_ids: Sequence[Sequence[int]] | None = None,
               cache_salt: str | None = None, use_tqdm: bool = True) -> list[RequestOutput]:
    """Generates for every prompt; returns outputs in the order of the prompts."""
    items = _inputs(prompts, prompt_token_ids)
    params = _per_prompt(sampling_params, len(items))
    partial: dict[str, _Partial] = {}
    for (text, token_ids), p in zip(items, params):
      rid = str(next(self._ids))
      ids = self.engine.add_request(rid, text, p, prompt_token_ids=token_ids,
                                    cache_salt=cache_salt)
      partial[rid] = _Partial(prompt=text, prompt_ids=ids)
    return self._run(partial, use_tqdm)

  def chat(self, messages: Sequence[Mapping[str, str]] | Sequence[Sequence[Mapping[str, str]]],
           sampling_params: SamplingParams | Sequence[SamplingParams] | None = None, *,
           cache_salt: str | None = None, use_tqdm: bool = True) -> list[RequestOutput]:
    """Answers one conversation ([{"role", "content"}, ...]) or a list of them.

    Each is rendered with the model's chat template plus the assistant cue;
    returns one output per conversation, in order.
    """
    if not messages:
      raise ValueError("give a conversation: a non-empty list of {'role', 'content'} dicts")
    conversations = [messages] if isinstance(messages[0], Mapping) else list(messages)
    if self.tokenizer is None:
      raise ValueError("this model has no tokenizer; cannot apply a chat template")
    ids = [encode_prompt(self.tokenizer, messages=c) for c in conversations]
    return self.generate(prompt_token_ids=ids, sampling_params=sampling_params,
                         cache_salt=cache_salt, use_tqdm=use_tqdm)

  def _run(self, partial: dict[str, "_Partial"], use_tqdm: bool) -> list[RequestOutput]:
    results: dict[str, RequestOutput] = {}
    ids = list(partial)
    with tqdm(total=len(ids), desc="generate", unit="req", disable=not use_tqdm) as bar:
      while self.engine.has_unfinished_requests():
        for d in self.engine.step():
          if d.request_id not in partial:
            continue
          p = partial[d.request_id]
          p.deltas.add(d)
          if d.finished:
            results[d.request_id] = p.deltas.output(p.prompt, p.prompt_ids)
            bar.update(1)
            bar.set_postfix(tok=self.engine.stats().generation_tokens_total)
    return [results[rid] for rid in ids]


@dataclasses.dataclass
class _Partial:
  prompt: str | None
  prompt_ids: list[int]
  deltas: OutputAccumulator = dataclasses.field(default_factory=OutputAccumulator)


def _inputs(prompts, prompt_token_ids) -> list[tuple[str | None, list[int] | None]]:
  if prompt_token_ids is not None:
    return [(None, list(t)) for t in prompt_token_ids]
  if prompts is None:
    raise ValueError("give prompts or prompt_token_ids")
  if isinstance(prompts, str):
    prompts = [prompts]
  return [(p, None) for p in prompts]


def _per_prompt(params, n: int) -> list[SamplingParams]:
  if params is None or isinstance(params, SamplingParams):
    return [params or SamplingParams()] * n
  params = list(params)
  if len(params) != n:
    raise ValueError(f"got {len(params)} sampling params for {n} prompts")
  return params
