"""A flood of maximum-size requests against a pagedjax server, from its own process
(so the process that measures health-check latency is not slowed by it).

    python -m tests.serving.flood TARGET API_KEY MAX_OK_CHARS SECONDS THREADS

Prints "flooding" once every thread has its channel, then one JSON object of
outcome counts (status code names) when done.
"""
from __future__ import annotations

import collections
import concurrent.futures
import json
import sys
import threading
import time

import grpc

from serving.client import PagedJaxClient

HUGE = "x" * 3_900_000                    # the 3.9 MB prompt


def flood(target: str, key: str, max_ok: str, until: float, i: int, ready, counts) -> None:
  with PagedJaxClient(target, api_key=key, timeout=30) as c:
    calls = [lambda: c.tokenize(max_ok), lambda: c.tokenize(HUGE),
             lambda: c.generate(max_ok, max_tokens=1), lambda: c.generate(HUGE, max_tokens=1)]
    ready.wait()
    while time.monotonic() < until:
      try:
        calls[i % len(calls)]()
        counts[i]["OK"] += 1
      except grpc.RpcError as e:
        counts[i][e.code().name] += 1


def main(argv: list[str]) -> int:
  target, key, max_ok_chars, seconds, threads = argv
  max_ok = ("hello world " * (int(max_ok_chars) // 12 + 1))[:int(max_ok_chars)]
  n = int(threads)
  ready = threading.Barrier(n + 1)
  counts = [collections.Counter() for _ in range(n)]
  until = time.monotonic() + float(seconds)
  with concurrent.futures.ThreadPoolExecutor(n) as pool:
    futures = [pool.submit(flood, target, key, max_ok, until, i, ready, counts)
               for i in range(n)]
    ready.wait()
    print("flooding", flush=True)
    for f in futures:
      f.result()
  print(json.dumps(sum(counts, collections.Counter())), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
