"""The gRPC inference server: servicer + health + reflection + metrics + loop.

`InferenceServer` wires an `LLMEngine` (built by the caller) to a gRPC server.
Everything is per instance (registry, loop, thread pool), so several servers
can live in one process.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import threading
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from serving import limits
from serving.auth import SALT_POLICIES, ApiKeys
from serving.admissions import Admissions
from serving.engine_loop import EngineLoop
from serving.http.app import ApiConfig
from serving.http.server import HttpConfig, HttpServer, served_model_name
from serving.interceptors import ServingInterceptor
from serving.metrics import ServingMetrics
from serving.proto.pagedjax.v1 import pagedjax_pb2 as pb
from serving.proto.pagedjax.v1 import pagedjax_pb2_grpc as pb_grpc
from serving.servicer import InferenceServicer
from serving.tokenize_pool import BoundedPool

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Inference"].full_name  # pagedjax.v1.Inference
_EXTRA_WORKERS = 16  # threads beyond the admitted generations: health, tokenize, rejections


@dataclasses.dataclass(frozen=True)
class ServerConfig:
  """How the server listens and sheds load.

  `port`/`metrics_port`/`http_port` 0 pick a free port; `metrics_port` None
  disables the metrics endpoint, `http_port` None the OpenAI-compatible HTTP
  API. `max_waiting` bounds requests waiting for a sequence slot, beyond the
  engine's `max_num_seqs` (gRPC and HTTP together).
  `served_model_name` None: the model's file or folder name. `api_keys`
  (None: no authentication) and `client_cache_salt` are `serving/auth.py`'s;
  tokenization runs on `tokenize_workers` threads with `max_tokenize_queue`
  more requests waiting (past that: RESOURCE_EXHAUSTED).
  """
  host: str = "127.0.0.1"
  port: int = 50051
  metrics_port: int | None = 9090
  max_waiting: int = 128
  shutdown_grace_s: float = 30.0
  http_port: int | None = None
  served_model_name: str | None = None
  api_keys: ApiKeys | None = None
  client_cache_salt: str = "allow"
  tokenize_workers: int = 2
  max_tokenize_queue: int = 128

  def __post_init__(self):
    if not 0 <= self.port < 65536:
      raise ValueError(f"port must be in [0, 65535], got {self.port}")
    if self.metrics_port is not None and not 0 <= self.metrics_port < 65536:
      raise ValueError(f"metrics_port must be in [0, 65535], got {self.metrics_port}")
    if self.http_port is not None and not 0 <= self.http_port < 65536:
      raise ValueError(f"http_port must be in [0, 65535], got {self.http_port}")
    if self.max_waiting < 1:
      raise ValueError(f"max_waiting must be >= 1, got {self.max_waiting}")
    if self.shutdown_grace_s < 0:
      raise ValueError(f"shutdown_grace_s must be >= 0, got {self.shutdown_grace_s}")
    if self.client_cache_salt not in SALT_POLICIES:
      raise ValueError(f"client_cache_salt must be one of {', '.join(SALT_POLICIES)}, "
                       f"got {self.client_cache_salt!r}")
    if self.tokenize_workers < 1 or self.max_tokenize_queue < 0:
      raise ValueError("tokenize_workers must be >= 1 and max_tokenize_queue >= 0")


def _model_name(engine, config: ServerConfig) -> str:
  """The name the HTTP API serves the model under (its /v1/models id)."""
  return config.served_model_name or served_model_name(
      getattr(getattr(engine, "config", None), "model", None))


class InferenceServer:
  """Serves one engine over gRPC until `shutdown()`.

  With `warmup`, `start()` listens at once but health answers NOT_SERVING
  until the engine loop has compiled every step shape; then SERVING.
  """

  def __init__(self, engine, config: ServerConfig,
               force_stop: threading.Event | None = None, warmup: bool = False):
    self.config = config
    self._engine = engine
    self._warmup = warmup
    self.ready_stats = None        # the engine's stats when it started taking requests
    self.metrics = ServingMetrics()
    self._loop = EngineLoop(engine, self.metrics, config.max_waiting)
    self._admissions = Admissions(self._loop)    # NOTE: one for gRPC and HTTP together
    self._tokenize_pool = BoundedPool(config.tokenize_workers, config.max_tokenize_queue)
    self._servicer = InferenceServicer(
        self._loop, self._admissions, engine.tokenizer, engine.context_limit, self.metrics, self._tokenize_pool,
        api_keys=config.api_keys, client_cache_salt=config.client_cache_salt)
    self._health = health.HealthServicer()
    # NOTE: each admitted generation holds a worker thread while it streams
    # (running max_num_seqs + max_waiting of them at most), each tokenization
    # one while it runs or waits; every other RPC is answered at once. So
    # these threads never all block, and health checks have threads of their
    # own: no limit on concurrent RPCs is needed (one would refuse health checks too).
    max_seqs = getattr(getattr(engine, "config", None), "max_num_seqs", 64)
    workers = (max_seqs + config.max_waiting + config.tokenize_workers
               + config.max_tokenize_queue + _EXTRA_WORKERS)
    self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="grpc")
    self._health_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="health")
    self._server = grpc.server(
        self._pool, interceptors=[ServingInterceptor(self._health_pool)],
        options=[("grpc.max_receive_message_length", limits.MAX_MESSAGE_BYTES)])
    pb_grpc.add_InferenceServicer_to_server(self._servicer, self._server)
    health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
    self._http = None if config.http_port is None else HttpServer(
        self._loop, self._admissions, engine.tokenizer, self._http_api(engine), self.metrics,
        HttpConfig(config.host, config.http_port, _model_name(engine, config)),
        self._tokenize_pool)
    self.port: int | None = None
    self.metrics_port: int | None = None
    self.http_port: int | None = None
    self._force = force_stop or threading.Event()   # set: cut the drain short
    self._stopped = threading.Event()
    self._serving = threading.Event()

  def start(self) -> None:
    """Binds the ports and starts serving: health NOT_SERVING while the engine loop warms
    up (if asked), SERVING once it takes requests."""
    self.port = self._server.add_insecure_port(f"{self.config.host}:{self.config.port}")
    if self.port == 0:
      raise OSError(f"cannot bind {self.config.host}:{self.config.port}")
    if self.config.metrics_port is not None:
      self.metrics_port = self.metrics.start_http(self.config.metrics_port, self.config.host)
    if self.config.api_keys is None and not _is_loopback(self.config.host):
      log.warning("serving on %s without authentication: anyone who can reach the port "
                  "can generate, and choose any cache_salt (see --api-key-file)",
                  self.config.host)
    self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
    self._server.start()
    if self._http is not None:
      self.http_port = self._http.start()       # NOTE: /health answers 503 until _ready
    log.info("listening for %s on %s:%d (metrics port %s, HTTP port %s)%s", SERVICE_NAME,
             self.config.host, self.port, self.metrics_port, self.http_port,
             "; warming up" if self._warmup else "")
    self._loop.start(warmup=self._warmup, on_ready=self._ready)

  def _ready(self) -> None:
    """Called by the engine loop (its thread) once it takes requests (after its warm-up)."""
    self.ready_stats = self._engine.stats()
    self._set_health(health_pb2.HealthCheckResponse.SERVING)
    if self._http is not None:
      self._http.api.set_serving(True)
    self._serving.set()
    log.info("serving %s on %s:%d", SERVICE_NAME, self.config.host, self.port)

  def _set_health(self, status) -> None:
    # NOTE: after enter_graceful_shutdown() the servicer ignores set(): a warm-up that
    # ends during shutdown never flips health back to SERVING.
    for name in ("", SERVICE_NAME):
      self._health.set(name, status)

  def wait_until_serving(self, timeout: float | None = None) -> bool:
    """Blocks until health says SERVING (warm); False on timeout."""
    return self._serving.wait(timeout)

  def loop_alive(self) -> bool:
    """False once the engine loop has stopped (shutdown) or crashed (warm-up or a step)."""
    return self._loop.is_alive()

  def _http_api(self, engine) -> ApiConfig:
    """The HTTP API's limits and keys: the same as gRPC's (one key file, one salt rule)."""
    c = self.config
    return ApiConfig(_model_name(engine, c), engine.context_limit,
                     self._servicer.max_prompt_bytes, c.api_keys, c.client_cache_salt)


  def force_stop(self) -> None:
    """Cuts a running `shutdown()` short: remaining requests are aborted."""
    self._force.set()

  def shutdown(self, grace_s: float | None = None) -> None:
    """Graceful stop: NOT_SERVING, refuse new work, drain, then stop.

    In-flight generations get up to `grace_s` (default: the config's) to
    finish; health checks keep answering NOT_SERVING meanwhile. What is left
    after that is aborted.
    """
    if self._stopped.is_set():
      return
    grace = self.config.shutdown_grace_s if grace_s is None else grace_s
    self._health.enter_graceful_shutdown()
    self._admissions.start_draining()
    deadline = time.monotonic() + grace
    while (self._admissions.num_inflight() and time.monotonic() < deadline
           and not self._force.is_set()):
      time.sleep(0.05)
    left = self._admissions.num_inflight()
    if left:
      log.warning("shutdown: aborting %d requests still in flight", left)
    self._loop.stop()            # aborts what is left; handlers see ABORT
    self._server.stop(grace=2.0).wait()
    if self._http is not None:
      self._http.stop()
    self.metrics.stop_http()
    for pool in (self._pool, self._health_pool, self._tokenize_pool):
      pool.shutdown(wait=False, cancel_futures=True)
    self._stopped.set()

  def wait_for_termination(self, timeout: float | None = None) -> bool:
    return self._stopped.wait(timeout)


def _is_loopback(host: str) -> bool:
  return host in ("localhost", "::1", "[::1]") or host.startswith("127.")
