"""pytest plugin: the ``fake_highlevel`` fixture (registered through an entry point)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ._server import FakeHighLevel


@pytest.fixture
async def fake_highlevel() -> AsyncIterator[FakeHighLevel]:
    """A started :class:`FakeHighLevel` with 20 seeded conversations (seed 0).

    Use it from a test marked ``@pytest.mark.anyio`` (asyncio backend).
    """
    async with FakeHighLevel(conversations=20, seed=0) as fake:
        yield fake
