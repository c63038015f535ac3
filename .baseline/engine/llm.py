"""`LLM`: offline generation over `LLMEngine`, like vLLM's `LLM.generate`."""
from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

from tqdm import tqdm

from engine.config import EngineConfig
from engine.engine import LLMEngine
from engine.outputs import RequestOutput
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

  def _run(self, partial: dict[str, "_Partial"], use_tqdm: bool) -> list[RequestOutput]:
    results: dict[str, RequestOutput] = {}
    ids = list(partial)
    with tqdm(total=len(ids), desc="generate", unit="req", disable=not use_tqdm) as bar:
      while self.engine.has_unfinished_requests():
        for d in self.engine.step():
          if d.request_id not in partial:
            continue
          acc = partial[d.request_id]
          acc.add(d)
          if d.finished:
            results[d.request_id] = acc.output(d)
            bar.update(1)
            bar.set_postfix(tok=self.engine.stats().generation_tokens_total)
    return [results[rid] for rid in ids]


@dataclasses.dataclass
class _Partial:
  prompt: str | None
  prompt_ids: list[int]
  token_ids: list = dataclasses.field(default_factory=list)
  text: list = dataclasses.field(default_factory=list)
  logprobs: list = dataclasses.field(default_factory=list)

  def add(self, d) -> None:
    self.token_ids += d.token_ids
    self.text.append(d.text)
    self.logprobs += d.logprobs or []

  def output(self, d) -> RequestOutput:
    return RequestOutput(request_id=d.request_id, prompt=self.prompt,
                         prompt_token_ids=self.prompt_ids,
                         text="".join(self.text), token_ids=self.token_ids,
                         finish_reason=d.finish_reason, usage=d.usage,
                         logprobs=self.logprobs or None, error=d.error)


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
