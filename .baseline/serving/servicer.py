"""The `pagedjax.v1.Inference` gRPC servicer.

Handlers validate and tokenize the request on their own thread, hand it to the
`EngineLoop` and then only read the request's event queue: they never call
the engine. A client that cancels, disconnects or passes its deadline ends the
RPC, whose callback aborts the request at the engine's next step.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from typing import Iterator

import grpc

from engine.outputs import FinishReason
from serving import request_convert as rc
from serving.engine_loop import (EngineLoop, Event, QueueFullError, RejectKind,
                                 ShuttingDownError, Submission)
from serving.metrics import ServingMetrics
from serving.proto.pagedjax.v1 import pagedjax_pb2 as pb
from serving.proto.pagedjax.v1 import pagedjax_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_POLL_S = 0.25  # how often a waiting handler checks that its client is still there
_REJECT_CODES = {
    RejectKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    RejectKind.INTERNAL: grpc.StatusCode.INTERNAL,
    RejectKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}


class InferenceServicer(pb_grpc.InferenceServicer):
  """Streams engine output to clients; counts in-flight generations for drain."""

  def __init__(self, loop: EngineLoop, tokenizer, max_model_len: int,
               metrics: ServingMetrics):
    self._loop = loop
    self._tokenizer = tokenizer
    self._max_model_len = max_model_len
    self._metrics = metrics
    self._lock = threading.Lock()
    self._inflight = 0
    self._draining = False

  # --- drain support (used by the server's graceful shutdown) -----------------

  def start_draining(self) -> None:
    """New generations get UNAVAILABLE from now on; in-flight ones go on."""
    with self._lock:
      self._draining = True

  def num_inflight(self) -> int:
    with self._lock:
      return self._inflight

  # --- RPCs -------------------------------------------------------------------

  def GenerateStream(self, request: pb.GenerateRequest, context) -> Iterator[pb.GenerateStreamResponse]:
    sub = self._admit(request, context)
    try:
      for ev in self._events(sub, context):
        d = ev.delta
        msg = pb.GenerateStreamResponse(
            request_id=request.request_id, text=d.text, token_ids=d.token_ids,
            logprobs=d.logprobs or [], finished=d.finished)
        if d.finished:
          msg.finish_reason = rc.FINISH_REASONS.get(d.finish_reason, pb.FINISH_REASON_UNSPECIFIED)
          msg.usage.CopyFrom(rc.usage_to_proto(d.usage, ev.ttft_s))
        yield msg
    finally:
      self._release()

  def Generate(self, request: pb.GenerateRequest, context) -> pb.GenerateResponse:
    sub = self._admit(request, context)
    try:
      out = pb.GenerateResponse(request_id=request.request_id)
      texts = []
      for ev in self._events(sub, context):
        d = ev.delta
        texts.append(d.text)
        out.token_ids.extend(d.token_ids)
        out.logprobs.extend(d.logprobs or [])
        if d.finished:
          out.finish_reason = rc.FINISH_REASONS.get(d.finish_reason, pb.FINISH_REASON_UNSPECIFIED)
          out.usage.CopyFrom(rc.usage_to_proto(d.usage, ev.ttft_s))
      out.text = "".join(texts)
      return out
    finally:
      self._release()

  def Tokenize(self, request: pb.TokenizeRequest, context) -> pb.TokenizeResponse:
    try:
      ids = rc.prompt_token_ids(self._tokenizer, request.text, request.messages,
                                max_model_len=None, field="text")
    except rc.InvalidRequestError as e:
      context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    return pb.TokenizeResponse(token_ids=ids, num_tokens=len(ids),
                               max_model_len=self._max_model_len)

  # --- helpers ----------------------------------------------------------------

  def _admit(self, request: pb.GenerateRequest, context) -> Submission:
    """Validates, tokenizes and submits; aborts the RPC on any refusal."""
    received_at = time.monotonic()
    try:
      params = rc.sampling_params_from_proto(request.sampling)
      ids = rc.prompt_token_ids(self._tokenizer, request.prompt, request.messages,
                                self._max_model_len)
    except rc.InvalidRequestError as e:
      self._metrics.rejected.labels(code="invalid_argument").inc()
      context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    # NOTE: the engine id is always unique, so clients reusing an id (or
    # sending none) can never collide with each other's requests.
    engine_id = f"{request.request_id[:64] or 'req'}#{uuid.uuid4().hex[:16]}"
    sub = Submission(engine_id, ids, params, cache_salt=request.cache_salt or None,
                     priority=request.priority, received_at=received_at)
    with self._lock:
      if self._draining:
        context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
      try:
        self._loop.submit(sub)
      except QueueFullError as e:
        self._metrics.rejected.labels(code="resource_exhausted").inc()
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
      except ShuttingDownError as e:
        context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
      self._inflight += 1
    if not context.add_callback(lambda: self._loop.abort(engine_id)):
      self._loop.abort(engine_id)  # the RPC already ended
    return sub

  def _events(self, sub: Submission, context) -> Iterator[Event]:
    """The request's events up to its final delta; aborts the RPC on rejection."""
    while True:
      try:
        ev = sub.outputs.get(timeout=_POLL_S)
      except queue.Empty:
        if not context.is_active():
          self._loop.abort(sub.request_id)
          return
        continue
      if ev.reject_kind is not None:
        context.abort(_REJECT_CODES[ev.reject_kind], ev.reject_message)
      if ev.delta.finished and ev.delta.finish_reason == FinishReason.ERROR:
        # NOTE: the engine refused it while scheduling (e.g. the prompt needs
        # more KV blocks than the whole cache): a capacity problem of this server.
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      f"request failed: {ev.delta.error or 'engine error'}")
      yield ev
      if ev.delta.finished:
        return

  def _release(self) -> None:
    with self._lock:
      self._inflight -= 1
