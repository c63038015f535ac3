"""Prometheus metrics of one server, in a registry of its own.

NOTE: every metric lives in this object's `CollectorRegistry`, never the
global default one, so two servers (or tests) can share a process.
"""
from __future__ import annotations

import threading

import prometheus_client as prom

# Latency buckets (seconds): CPU test runs are slow, GPU serving is fast.
_TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
                 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.05, 0.075,
                0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0)
_E2E_BUCKETS = (0.1, 0.3, 0.5, 1.0, 1.5, 2.0, 5.0, 10.0, 20.0, 40.0, 60.0,
                120.0, 240.0, 480.0)

# Engine totals (EngineStats field -> counter name, help).
_COUNTERS = {
    "prefix_query_tokens_total": (
        "pagedjax_prefix_cache_query_tokens", "Prompt tokens looked up in the prefix cache"),
    "prefix_hit_tokens_total": (
        "pagedjax_prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache"),
    "num_preemptions_total": ("pagedjax_preemptions", "Requests preempted (KV blocks reclaimed)"),
    "generation_tokens_total": ("pagedjax_generation_tokens", "Tokens generated"),
    "prompt_tokens_total": ("pagedjax_prompt_tokens", "Prompt tokens processed"),
    "num_compilations": (
        "pagedjax_compilations", "Engine steps compiled (warm-up included; one after warm-up "
        "is a bug, logged as a warning)"),
    "compile_seconds": ("pagedjax_compile_seconds", "Seconds spent compiling engine steps"),
    "spec_proposed_tokens_total": (
        "pagedjax_spec_proposed_tokens", "Draft tokens verified (speculative decoding)"),
    "spec_accepted_tokens_total": (
        "pagedjax_spec_accepted_tokens", "Draft tokens accepted (speculative decoding)"),
}
# EngineStats field -> gauge name, help.
_GAUGES = {
    "num_running": ("pagedjax_requests_running", "Requests holding KV blocks"),
    "num_waiting": ("pagedjax_requests_waiting", "Requests waiting to be scheduled"),
    "kv_blocks_used": ("pagedjax_kv_blocks_used", "KV-cache blocks in use"),
    "kv_blocks_total": ("pagedjax_kv_blocks_total", "KV-cache blocks in the pool"),
}


class ServingMetrics:
  """The server's metrics; updated by the engine loop thread only."""

  def __init__(self):
    self.registry = prom.CollectorRegistry(auto_describe=True)
    r = self.registry
    self.ttft = prom.Histogram(
        "pagedjax_time_to_first_token_seconds",
        "Time from receiving a request to its first token", buckets=_TTFT_BUCKETS,
        registry=r)
    self.itl = prom.Histogram(
        "pagedjax_inter_token_latency_seconds",
        "Time between consecutive tokens of a request", buckets=_ITL_BUCKETS,
        registry=r)
    self.e2e = prom.Histogram(
        "pagedjax_e2e_request_latency_seconds",
        "Time from receiving a request to its last token", buckets=_E2E_BUCKETS,
        registry=r)
    self.finished = prom.Counter(
        "pagedjax_requests_finished", "Finished requests by finish reason",
        ["finish_reason"], registry=r)
    self.rejected = prom.Counter(
        "pagedjax_requests_rejected", "Requests rejected before running, by status",
        ["code"], registry=r)
    self._gauges = {k: prom.Gauge(n, h, registry=r) for k, (n, h) in _GAUGES.items()}
    self._counters = {k: prom.Counter(n, h, registry=r) for k, (n, h) in _COUNTERS.items()}
    self._last_totals = {k: 0 for k in _COUNTERS}
    self._http: tuple | None = None
    self._lock = threading.Lock()

  def observe_stats(self, stats) -> None:
    """Copies an `EngineStats` snapshot into the gauges and counters."""
    for field, gauge in self._gauges.items():
      gauge.set(getattr(stats, field))
    for field, counter in self._counters.items():
      total = getattr(stats, field)
      # NOTE: engine totals only grow; counters advance by the difference.
      delta = total - self._last_totals[field]
      if delta > 0:
        counter.inc(delta)
        self._last_totals[field] = total

  def start_http(self, port: int, addr: str = "0.0.0.0") -> int:
    """Serves /metrics on `port` (0 = any free port); returns the bound port."""
    with self._lock:
      if self._http is not None:
        raise RuntimeError("metrics endpoint already started")
      server, thread = prom.start_http_server(port, addr=addr, registry=self.registry)
      self._http = (server, thread)
      return server.server_address[1]

  def stop_http(self) -> None:
    with self._lock:
      if self._http is not None:
        server, thread = self._http
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        self._http = None

  def render(self) -> str:
    """The metrics in Prometheus text format (what /metrics serves)."""
    return prom.generate_latest(self.registry).decode()
