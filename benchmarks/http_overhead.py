"""Per-token cost of the transports: the HTTP (aiohttp, SSE) API vs gRPC, same engine loop.

Usage: PYTHONPATH=. python -m benchmarks.http_overhead [--streams 64] [--requests 128]
           [--output-len 256] [--step-ms 10]

The server runs in this process on a paced engine (`PacedEngine`: each step takes
`--step-ms` and gives every running request one token, no model), so what is
left to measure is the server's transport: its CPU time per streamed token
(process CPU time over the run / tokens, engine loop included, the same for
both), and the client-side ITL over the step time. The client is `pagedjax
bench serve` in a subprocess (its CPU is not counted). The prompts are tokenized
by SmolLM2's tokenizer (gRPC takes text). Prints one JSON line per transport.

NOTE: CPU figures are indicative only: on a shared 2-core machine the client,
server and other work compete for the cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

from engine.context_limit import ContextLimit
from engine.engine import EngineStats
from engine.outputs import FinishReason, TokenDelta, Usage
from serving.server import InferenceServer, ServerConfig


@dataclasses.dataclass(frozen=True)
class _Config:
  max_num_seqs: int
  model: str | None = None


class PacedEngine:
  """The `LLMEngine` surface the engine loop uses; one token per request per step."""

  def __init__(self, tokenizer, step_s: float, max_num_seqs: int):
    self.tokenizer = tokenizer
    self.context_limit = ContextLimit(4096, "the stand-in's")
    self.max_model_len = self.context_limit.tokens
    self.config = _Config(max_num_seqs)
    self._step_s = step_s
    self._requests: dict[str, list] = {}   # id -> [prompt_len, max_tokens, produced]
    self._aborts: list[str] = []
    self._tokens = 0

  def add_request(self, request_id, sampling_params, prompt_token_ids, cache_salt=None,
                  priority=0):
    self._requests[request_id] = [len(prompt_token_ids), sampling_params.max_tokens, 0]

  def abort(self, request_id):
    self._aborts.append(request_id)

  def has_unfinished_requests(self) -> bool:
    return bool(self._requests)

  def stats(self) -> EngineStats:
    return EngineStats(num_running=len(self._requests), num_waiting=0, kv_blocks_used=0,
                       kv_blocks_total=0, prefix_query_tokens_total=0,
                       prefix_hit_tokens_total=0, num_preemptions_total=0,
                       prompt_tokens_total=0, prefill_tokens_computed_total=0,
                       generation_tokens_total=self._tokens, num_compilations=0,
                       compile_seconds=0.0)

  def step(self) -> list[TokenDelta]:
    time.sleep(self._step_s)
    deltas = []
    for rid in self._aborts:
      if self._requests.pop(rid, None) is not None:
        deltas.append(TokenDelta(rid, [], "", finished=True, finish_reason=FinishReason.ABORT,
                                 usage=Usage()))
    self._aborts.clear()
    for rid, state in list(self._requests.items()):
      state[2] += 1
      self._tokens += 1
      done = state[2] >= state[1]
      deltas.append(TokenDelta(rid, [42], " x", finished=done,
                               finish_reason=FinishReason.LENGTH if done else None,
                               usage=Usage(state[0], 0, state[2]) if done else None))
      if done:
        del self._requests[rid]
    return deltas


def _bench(target: list[str], args, out: str) -> dict:
  cmd = [sys.executable, "-m", "serving.cli", "bench", "serve", *target, "--workload", "fixed",
         "--input-len", "16", "--output-len", str(args.output_len),
         "--concurrency", str(args.streams), "--num-requests", str(args.requests), "--out", out]
  subprocess.run(cmd, check=True, capture_output=True, text=True)
  with open(os.path.join(out, "results.json")) as f:
    return json.load(f)["summary"]


def main(argv: list[str] | None = None) -> list[dict]:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--streams", type=int, default=64)
  ap.add_argument("--requests", type=int, default=128)
  ap.add_argument("--output-len", type=int, default=256)
  ap.add_argument("--step-ms", type=float, default=10.0)
  args = ap.parse_args(argv)
  from models import load_model
  tokenizer = load_model().tokenizer
  engine = PacedEngine(tokenizer, args.step_ms / 1e3, args.streams)
  server = InferenceServer(engine, ServerConfig(host="127.0.0.1", port=0, metrics_port=None,
                                                http_port=0, max_waiting=4 * args.requests))
  server.start()
  rows = []
  try:
    with tempfile.TemporaryDirectory() as tmp:
      for name, target in (("http", ["--base-url", f"http://127.0.0.1:{server.http_port}"]),
                           ("grpc", ["--grpc", f"127.0.0.1:{server.port}"])):
        cpu0, tokens0 = time.process_time(), engine.stats().generation_tokens_total
        s = _bench(target, args, os.path.join(tmp, name))
        cpu = time.process_time() - cpu0
        tokens = engine.stats().generation_tokens_total - tokens0
        rows.append({"transport": name, "streams": args.streams, "step_ms": args.step_ms,
                     "tokens": tokens, "server_cpu_us_per_token": 1e6 * cpu / tokens,
                     "output_tok_per_s": s["output_throughput"],
                     "itl_median_ms": s["itl"]["median_ms"], "itl_p99_ms": s["itl"]["p99_ms"],
                     "ttft_median_ms": s["ttft"]["median_ms"], "failed": s["failed"]})
        print(json.dumps(rows[-1]), flush=True)
  finally:
    server.shutdown(grace_s=0)
  return rows


if __name__ == "__main__":
  main()
