"""One streamed `/v1/completions` request over aiohttp, timed chunk by chunk.

Only OpenAI's API is used (plus `ignore_eos`, which vLLM and pagedjax accept;
`--no-ignore-eos` leaves it out), so any OpenAI-compatible server can be measured.
"""
from __future__ import annotations

import json
import time

import aiohttp

from serving.bench.result import RequestResult
from serving.bench.workloads import BenchRequest


class OpenAIBackend:
  """Sends requests to `base_url` (e.g. http://127.0.0.1:8000) on one aiohttp session."""

  def __init__(self, base_url: str, model: str | None, api_key: str | None,
               send_ignore_eos: bool, timeout_s: float):
    self._base = base_url.rstrip("/")
    self.model = model
    self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    self._send_ignore_eos = send_ignore_eos
    self._timeout = aiohttp.ClientTimeout(total=timeout_s)
    self._session: aiohttp.ClientSession | None = None

  async def __aenter__(self) -> "OpenAIBackend":
    # NOTE: no connection limit: the runner bounds concurrency itself.
    self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                          headers=self._headers, timeout=self._timeout)
    if self.model is None:
      self.model = await self._first_model()
    return self

  async def __aexit__(self, *exc) -> None:
    await self._session.close()

  async def _first_model(self) -> str:
    try:
      async with self._session.get(f"{self._base}/v1/models") as resp:
        body = await resp.text()
    except aiohttp.ClientError as e:
      raise RuntimeError(f"GET {self._base}/v1/models: {e}") from None
    if resp.status != 200:
      raise RuntimeError(f"GET /v1/models: HTTP {resp.status}: {body[:300]}")
    data = json.loads(body).get("data") or []
    if not data:
      raise RuntimeError("GET /v1/models lists no model; pass --model")
    return data[0]["id"]

  def _payload(self, r: BenchRequest) -> dict:
    body = {"model": self.model, "prompt": list(r.prompt_ids), "max_tokens": r.max_tokens,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    if self._send_ignore_eos and r.ignore_eos:
      body["ignore_eos"] = True
    return body

  async def send(self, r: BenchRequest) -> RequestResult:
    out = RequestResult(r.request_id, start=time.perf_counter())
    try:
      async with self._session.post(f"{self._base}/v1/completions",
                                    json=self._payload(r)) as resp:
        if resp.status != 200:
          out.error = f"HTTP {resp.status}: {(await resp.text())[:300]}"
        else:
          await _read_stream(resp, out)
    except (aiohttp.ClientError, TimeoutError) as e:
      out.error = f"{type(e).__name__}: {e}"
    out.end = time.perf_counter()
    if out.error is None and out.output_tokens is None:
      out.output_tokens = len(out.chunk_times)
    return out


async def _read_stream(resp: aiohttp.ClientResponse, out: RequestResult) -> None:
  """Reads server-sent events up to `[DONE]`: a chunk time per event with choices."""
  async for line in resp.content:
    if not line.startswith(b"data:"):
      continue
    data = line[5:].strip()
    if data == b"[DONE]":
      return
    now = time.perf_counter()
    event = json.loads(data)
    if "error" in event:
      out.error = f"stream error: {event['error'].get('message', event['error'])}"
      return
    if event.get("choices"):
      out.chunk_times.append(now)
    usage = event.get("usage")
    if usage:
      out.prompt_tokens = usage.get("prompt_tokens")
      out.output_tokens = usage.get("completion_tokens")
  out.error = "the stream ended without [DONE]"
