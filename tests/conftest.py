from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from ghl_async.testing import FakeHighLevel
from tests.support.helpers import LogCapture, ServerFactory
from tests.support.postgres_server import postgres_dsn, postgres_server  # noqa: F401
from tests.support.redis_server import redis_server  # noqa: F401


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def server() -> ServerFactory:
    """`async with server(conversations=..., ...) as fake:` a started FakeHighLevel."""

    @asynccontextmanager
    async def start(**kwargs: Any) -> AsyncIterator[FakeHighLevel]:
        async with FakeHighLevel(**kwargs) as fake:
            yield fake

    return start


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
