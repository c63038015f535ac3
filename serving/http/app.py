"""The aiohttp handlers of the OpenAI-compatible API.

Like the gRPC handlers, they never call the engine: a request is parsed,
tokenized (on a small thread pool), submitted to the `EngineLoop` and then
only read from its event queue. A client that disconnects cancels its handler
(aiohttp's handler cancellation), whose `finally` aborts the request, so its
KV blocks are freed at the engine's next step.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
import time
import uuid
from typing import Callable

import prometheus_client as prom
from aiohttp import web

from engine.context_limit import ContextLimit
from engine.outputs import FinishReason
from serving import auth
from serving.admissions import Admissions, DrainingError
from serving.engine_loop import EngineLoop, Event, QueueFullError, ShuttingDownError, Submission
from serving.http import convert, errors
from serving.http.events import AsyncEvents
from serving.http.protocol import ParsedRequest, parse_chat, parse_completion
from serving.http.responses import Shaper, token_text_fn
from serving.metrics import ServingMetrics
from serving.tokenize_pool import BoundedPool, PoolFullError

log = logging.getLogger(__name__)

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no"}
# Refusals counted in pagedjax_requests_rejected{code}, by HTTP status (gRPC's code names).
_REJECT_CODES = {400: "invalid_argument", 401: "unauthenticated", 413: "invalid_argument",
                 429: "resource_exhausted"}


@dataclasses.dataclass(frozen=True)
class ApiConfig:
  """What the API serves and whom: `api_keys` None is no authentication; a client's
  `cache_salt` follows the `client_cache_salt` policy (serving/auth.py)."""
  model_name: str
  limit: ContextLimit
  max_prompt_bytes: int
  api_keys: auth.ApiKeys | None = None
  client_cache_salt: str = "allow"


class OpenAIApi:
  """The API's state: serving/draining flags and the in-flight count (thread-safe)."""

  def __init__(self, loop: EngineLoop, admissions: Admissions, tokenizer, config: ApiConfig,
               metrics: ServingMetrics, tokenize_pool: BoundedPool):
    self._loop = loop
    self._admissions = admissions
    self._tokenizer = tokenizer
    self._config = config
    self._metrics = metrics
    self._tokenize_pool = tokenize_pool
    self._token_text = token_text_fn(tokenizer)
    self._lock = threading.Lock()
    self._serving = False

  # --- state, from any thread -------------------------------------------------------

  def set_serving(self, serving: bool) -> None:
    with self._lock:
      self._serving = serving

  # --- the application ------------------------------------------------------------

  def application(self, max_body_bytes: int) -> web.Application:
    app = web.Application(middlewares=[_error_middleware], client_max_size=max_body_bytes)
    app.router.add_post("/v1/completions", self._completions)
    app.router.add_post("/v1/chat/completions", self._chat)
    app.router.add_get("/v1/models", self._models)
    app.router.add_get("/health", self._health)
    app.router.add_get("/metrics", self._metrics_text)
    return app

  async def _health(self, request: web.Request) -> web.Response:
    with self._lock:
      ok = self._serving and not self._admissions.draining
    return web.json_response({"status": "ok" if ok else "not_serving"},
                             status=200 if ok else 503)

  async def _metrics_text(self, request: web.Request) -> web.Response:
    return web.Response(body=prom.generate_latest(self._metrics.registry),
                        headers={"Content-Type": prom.CONTENT_TYPE_LATEST})

  async def _models(self, request: web.Request) -> web.Response:
    self._tenant(request)
    card = {"id": self._config.model_name, "object": "model", "created": 0,
            "owned_by": "pagedjax", "max_model_len": self._config.limit.tokens}
    return web.json_response({"object": "list", "data": [card]})

  async def _completions(self, request: web.Request) -> web.StreamResponse:
    return await self._generate(request, parse_completion, "cmpl")

  async def _chat(self, request: web.Request) -> web.StreamResponse:
    return await self._generate(request, parse_chat, "chatcmpl")

  # --- one generation -------------------------------------------------------------

  async def _generate(self, request: web.Request, parse: Callable, prefix: str
                      ) -> web.StreamResponse:
    received_at = time.monotonic()
    try:
      tenant = self._tenant(request)
      req = parse(await _json_body(request))
      if req.model is not None and req.model != self._config.model_name:
        raise errors.model_not_found(req.model, self._config.model_name)
      sub = await self._submission(req, tenant, f"{prefix}-{uuid.uuid4().hex}", received_at)
    except errors.ApiError as e:
      if e.status in _REJECT_CODES:
        self._metrics.rejected.labels(code=_REJECT_CODES[e.status]).inc()
      raise
    done = False
    try:
      first = _checked(await sub.outputs.get())
      shaper = Shaper(req, self._config.model_name, sub.request_id, int(time.time()),
                      self._token_text)
      if req.stream:
        response = await _stream(request, sub, shaper, first)
      else:
        response = await _unary(sub, shaper, first)
      done = True
      return response
    finally:
      if not done:  # NOTE: disconnect (cancelled), error or refusal: free the blocks now
        self._loop.abort(sub.request_id)
      self._admissions.release()

  def _tenant(self, request: web.Request) -> str | None:
    if self._config.api_keys is None:
      return None
    try:
      return self._config.api_keys.tenant_of(request.headers.get("Authorization"))
    except auth.UnauthenticatedError:
      raise errors.unauthorized() from None

  async def _submission(self, req: ParsedRequest, tenant: str | None, request_id: str,
                        received_at: float) -> Submission:
    cfg = self._config
    convert.check_bounds(req, cfg.max_prompt_bytes)
    salt = convert.cache_salt(tenant, req, cfg.client_cache_salt)
    try:     # NOTE: token ids need no tokenizer: they never queue for its threads
      ids = (convert.prompt_token_ids(self._tokenizer, req, cfg.limit)
             if req.prompt_ids is not None else await asyncio.wrap_future(
                 self._tokenize_pool.submit(convert.prompt_token_ids, self._tokenizer, req,
                                            cfg.limit)))
    except PoolFullError as e:
      raise errors.queue_full(str(e)) from None
    params = convert.sampling_params(req, len(ids), cfg.limit.tokens)
    sub = Submission(request_id, ids, params, cache_salt=salt,
                     priority=req.priority, received_at=received_at,
                     outputs=AsyncEvents(asyncio.get_running_loop()))
    try:
      self._admissions.submit(sub)
    except QueueFullError as e:
      raise errors.queue_full(str(e)) from None
    except (DrainingError, ShuttingDownError) as e:
      raise errors.unavailable(str(e)) from None
    return sub


