"""Test against a real socket, not mocks: an in-process fake HighLevel server.

::

    from ghl_async import Client
    from ghl_async.testing import FakeHighLevel, Faults

    async with FakeHighLevel(conversations=100, seed=7, faults=Faults(reset=0.05)) as fake:
        async with Client(fake.token, base_url=fake.url) as client:
            ...
        assert fake.stats.throttled == 0

An agency's many locations, each with its own budget, on one server:
:class:`FakeAgency` (``async with FakeAgency(locations=20) as agency``), with the OAuth
routes that mint location tokens.

With pytest, the ``fake_highlevel`` fixture (installed with the package) gives a started
server with 20 seeded conversations, under anyio, pytest-asyncio (strict or auto) or in a
plain test alike.

The names below are imported on first use, so the pytest plugin, which imports this
package in every test session, loads no server code until a test needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ghl_async.testing._agency import AgencyStats, FakeAgency, FakeLocationInfo
    from ghl_async.testing._data import make_conversations
    from ghl_async.testing._server import FakeHighLevel, FakeStats, Faults

__all__ = [
    "AgencyStats",
    "FakeAgency",
    "FakeHighLevel",
    "FakeLocationInfo",
    "FakeStats",
    "Faults",
    "make_conversations",
]

_HOMES = {
    "AgencyStats": "._agency",
    "FakeAgency": "._agency",
    "FakeLocationInfo": "._agency",
    "FakeHighLevel": "._server",
    "FakeStats": "._server",
    "Faults": "._server",
    "make_conversations": "._data",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # once found, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
