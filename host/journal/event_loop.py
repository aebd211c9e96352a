"""Blocking calls into an asyncio client (nats-py) from the host's synchronous code.

The collector, merge and views are plain blocking code; nats-py is asyncio only. One event
loop runs in a daemon thread for the life of a connection and `run` waits for a coroutine's
result there, so the client's reconnects and heartbeats keep running between calls.
"""

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any


class LoopThread:
    """An asyncio event loop in a thread of its own."""

    def __init__(self, name: str = "nats"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout_s: float | None = None) -> Any:
        """Run `coro` on the loop and return its result (or raise its exception)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()
