"""The ``fake_highlevel`` fixture, run by pytest itself (pytester) as a user's suite would."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest_plugins = ["pytester"]

# The user's suite: warnings are errors there too, so a deprecation in the fixture fails.
_INI = """
[pytest]
filterwarnings = error
asyncio_default_fixture_loop_scope = function
"""

_CLIENT_TEST = """
from ghl_async import Client, MessagesPage


async def fetch_one(fake):
    async with Client(fake.token, base_url=fake.url) as client:
        page = await client.get_messages(fake.conversation_ids[0], limit=1)
    assert isinstance(page, MessagesPage)
    assert fake.stats.by_route["messages"] == 1
"""


def run(pytester: pytest.Pytester, test: str, *args: str) -> pytest.RunResult:
    pytester.makeini(_INI)
    pytester.makepyfile(test_user=textwrap.dedent(test))
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args)


def test_the_fixture_serves_a_test_run_by_anyio(pytester: pytest.Pytester) -> None:
    test = (
        _CLIENT_TEST
        + """
import pytest


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_anyio(fake_highlevel):
    await fetch_one(fake_highlevel)
"""
    )
    run(pytester, test).assert_outcomes(passed=1)


def test_the_fixture_serves_pytest_asyncio_in_its_default_strict_mode(
    pytester: pytest.Pytester,
) -> None:
    pytest.importorskip("pytest_asyncio")
    test = (
        _CLIENT_TEST
        + """
import pytest


@pytest.mark.asyncio
async def test_strict(fake_highlevel):
    await fetch_one(fake_highlevel)
"""
    )
    result = run(pytester, test, "-p", "asyncio", "-o", "asyncio_mode=strict")
    result.assert_outcomes(passed=1)


def test_the_fixture_serves_a_plain_synchronous_test(pytester: pytest.Pytester) -> None:
    test = """
import json
import urllib.request


def test_sync(fake_highlevel):
    with urllib.request.urlopen(fake_highlevel.url + "/_fake/stats") as reply:
        stats = json.load(reply)
    assert stats["locationId"] == fake_highlevel.location_id
    assert stats["conversationIds"] == fake_highlevel.conversation_ids
"""
    run(pytester, test).assert_outcomes(passed=1)


def test_the_server_is_imported_only_once_a_test_uses_the_fixture(
    pytester: pytest.Pytester,
) -> None:
    # Test order is file order: the first test runs before any fixture was set up.
    test = """
import sys


def test_first_without_the_fixture():
    assert "ghl_async.testing._server" not in sys.modules
    assert "ghl_async.testing.pytest_plugin" in sys.modules


def test_then_with_it(fake_highlevel):
    assert "ghl_async.testing._server" in sys.modules
"""
    run(pytester, test, "-p", "no:randomly").assert_outcomes(passed=2)


_IMPORTS = """
import sys
import ghl_async
before = set(sys.modules)
import ghl_async.testing.pytest_plugin
import pytest  # the plugin's own dependency, loaded by pytest anyway
added = set(sys.modules) - before
ours = sorted(m for m in added if m.startswith(("ghl_async", "aiohttp", "msgspec", "anyio")))
print(" ".join(ours))
"""


def test_importing_the_plugin_adds_nothing_to_what_ghl_async_itself_imports() -> None:
    # aiohttp then costs the plugin nothing beyond `import ghl_async`: it is loaded only
    # if the package's own __init__ loads it (today via Client), never by the plugin.
    result = subprocess.run(
        [sys.executable, "-c", _IMPORTS], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["ghl_async.testing", "ghl_async.testing.pytest_plugin"]


def test_the_testing_package_resolves_its_names_on_first_use() -> None:
    import ghl_async.testing as testing

    assert set(testing.__all__) <= set(dir(testing))
    assert testing.FakeHighLevel.__name__ == "FakeHighLevel"
    assert callable(testing.make_conversations)
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        _ = testing.Nothing


_PLUGIN_COST = """
import sys
import ghl_async.testing.pytest_plugin
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("aiohttp", "anyio", "msgspec"))
print(" ".join(heavy))
"""


def test_the_plugin_loads_no_http_stack_in_a_session_that_does_not_use_it() -> None:
    # pytest imports the plugin, and so the ghl_async package, in every session of every
    # project where ghl_async is installed: neither may pull in aiohttp, anyio or msgspec.
    result = subprocess.run(
        [sys.executable, "-c", _PLUGIN_COST], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == []


def test_the_package_resolves_every_public_name_on_first_use() -> None:
    import ghl_async

    for name in ghl_async.__all__:
        assert getattr(ghl_async, name) is not None, name
    assert set(ghl_async.__all__) <= set(dir(ghl_async))
    assert ghl_async.errors.GHLError is ghl_async.GHLError
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        _ = ghl_async.Nothing
