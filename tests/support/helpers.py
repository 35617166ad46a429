"""Plain test helpers (no fixtures): a client's aiohttp session and pool, waiting, logs.

The fixtures that use them (``server``, ``ghl_log``) are in ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import aiohttp

from ghl_async import Client
from ghl_async._http.aiohttp_transport import AiohttpTransport
from ghl_async.testing import FakeHighLevel

#: The ``server`` fixture: ``async with server(conversations=..., ...) as fake``.
ServerFactory = Callable[..., AbstractAsyncContextManager[FakeHighLevel]]


def aiohttp_session(client: Client) -> aiohttp.ClientSession | None:
    """The session of the client's aiohttp transport (``None`` while it has none)."""
    transport = client._engine.transport
    assert isinstance(transport, AiohttpTransport)
    return transport._session


def open_session(client: Client) -> aiohttp.ClientSession:
    """The session of the client's aiohttp transport, which must have one."""
    session = aiohttp_session(client)
    assert session is not None, "the client has no session"
    return session


def open_connections(client: Client) -> int:
    """Connections the client's pool has handed out and not taken back."""
    session = open_session(client)
    connector = session.connector
    assert connector is not None
    return len(connector._acquired)


async def settle(predicate: Callable[[], bool], timeout: float = 1.0) -> float:
    """Wait until predicate() holds; return how long it took (fails after timeout)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.005)
    return loop.time() - start


class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)
