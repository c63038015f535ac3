"""The bridge from the engine loop thread to an asyncio handler."""
from __future__ import annotations

import asyncio

from serving.engine_loop import Event


class AsyncEvents:
  """A request's event queue (`Submission.outputs`) read by a coroutine.

  NOTE: the engine loop only ever calls `put` (from its own thread), so this
  stands in for the `queue.Queue` that gRPC handlers block on; `put` hands the
  event to the asyncio loop thread-safely and never blocks the engine loop.
  """

  def __init__(self, loop: asyncio.AbstractEventLoop):
    self._loop = loop
    self._queue: asyncio.Queue[Event] = asyncio.Queue()

  def put(self, event: Event) -> None:
    try:
      self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
    except RuntimeError:  # the HTTP server's loop is closed: nobody waits any more
      pass

  async def get(self) -> Event:
    return await self._queue.get()

  def get_nowait(self) -> Event | None:
    """The next event if one is already here (to batch a burst into one write)."""
    try:
      return self._queue.get_nowait()
    except asyncio.QueueEmpty:
      return None
