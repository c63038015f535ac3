"""A Python client for a pagedjax gRPC server (no engine or JAX imports).

    with PagedJaxClient("localhost:50051") as c:
      print(c.generate("Hello", max_tokens=16, temperature=0).text)
      for chunk in c.generate_stream(messages=[{"role": "user", "content": "Hi"}]):
        print(chunk.text, end="", flush=True)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.proto.pagedjax.v1 import pagedjax_pb2 as pb
from serving.proto.pagedjax.v1 import pagedjax_pb2_grpc as pb_grpc

_FINISH = {pb.FINISH_REASON_UNSPECIFIED: None, pb.FINISH_REASON_STOP: "stop",
           pb.FINISH_REASON_LENGTH: "length", pb.FINISH_REASON_ABORT: "abort",
           pb.FINISH_REASON_ERROR: "error"}
_SAMPLING_FIELDS = frozenset(pb.SamplingParams.DESCRIPTOR.fields_by_name)


@dataclasses.dataclass(frozen=True)
class Usage:
  prompt_tokens: int
  cached_prompt_tokens: int
  completion_tokens: int
  time_to_first_token_s: float


@dataclasses.dataclass(frozen=True)
class StreamChunk:
  """New text/tokens of one stream message; the last has finish_reason and usage."""
  request_id: str
  text: str
  token_ids: list[int]
  logprobs: list[float]
  finished: bool
  finish_reason: str | None = None   # "stop", "length", "abort" or "error"
  usage: Usage | None = None


@dataclasses.dataclass(frozen=True)
class Completion:
  request_id: str
  text: str
  token_ids: list[int]
  logprobs: list[float]
  finish_reason: str | None
  usage: Usage


def _usage(u: pb.Usage) -> Usage:
  return Usage(u.prompt_tokens, u.cached_prompt_tokens, u.completion_tokens,
               u.time_to_first_token_s)


def build_request(prompt: str | None = None, *,
                  messages: Sequence[Mapping[str, str]] | None = None,
                  request_id: str = "", cache_salt: str = "", priority: int = 0,
                  **sampling: Any) -> pb.GenerateRequest:
  """A `GenerateRequest`; `sampling` takes SamplingParams field names.

  Raises ValueError for an unknown sampling field (the server validates values).
  """
  unknown = sorted(set(sampling) - _SAMPLING_FIELDS)
  if unknown:
    raise ValueError(f"unknown sampling field(s) {unknown}; "
                     f"expected some of {sorted(_SAMPLING_FIELDS)}")
  sp = pb.SamplingParams(**{k: v for k, v in sampling.items() if v is not None})
  msgs = [pb.ChatMessage(role=m["role"], content=m["content"]) for m in messages or ()]
  return pb.GenerateRequest(request_id=request_id, prompt=prompt or "", messages=msgs,
                            sampling=sp, cache_salt=cache_salt, priority=priority)


class Stream:
  """An in-progress streaming call: iterate for chunks, `cancel()` to abort."""

  def __init__(self, call):
    self._call = call

  def __iter__(self) -> Iterator[StreamChunk]:
    for m in self._call:
      yield StreamChunk(m.request_id, m.text, list(m.token_ids), list(m.logprobs),
                        m.finished, _FINISH[m.finish_reason] if m.finished else None,
                        _usage(m.usage) if m.finished else None)

  def cancel(self) -> None:
    self._call.cancel()


class PagedJaxClient:
  """A blocking client; errors surface as `grpc.RpcError` (see `.code()`)."""

  def __init__(self, target: str = "localhost:50051", *, timeout: float | None = None):
    self._channel = grpc.insecure_channel(target)
    self._stub = pb_grpc.InferenceStub(self._channel)
    self._health = health_pb2_grpc.HealthStub(self._channel)
    self.timeout = timeout

  def __enter__(self) -> "PagedJaxClient":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def close(self) -> None:
    self._channel.close()

  def generate(self, prompt: str | None = None, *, timeout: float | None = None,
               **kwargs: Any) -> Completion:
    """The whole answer (unary call). kwargs: see `build_request`."""
    r = self._stub.Generate(build_request(prompt, **kwargs), timeout=timeout or self.timeout)
    return Completion(r.request_id, r.text, list(r.token_ids), list(r.logprobs),
                      _FINISH[r.finish_reason], _usage(r.usage))

  def generate_stream(self, prompt: str | None = None, *, timeout: float | None = None,
                      **kwargs: Any) -> Stream:
    """Streams chunks as tokens are produced. kwargs: see `build_request`."""
    return Stream(self._stub.GenerateStream(build_request(prompt, **kwargs),
                                            timeout=timeout or self.timeout))

  def tokenize(self, text: str | None = None, *,
               messages: Sequence[Mapping[str, str]] | None = None,
               timeout: float | None = None) -> list[int]:
    msgs = [pb.ChatMessage(role=m["role"], content=m["content"]) for m in messages or ()]
    r = self._stub.Tokenize(pb.TokenizeRequest(text=text or "", messages=msgs),
                            timeout=timeout or self.timeout)
    return list(r.token_ids)

  def health(self, service: str = "", timeout: float | None = None) -> str:
    """The health status name: "SERVING", "NOT_SERVING", ..."""
    r = self._health.Check(health_pb2.HealthCheckRequest(service=service),
                           timeout=timeout or self.timeout)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

  def wait_until_serving(self, timeout: float = 60.0) -> None:
    """Blocks until the channel connects and health says SERVING."""
    grpc.channel_ready_future(self._channel).result(timeout=timeout)
    if self.health(timeout=timeout) != "SERVING":
      raise RuntimeError("server is up but not SERVING")
