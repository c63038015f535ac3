"""The OpenAI-compatible HTTP server: aiohttp on an asyncio loop of its own thread.

It shares the gRPC server's `EngineLoop` and metrics registry; `InferenceServer`
starts it beside gRPC and drains it on shutdown.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading

from aiohttp import web

from serving.admissions import Admissions
from serving.engine_loop import EngineLoop
from serving.http.app import ApiConfig, OpenAIApi
from serving.tokenize_pool import BoundedPool
from serving.metrics import ServingMetrics

log = logging.getLogger(__name__)

_SHUTDOWN_TIMEOUT_S = 2.0   # handlers left once the engine loop has stopped end at once


@dataclasses.dataclass(frozen=True)
class HttpConfig:
  """Where the HTTP API listens; `port` 0 picks a free one."""
  host: str = "127.0.0.1"
  port: int = 8000
  model_name: str = "pagedjax"
  max_body_bytes: int = 16 << 20   # larger bodies get 413

  def __post_init__(self):
    if not 0 <= self.port < 65536:
      raise ValueError(f"http port must be in [0, 65535], got {self.port}")
    if not self.model_name:
      raise ValueError("model_name must be non-empty")
    if self.max_body_bytes < 1024:
      raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")


def served_model_name(model: str | None) -> str:
  """The default name of a model in /v1/models: its file or folder name."""
  if model is None:
    from models.loader import DEFAULT_GGUF   # NOTE: imports JAX; the server has it loaded
    return os.path.splitext(DEFAULT_GGUF)[0]
  if model.startswith("random:"):
    return model
  base = os.path.basename(os.path.normpath(model))
  return os.path.splitext(base)[0] if base.endswith(".gguf") else base


class HttpServer:
  """Serves the API until `stop()`; `start()` returns the bound port."""

  def __init__(self, loop: EngineLoop, admissions: Admissions, tokenizer, api: ApiConfig,
               metrics: ServingMetrics, config: HttpConfig, tokenize_pool: BoundedPool):
    """`admissions` and `tokenize_pool` are the gRPC server's: one drain and one bound on
    tokenization for both APIs."""
    self.config = config
    self.api = OpenAIApi(loop, admissions, tokenizer, api, metrics, tokenize_pool)
    self.port: int | None = None
    self._aloop: asyncio.AbstractEventLoop | None = None
    self._ready = threading.Event()
    self._error: BaseException | None = None
    self._thread = threading.Thread(target=self._run, name="http-server", daemon=True)

  def start(self) -> int:
    self._thread.start()
    self._ready.wait()
    if self._error is not None:
      raise OSError(f"cannot serve HTTP on {self.config.host}:{self.config.port}: "
                    f"{self._error}") from self._error
    log.info("OpenAI-compatible HTTP API on %s:%d", self.config.host, self.port)
    return self.port

  def stop(self, timeout: float = 10.0) -> None:
    """Stops listening and ends the handlers still open (call after the engine loop)."""
    if self._aloop is not None and self._thread.is_alive():
      self._aloop.call_soon_threadsafe(self._aloop.stop)
      self._thread.join(timeout)

  def _run(self) -> None:
    aloop = asyncio.new_event_loop()
    asyncio.set_event_loop(aloop)
    # NOTE: handler_cancellation: a client that goes away cancels its handler,
    # which aborts its request (see app.py).
    runner = web.AppRunner(self.api.application(self.config.max_body_bytes),
                           handler_cancellation=True, access_log=None,
                           shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
    try:
      aloop.run_until_complete(runner.setup())
      site = web.TCPSite(runner, self.config.host, self.config.port)
      aloop.run_until_complete(site.start())
      self.port = runner.addresses[0][1]
    except BaseException as e:  # bind errors go back to start()
      self._error = e
      self._ready.set()
      aloop.run_until_complete(runner.cleanup())
      aloop.close()
      return
    self._aloop = aloop
    self._ready.set()
    try:
      aloop.run_forever()
    finally:
      aloop.run_until_complete(runner.cleanup())
      aloop.close()
