"""pytest plugin: the ``fake_highlevel`` fixture (registered through an entry point).

Importing this module imports nothing of the fake server (nor aiohttp): pytest loads it
in every project where ghl_async is installed, so it must cost nothing until a test asks
for the fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ghl_async.testing._server import FakeHighLevel


@pytest.fixture
def fake_highlevel() -> Iterator[FakeHighLevel]:
    """A started :class:`~ghl_async.testing.FakeHighLevel`: 20 seeded conversations (seed 0).

    The server runs on its own thread and event loop, so the fixture is synchronous and
    needs no setting: use it from a test run by anyio (``@pytest.mark.anyio``), by
    pytest-asyncio in its default strict mode (``@pytest.mark.asyncio``) or in auto mode,
    or from a plain test. Reach it with ``Client(fake.token, base_url=fake.url)``.
    """
    from ghl_async.testing._server import FakeHighLevel
    from ghl_async.testing._thread import serve_in_thread

    with serve_in_thread(FakeHighLevel(conversations=20, seed=0)) as fake:
        yield fake
