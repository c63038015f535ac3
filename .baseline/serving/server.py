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

from serving.engine_loop import EngineLoop
from serving.metrics import ServingMetrics
from serving.proto.pagedjax.v1 import pagedjax_pb2 as pb
from serving.proto.pagedjax.v1 import pagedjax_pb2_grpc as pb_grpc
from serving.servicer import InferenceServicer

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Inference"].full_name  # pagedjax.v1.Inference
_EXTRA_WORKERS = 16  # threads beyond the admitted generations: health, tokenize, rejections


@dataclasses.dataclass(frozen=True)
class ServerConfig:
  """How the server listens and sheds load.

  `port`/`metrics_port` 0 pick a free port; `metrics_port` None disables the
  metrics endpoint. `max_waiting` bounds requests not yet running.
  """
  host: str = "0.0.0.0"
  port: int = 50051
  metrics_port: int | None = 9090
  max_waiting: int = 128
  shutdown_grace_s: float = 30.0

  def __post_init__(self):
    if not 0 <= self.port < 65536:
      raise ValueError(f"port must be in [0, 65535], got {self.port}")
    if self.metrics_port is not None and not 0 <= self.metrics_port < 65536:
      raise ValueError(f"metrics_port must be in [0, 65535], got {self.metrics_port}")
    if self.max_waiting < 1:
      raise ValueError(f"max_waiting must be >= 1, got {self.max_waiting}")
    if self.shutdown_grace_s < 0:
      raise ValueError(f"shutdown_grace_s must be >= 0, got {self.shutdown_grace_s}")


class InferenceServer:
  """Serves one engine over gRPC until `shutdown()`."""

  def __init__(self, engine, config: ServerConfig,
               force_stop: threading.Event | None = None):
    self.config = config
    self.metrics = ServingMetrics()
    self._loop = EngineLoop(engine, self.metrics, config.max_waiting)
    self._servicer = InferenceServicer(self._loop, engine.tokenizer,
                                       engine.max_model_len, self.metrics)
    self._health = health.HealthServicer()
    # NOTE: each admitted generation holds a worker thread while it streams;
    # admitted ones are bounded by running (max_num_seqs) + max_waiting.
    max_seqs = getattr(getattr(engine, "config", None), "max_num_seqs", 64)
    workers = max_seqs + config.max_waiting + _EXTRA_WORKERS
    self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="grpc")
    self._server = grpc.server(self._pool, maximum_concurrent_rpcs=workers)
    pb_grpc.add_InferenceServicer_to_server(self._servicer, self._server)
    health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
    self.port: int | None = None
    self.metrics_port: int | None = None
    self._force = force_stop or threading.Event()   # set: cut the drain short
    self._stopped = threading.Event()

  def start(self) -> None:
    """Binds the ports, starts the engine loop and marks the server SERVING."""
    self.port = self._server.add_insecure_port(f"{self.config.host}:{self.config.port}")
    if self.port == 0:
      raise OSError(f"cannot bind {self.config.host}:{self.config.port}")
    if self.config.metrics_port is not None:
      self.metrics_port = self.metrics.start_http(self.config.metrics_port, self.config.host)
    self._loop.start()
    self._server.start()
    for name in ("", SERVICE_NAME):
      self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving %s on %s:%d (metrics port %s)", SERVICE_NAME,
             self.config.host, self.port, self.metrics_port)

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
    self._servicer.start_draining()
    deadline = time.monotonic() + grace
    while (self._servicer.num_inflight() and time.monotonic() < deadline
           and not self._force.is_set()):
      time.sleep(0.05)
    left = self._servicer.num_inflight()
    if left:
      log.warning("shutdown: aborting %d requests still in flight", left)
    self._loop.stop()            # aborts what is left; handlers see ABORT
    self._server.stop(grace=2.0).wait()
    self.metrics.stop_http()
    self._pool.shutdown(wait=False, cancel_futures=True)
    self._stopped.set()

  def wait_for_termination(self, timeout: float | None = None) -> bool:
    return self._stopped.wait(timeout)
