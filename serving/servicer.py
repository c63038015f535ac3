"""The `pagedjax.v1.Inference` gRPC servicer.

Handlers authenticate the caller (when the server has API keys), check every
size bound (`serving/limits.py`), tokenize on the bounded tokenizer pool, hand
the request to the `EngineLoop` and then only read the request's event queue:
they never call the engine. A client that cancels, disconnects or passes its
deadline ends the RPC, whose callback aborts the request at the engine's next
step.
"""
from __future__ import annotations

import contextlib
import logging
import queue
import time
import uuid
from typing import Iterator

import grpc

from engine.context_limit import ContextLimit
from engine.outputs import FinishReason, OutputAccumulator
from serving import auth, limits
from serving.admissions import Admissions, DrainingError
from serving import request_convert as rc
from serving.engine_loop import (EngineLoop, Event, QueueFullError, RejectKind,
                                 ShuttingDownError, Submission)
from serving.metrics import ServingMetrics
from serving.proto.pagedjax.v1 import pagedjax_pb2 as pb
from serving.proto.pagedjax.v1 import pagedjax_pb2_grpc as pb_grpc
from serving.tokenize_pool import BoundedPool, PoolFullError

log = logging.getLogger(__name__)

_POLL_S = 0.25  # how often a waiting handler checks that its client is still there
_REJECT_CODES = {
    RejectKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    RejectKind.INTERNAL: grpc.StatusCode.INTERNAL,
    RejectKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}


class InferenceServicer(pb_grpc.InferenceServicer):
  """Streams engine output to clients; counts in-flight generations for drain."""

  def __init__(self, loop: EngineLoop, admissions: Admissions, tokenizer,
               context_limit: ContextLimit, metrics: ServingMetrics, tokenize_pool: BoundedPool, *,
               api_keys: auth.ApiKeys | None = None, client_cache_salt: str = "allow",
               request_limits: limits.RequestLimits = limits.RequestLimits()):
    self._loop = loop
    self._admissions = admissions
    self._tokenizer = tokenizer
    self._context_limit = context_limit
    self._metrics = metrics
    self._tokenize_pool = tokenize_pool
    self._api_keys = api_keys
    self._salt_policy = client_cache_salt
    self._limits = request_limits
    # NOTE: a model without a tokenizer (random weights) refuses every prompt
    # in prompt_token_ids; its bound is then the message limit alone.
    token_bytes = tokenizer.max_token_bytes if tokenizer else limits.MAX_MESSAGE_BYTES
    self.max_prompt_bytes = request_limits.max_prompt_bytes(context_limit.tokens, token_bytes)

  # --- RPCs -------------------------------------------------------------------

  def GenerateStream(self, request: pb.GenerateRequest, context) -> Iterator[pb.GenerateStreamResponse]:
    sub = self._admit(request, context)
    try:
      request_id = request.request_id      # NOTE: sent in the first message only
      for ev in self._events(sub, context):
        d = ev.delta
        msg = pb.GenerateStreamResponse(
            request_id=request_id, text=d.text, token_ids=d.token_ids,
            logprobs=d.logprobs or [], finished=d.finished)
        request_id = ""
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
      deltas = OutputAccumulator()
      for ev in self._events(sub, context):
        d = ev.delta
        deltas.add(d)
        if d.finished:
          out.finish_reason = rc.FINISH_REASONS.get(d.finish_reason, pb.FINISH_REASON_UNSPECIFIED)
          out.usage.CopyFrom(rc.usage_to_proto(d.usage, ev.ttft_s))
      out.token_ids.extend(deltas.token_ids)
      out.logprobs.extend(deltas.logprobs)
      out.text = deltas.text
      return out
    finally:
      self._release()

  def Tokenize(self, request: pb.TokenizeRequest, context) -> pb.TokenizeResponse:
    self._authenticate(context)
    with self._refusals(context):
      limits.check_tokenize(request, self._limits, self.max_prompt_bytes)
      ids = self._tokenize_pool.run(rc.prompt_token_ids, self._tokenizer, request.text,
                                    request.messages, None, "text")
    return pb.TokenizeResponse(token_ids=ids, num_tokens=len(ids),
                               max_model_len=self._context_limit.tokens)

  # --- helpers ----------------------------------------------------------------

  def _authenticate(self, context) -> str | None:
    """The caller's tenant (None without API keys); aborts UNAUTHENTICATED."""
    if self._api_keys is None:
      return None
    try:
      return self._api_keys.tenant(context.invocation_metadata())
    except auth.UnauthenticatedError as e:
      self._metrics.rejected.labels(code="unauthenticated").inc()
      context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))

  @contextlib.contextmanager
  def _refusals(self, context):
    """Turns a bad request into INVALID_ARGUMENT and a full tokenizer pool into
    RESOURCE_EXHAUSTED (both counted)."""
    try:
      yield
    except rc.InvalidRequestError as e:
      self._metrics.rejected.labels(code="invalid_argument").inc()
      context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
    except PoolFullError as e:
      self._metrics.rejected.labels(code="resource_exhausted").inc()
      context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))

  def _admit(self, request: pb.GenerateRequest, context) -> Submission:
    """Authenticates, validates, tokenizes and submits; aborts the RPC on any refusal."""
    received_at = time.monotonic()
    tenant = self._authenticate(context)
    with self._refusals(context):
      limits.check_generate(request, self._limits, self.max_prompt_bytes)
      salt = auth.cache_salt(tenant, request.cache_salt, self._salt_policy)
      params = rc.sampling_params_from_proto(request.sampling)
      ids = self._tokenize_pool.run(rc.prompt_token_ids, self._tokenizer, request.prompt,
                                    request.messages, self._context_limit)
    # NOTE: the engine id is always unique, so clients reusing an id (or
    # sending none) can never collide with each other's requests.
    engine_id = f"{request.request_id[:64] or 'req'}#{uuid.uuid4().hex[:16]}"
    sub = Submission(engine_id, ids, params, cache_salt=salt,
                     priority=request.priority, received_at=received_at)
    try:
      self._admissions.submit(sub)
    except QueueFullError as e:
      self._metrics.rejected.labels(code="resource_exhausted").inc()
      context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
    except (DrainingError, ShuttingDownError) as e:
      context.abort(grpc.StatusCode.UNAVAILABLE, str(e))
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
    self._admissions.release()
