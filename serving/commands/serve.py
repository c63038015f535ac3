"""`pagedjax serve`: the gRPC inference server (plus a Prometheus endpoint)."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time

from serving.auth import SALT_POLICIES
from serving.engine_flags import add_engine_args, engine_config_from_args

NAME = "serve"
HELP = ("serve a model over gRPC (streaming Generate, Tokenize, health, reflection, metrics) "
        "and, with --http-port, an OpenAI-compatible HTTP API")

log = logging.getLogger("pagedjax.serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--host", default="127.0.0.1",
                      help="address to bind; 127.0.0.1 is this machine only, 0.0.0.0 every "
                           "interface (use it with --api-key-file)")
  parser.add_argument("--api-key-file", default=None,
                      help="file of 'TENANT KEY' lines: every Inference call must then send "
                           "'authorization: Bearer KEY' and gets its tenant's own prefix "
                           "cache (default: no authentication)")
  parser.add_argument("--client-cache-salt", choices=SALT_POLICIES, default="allow",
                      help="what a request's cache_salt does (default %(default)s; with API "
                           "keys it only splits the caller's own tenant cache): allow, "
                           "ignore, or reject")
  parser.add_argument("--port", type=int, default=50051, help="gRPC port (0 = any free port)")
  parser.add_argument("--metrics-port", type=int, default=9090,
                      help="Prometheus /metrics port (0 = any free port, -1 = off)")
  parser.add_argument("--http-port", type=int, default=None,
                      help="port of the OpenAI-compatible HTTP API (/v1/completions, "
                           "/v1/chat/completions, /v1/models, /health, /metrics) on the same "
                           "engine as gRPC; 0 = any free port (default: none, HTTP off)")
  parser.add_argument("--served-model-name", default=None,
                      help="the model's id in the HTTP API (default: the model's file or "
                           "folder name, e.g. SmolLM2-135M-Instruct.Q4_1)")
  parser.add_argument("--max-waiting", type=int, default=128,
                      help="requests allowed to wait for a sequence slot (beyond the "
                           "--max-num-seqs that run); past it: RESOURCE_EXHAUSTED / HTTP 429")
  parser.add_argument("--shutdown-grace", type=float, default=30.0,
                      help="seconds in-flight requests get to finish on SIGTERM/SIGINT")
  add_engine_args(parser, warmup=True)   # NOTE: serve warms up by default


def run(args: argparse.Namespace) -> int:
  """Loads the engine, serves until SIGTERM/SIGINT, then drains and exits 0."""
  from engine import LLMEngine                      # NOTE: lazy: JAX import
  from serving.auth import ApiKeys
  from serving.server import InferenceServer, ServerConfig

  try:
    api_keys = ApiKeys.from_file(args.api_key_file) if args.api_key_file else None
    config = ServerConfig(host=args.host, port=args.port,
                          metrics_port=None if args.metrics_port < 0 else args.metrics_port,
                          max_waiting=args.max_waiting, shutdown_grace_s=args.shutdown_grace,
                          http_port=args.http_port, served_model_name=args.served_model_name,
                          api_keys=api_keys, client_cache_salt=args.client_cache_salt)
    # NOTE: serve warms up by default (--no-warmup: off), after it starts listening (health
    # NOT_SERVING meanwhile), so the engine itself must not warm up in its constructor.
    warmup = args.engine_warmup
    engine_config = engine_config_from_args(args, warmup=False)
  except (OSError, ValueError) as e:
    print(f"pagedjax serve: {e}", file=sys.stderr)
    return 2
  stop, force = threading.Event(), threading.Event()
  _install_signal_handlers(stop, force)
  from serving.progress import model_label, say
  say(f"loading {model_label(engine_config)} ({engine_config.dtype}) ...")
  start = time.perf_counter()
  try:
    engine = LLMEngine(engine_config)
    say(f"model loaded in {time.perf_counter() - start:.1f} s")
  except ValueError as e:   # e.g. --max-model-len more than the KV cache holds
    print(f"pagedjax serve: {e}", file=sys.stderr)
    return 2
  server = InferenceServer(engine, config, force_stop=force, warmup=warmup)
  server.start()
  # NOTE: tests and scripts wait for these lines; keep their format.
  print(f"pagedjax serve: listening on {config.host}:{server.port} "
        f"metrics_port={server.metrics_port} http_port={server.http_port}", flush=True)
  status = _serve_until(stop, server, warmup, len(engine.planned_shapes()))
  log.info("shutting down (grace %.1fs)", config.shutdown_grace_s)
  server.shutdown()
  log.info("stopped")
  return status


def _serve_until(stop: threading.Event, server, warmup: bool, planned: int) -> int:
  """Waits for a signal; 1 if the engine loop dies first (e.g. its warm-up failed)."""
  if warmup:
    print(f"pagedjax serve: warming up {planned} step shapes (health NOT_SERVING until "
          "they are compiled)", file=sys.stderr, flush=True)
  announced = False
  while not stop.wait(0.2):
    if not announced and server.wait_until_serving(0):
      stats = server.ready_stats
      print(f"pagedjax serve: SERVING ({planned} step shapes planned; "
            f"{stats.num_compilations} compilations in {stats.compile_seconds:.1f} s)",
            flush=True)
      announced = True
    if not server.loop_alive():
      log.error("the engine loop stopped; exiting")
      return 1
  return 0


def _install_signal_handlers(stop: threading.Event, force: threading.Event) -> None:
  """First SIGTERM/SIGINT: graceful shutdown; a second one cuts the grace short."""
  def handler(signum, frame):
    if stop.is_set():
      force.set()
    stop.set()
  signal.signal(signal.SIGTERM, handler)
  signal.signal(signal.SIGINT, handler)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="pagedjax serve", description=HELP)
  add_arguments(parser)
  return run(parser.parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())
