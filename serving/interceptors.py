"""Server interceptor: undecodable requests and a thread of its own for health checks.

- A request whose bytes do not parse (e.g. invalid UTF-8 in a string field)
  gets INVALID_ARGUMENT and one warning line. Left to gRPC, it is INTERNAL and
  a traceback in the log per request.
- `grpc.health.v1.Health/Check` runs on its own small thread pool, so it
  answers however busy the shared handler threads are.
"""
from __future__ import annotations

import concurrent.futures
import logging

import grpc
from google.protobuf import message as pb_message

log = logging.getLogger(__name__)

HEALTH_CHECK = "/grpc.health.v1.Health/Check"


class Undecodable:
  """Stands in for a request that failed to parse; the wrapped handler refuses it."""

  def __init__(self, error: str):
    self.error = error


def _safe(deserializer):
  def deserialize(data: bytes):
    try:
      return deserializer(data)
    except pb_message.DecodeError as e:
      return Undecodable(str(e))
  return deserialize


def _refusing(method: str, behavior):
  def refuse_undecodable(request, context):
    if isinstance(request, Undecodable):
      log.warning("%s from %s: undecodable request: %s", method, context.peer(), request.error)
      context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                    f"request could not be decoded: {request.error}")
    return behavior(request, context)
  return refuse_undecodable


class ServingInterceptor(grpc.ServerInterceptor):
  """Wraps every unary-request method; see the module docstring."""

  def __init__(self, health_pool: concurrent.futures.ThreadPoolExecutor):
    self._health_pool = health_pool

  def intercept_service(self, continuation, handler_call_details):
    handler = continuation(handler_call_details)
    if handler is None or handler.request_streaming:
      return handler                 # reflection: a stream of requests, left as it is
    method = handler_call_details.method
    deserializer = _safe(handler.request_deserializer)
    if handler.response_streaming:
      return grpc.unary_stream_rpc_method_handler(
          _refusing(method, handler.unary_stream), request_deserializer=deserializer,
          response_serializer=handler.response_serializer)
    behavior = _refusing(method, handler.unary_unary)
    if method == HEALTH_CHECK:
      # NOTE: gRPC runs a behavior with this attribute on that pool instead of
      # the server's; Check never blocks, so two threads always keep up.
      behavior.experimental_thread_pool = self._health_pool
    return grpc.unary_unary_rpc_method_handler(
        behavior, request_deserializer=deserializer,
        response_serializer=handler.response_serializer)
