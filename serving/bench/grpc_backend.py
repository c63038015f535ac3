"""One streamed `GenerateStream` request to a pagedjax gRPC server (grpc.aio).

NOTE: `GenerateRequest` takes text, not token ids, so the workload's prompts are
first turned into text of the same token count (`grpc_text`).
"""
from __future__ import annotations

import time

import grpc

from serving.bench.grpc_text import TextPrompts
from serving.bench.result import RequestResult
from serving.bench.workloads import BenchRequest
from serving.proto.pagedjax.v1 import pagedjax_pb2 as pb
from serving.proto.pagedjax.v1 import pagedjax_pb2_grpc as pb_grpc


class GrpcBackend:
  """Sends requests to `target` (host:port) over one channel."""

  model = None

  def __init__(self, target: str, timeout_s: float):
    self._target = target
    self._timeout = timeout_s
    self._channel: grpc.aio.Channel | None = None
    self._stub = None
    self._texts: TextPrompts | None = None

  async def __aenter__(self) -> "GrpcBackend":
    self._channel = grpc.aio.insecure_channel(self._target)
    self._stub = pb_grpc.InferenceStub(self._channel)
    self._texts = TextPrompts(self._stub)
    return self

  async def __aexit__(self, *exc) -> None:
    await self._channel.close()

  async def prepare(self, requests: list[BenchRequest]) -> None:
    """Turns every prompt into text before the clock starts."""
    try:
      await self._texts.prepare(requests)
    except grpc.aio.AioRpcError as e:
      raise RuntimeError(f"Tokenize on {self._target}: {e.code().name}: {e.details()}") from None

  async def send(self, r: BenchRequest) -> RequestResult:
    request = pb.GenerateRequest(
        request_id=r.request_id, prompt=self._texts.text(r),
        sampling=pb.SamplingParams(temperature=0.0, max_tokens=r.max_tokens,
                                   ignore_eos=r.ignore_eos))
    out = RequestResult(r.request_id, start=time.perf_counter())
    try:
      async for msg in self._stub.GenerateStream(request, timeout=self._timeout):
        if msg.token_ids:
          out.chunk_times.append(time.perf_counter())
        if msg.finished:
          out.prompt_tokens = msg.usage.prompt_tokens
          out.output_tokens = msg.usage.completion_tokens
    except grpc.aio.AioRpcError as e:
      out.error = f"gRPC {e.code().name}: {e.details()}"
    out.end = time.perf_counter()
    return out
