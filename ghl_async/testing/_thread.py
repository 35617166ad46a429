"""Serve a FakeHighLevel from its own thread and event loop.

The pytest fixture uses this so it is a plain (sync) fixture: it then works the same in
a test run by anyio, by pytest-asyncio in strict or auto mode, or in a synchronous test,
since the client reaches the fake over a socket and never shares its loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from ghl_async.testing._server import FakeHighLevel

__all__ = ["serve_in_thread"]

_TIMEOUT = 30.0


@contextmanager
def serve_in_thread(fake: FakeHighLevel) -> Iterator[FakeHighLevel]:
    """Start ``fake`` on a new thread's event loop; stop both on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="FakeHighLevel", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(fake.start(), loop).result(_TIMEOUT)
        try:
            yield fake
        finally:
            asyncio.run_coroutine_threadsafe(fake.close(), loop).result(_TIMEOUT)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_TIMEOUT)
        loop.close()
