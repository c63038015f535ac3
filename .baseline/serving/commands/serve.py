"""`pagedjax serve`: the gRPC inference server (plus a Prometheus endpoint)."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from serving.engine_flags import add_engine_args, engine_config_from_args

NAME = "serve"
HELP = "serve a model over gRPC (streaming Generate, Tokenize, health, reflection, metrics)"

log = logging.getLogger("pagedjax.serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--host", default="0.0.0.0", help="address to bind (default 0.0.0.0)")
  parser.add_argument("--port", type=int, default=50051, help="gRPC port (0 = any free port)")
  parser.add_argument("--metrics-port", type=int, default=9090,
                      help="Prometheus /metrics port (0 = any free port, -1 = off)")
  parser.add_argument("--max-waiting", type=int, default=128,
                      help="requests allowed to wait for a slot; past it: RESOURCE_EXHAUSTED")
  parser.add_argument("--shutdown-grace", type=float, default=30.0,
                      help="seconds in-flight requests get to finish on SIGTERM/SIGINT")
  add_engine_args(parser)


def run(args: argparse.Namespace) -> int:
  """Loads the engine, serves until SIGTERM/SIGINT, then drains and exits 0."""
  from engine import LLMEngine                      # NOTE: lazy: JAX import
  from serving.server import InferenceServer, ServerConfig

  try:
    config = ServerConfig(host=args.host, port=args.port,
                          metrics_port=None if args.metrics_port < 0 else args.metrics_port,
                          max_waiting=args.max_waiting, shutdown_grace_s=args.shutdown_grace)
    engine_config = engine_config_from_args(args)
  except ValueError as e:
    print(f"pagedjax serve: {e}", file=sys.stderr)
    return 2
  stop, force = threading.Event(), threading.Event()
  _install_signal_handlers(stop, force)
  engine = LLMEngine(engine_config)
  server = InferenceServer(engine, config, force_stop=force)
  server.start()
  # NOTE: tests and scripts wait for this line; keep its format.
  print(f"pagedjax serve: listening on {config.host}:{server.port} "
        f"metrics_port={server.metrics_port}", flush=True)
  while not stop.wait(0.2):
    pass
  log.info("shutting down (grace %.1fs)", config.shutdown_grace_s)
  server.shutdown()
  log.info("stopped")
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
