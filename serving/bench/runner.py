"""Drives a backend: requests at their arrival times, or at most C in flight."""
from __future__ import annotations

import asyncio
import dataclasses
import time

from serving.bench.result import RequestResult
from serving.bench.workloads import BenchRequest

_PROBE = BenchRequest("probe", 0.0, (1, 2, 3, 4), 2)


@dataclasses.dataclass(frozen=True)
class RunResult:
  results: list[RequestResult]
  duration_s: float        # from the first send to the last answer


async def run(backend, requests: list[BenchRequest], concurrency: int | None) -> RunResult:
  """Sends `requests` through `backend` (already entered).

  With `concurrency` None each request goes at its `arrival_s`; else arrival
  times are ignored and `concurrency` requests are kept in flight (closed loop).
  A probe request first checks that the server answers (not timed).
  """
  if hasattr(backend, "prepare"):
    await backend.prepare(requests + [_PROBE])
  probe = await backend.send(_PROBE)
  if not probe.ok:
    raise RuntimeError(f"the probe request failed: {probe.error or 'no output'}")
  start = time.perf_counter()
  if concurrency is None:
    tasks = [asyncio.create_task(_at(backend, r, start + r.arrival_s)) for r in requests]
  else:
    gate = asyncio.Semaphore(concurrency)
    tasks = [asyncio.create_task(_gated(backend, r, gate)) for r in requests]
  results = await asyncio.gather(*tasks)
  return RunResult(list(results), time.perf_counter() - start)


async def _at(backend, r: BenchRequest, when: float) -> RequestResult:
  delay = when - time.perf_counter()
  if delay > 0:
    await asyncio.sleep(delay)
  return await backend.send(r)


async def _gated(backend, r: BenchRequest, gate: asyncio.Semaphore) -> RequestResult:
  async with gate:
    return await backend.send(r)