def _checked(ev: Event) -> Event:
  """`ev` if it is an ordinary delta; the API error it stands for otherwise."""
  if ev.reject_kind is not None:
    raise errors.from_reject(ev.reject_kind, ev.reject_message)
  d = ev.delta
  if d.finished and d.finish_reason == FinishReason.ERROR:
    # NOTE: refused while scheduling: the prompt needs more KV blocks than the cache has.
    raise errors.kv_cache_too_small(f"request failed: {d.error or 'engine error'}")
  if d.finished and d.finish_reason == FinishReason.ABORT:
    raise errors.unavailable("the request was aborted: the server is shutting down")
  return ev


async def _unary(sub: Submission, shaper: Shaper, first: Event) -> web.Response:
  deltas = [first.delta]
  while not deltas[-1].finished:
    deltas.append(_checked(await sub.outputs.get()).delta)
  return _json_response(shaper.whole(deltas))


async def _stream(request: web.Request, sub: Submission, shaper: Shaper, first: Event
                  ) -> web.StreamResponse:
  """Server-sent events: one chunk per delta, then usage (if asked) and [DONE]."""
  resp = web.StreamResponse(headers=_SSE_HEADERS)
  await resp.prepare(request)
  head = shaper.role_chunk()
  ev = first
  out = ([head] if head else []) + [shaper.delta_chunk(ev.delta)]
  while not ev.delta.finished:
    nxt = sub.outputs.get_nowait()   # NOTE: a backlog goes out in one write
    if nxt is None:
      await resp.write(_sse(out))
      out = []
      nxt = await sub.outputs.get()
    try:
      ev = _checked(nxt)
    except errors.ApiError as e:   # NOTE: headers are sent: the error goes in the stream
      await resp.write(_sse(out + [e.body()]) + b"data: [DONE]\n\n")
      return resp
    out.append(shaper.delta_chunk(ev.delta))
  tail = shaper.usage_chunk(ev.delta.usage)
  await resp.write(_sse(out + ([tail] if tail else [])) + b"data: [DONE]\n\n")
  await resp.write_eof()
  return resp


def _sse(chunks: list[dict]) -> bytes:
  return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks)


def _json_response(body: dict, status: int = 200) -> web.Response:
  return web.Response(body=json.dumps(body).encode(), status=status,
                      content_type="application/json")


async def _json_body(request: web.Request):
  raw = await request.read()
  try:
    return json.loads(raw)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise errors.bad_request(f"the request body is not valid JSON: {e}") from None


@web.middleware
async def _error_middleware(request: web.Request, handler):
  """Every refusal in OpenAI's error shape, aiohttp's own (404, 405, 413) included."""
  try:
    return await handler(request)
  except errors.ApiError as e:
    return web.Response(body=e.json_bytes(), status=e.status, content_type="application/json")
  except web.HTTPException as e:
    if e.status < 400:
      raise
    err = errors.from_http_status(e.status, e.reason)
    return web.Response(body=err.json_bytes(), status=e.status,
                        content_type="application/json")
  except (asyncio.CancelledError, ConnectionResetError):
    raise
  except Exception:
    log.exception("HTTP handler failed: %s %s", request.method, request.path)
    err = errors.ApiError(500, "internal server error", type="server_error",
                          code="internal_error")
    return web.Response(body=err.json_bytes(), status=500, content_type="application/json")
