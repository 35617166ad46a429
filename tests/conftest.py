from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import aiohttp
import pytest

from ghl_async import Client
from ghl_async._http.aiohttp_transport import AiohttpTransport
from ghl_async.testing import FakeHighLevel


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


ServerFactory = Callable[..., AbstractAsyncContextManager[FakeHighLevel]]


@pytest.fixture
def server() -> ServerFactory:
    """`async with server(conversations=..., ...) as fake:` a started FakeHighLevel."""

    @asynccontextmanager
    async def start(**kwargs: Any) -> AsyncIterator[FakeHighLevel]:
        async with FakeHighLevel(**kwargs) as fake:
            yield fake

    return start


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


@pytest.fixture
def ghl_log() -> AsyncIterator[LogCapture] | Any:
    handler = LogCapture()
    logger = logging.getLogger("ghl_async")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


from tests.support.redis_server import redis_server  # noqa: E402, F401
