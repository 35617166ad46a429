"""Test against a real socket, not mocks: an in-process fake HighLevel server.

::

    from ghl_async import Client
    from ghl_async.testing import FakeHighLevel, Faults

    async with FakeHighLevel(conversations=100, seed=7, faults=Faults(reset=0.05)) as fake:
        async with Client(fake.token, base_url=fake.url) as client:
            ...
        assert fake.stats.throttled == 0

With pytest, the ``fake_highlevel`` fixture (installed with the package) gives a started
server with 20 seeded conversations; mark the test ``@pytest.mark.anyio``.
"""

from ._data import make_conversations
from ._server import FakeHighLevel, FakeStats, Faults

__all__ = ["FakeHighLevel", "FakeStats", "Faults", "make_conversations"]
