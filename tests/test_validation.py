"""Bad input is refused before the network, with a clear error."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ghl_async import Client, RateLimit
from ghl_async._validation import check_int
from ghl_async.testing import FakeHighLevel
from tests.support.helpers import ServerFactory

pytestmark = pytest.mark.anyio

BAD_IDS = [
    "../x",
    "a/b",
    "a?b",
    "a b",
    " ab",
    "ab\n",
    "a\x00b",
    "a#b",
    "a%2Fb",
    "",
    "x" * 5000,
    "é",
]


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_unsafe_ids_never_reach_the_server(server: ServerFactory, bad: str) -> None:
    async with server(conversations=1) as fake:
        conversation = fake.conversation_ids[0]
        async with Client(fake.token, base_url=fake.url) as client:
            with pytest.raises(ValueError, match="not a HighLevel id"):
                await client.get_messages(bad)
            with pytest.raises(ValueError, match="not a HighLevel id"):
                await client.get_messages(conversation, last_message_id=bad)
            with pytest.raises(ValueError, match="not a HighLevel id"):
                client.iter_pages(bad)
            with pytest.raises(ValueError, match="not a HighLevel id"):
                async for _ in client.iter_messages(conversation, last_message_id=bad):
                    pass
        assert fake.stats.requests == 0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"limit": 0}, ValueError),
        ({"limit": 101}, ValueError),
        ({"limit": -5}, ValueError),
        ({"limit": "20"}, TypeError),
        ({"limit": True}, TypeError),
        ({"limit": 2.0}, TypeError),
        ({"types": ["TYPE_NOPE"]}, ValueError),
        ({"types": "TYPE_SMS,TYPE_NOPE"}, ValueError),
        ({"types": []}, ValueError),
        ({"types": [3]}, TypeError),
    ],
)
async def test_bad_page_arguments_are_refused_first(
    server: ServerFactory, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    async with server(conversations=1) as fake:
        async with Client(fake.token, base_url=fake.url) as client:
            with pytest.raises(error):
                await client.get_messages(fake.conversation_ids[0], **kwargs)
        assert fake.stats.requests == 0


@pytest.mark.parametrize("page_size", [0, 101, "100"])
async def test_bad_page_sizes_are_refused_by_the_iterators(
    fake_highlevel: FakeHighLevel, page_size: Any
) -> None:
    async with Client(fake_highlevel.token, base_url=fake_highlevel.url) as client:
        with pytest.raises((ValueError, TypeError)):
            client.iter_pages("abc", page_size=page_size)
        with pytest.raises((ValueError, TypeError)):
            client.fan_out(["abc"], page_size=page_size)
    assert fake_highlevel.stats.requests == 0


def test_a_comma_string_of_types_is_accepted() -> None:
    from ghl_async._validation import check_types

    assert check_types("TYPE_SMS, TYPE_CALL,TYPE_SMS") == "TYPE_SMS,TYPE_CALL"
    assert check_types(None) is None


@pytest.mark.parametrize(
    ("token", "error"),
    [
        ("", ValueError),
        ("   ", ValueError),
        ("abc\r\nX-Evil: 1", ValueError),
        (None, TypeError),
        (123, TypeError),
    ],
)
def test_bad_tokens_are_refused(token: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        Client(token)


@pytest.mark.parametrize(
    "url",
    [
        "http://services.leadconnectorhq.com",
        "http://10.0.0.1:8080",
        "ftp://x",
        "not a url",
        "https://h/?q=1",
        "https://user:pw@h",
    ],
)
def test_base_url_must_be_https_off_loopback(url: str) -> None:
    with pytest.raises(ValueError):
        Client("t", base_url=url)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:80", "https://x.test/"]
)
def test_loopback_http_and_any_https_are_fine(url: str) -> None:
    Client("t", base_url=url)


def test_plain_http_elsewhere_needs_allow_insecure() -> None:
    Client("t", base_url="http://10.0.0.1:8080", allow_insecure=True)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": 0},
        {"timeout": "5"},
        {"max_concurrency": 0},
        {"max_concurrency": 1.5},
        {"rate_limit": (100, 10)},
        {"limiter": object()},
        {"session": "s"},
    ],
)
def test_bad_client_options_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        Client("t", **kwargs)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100/10s", RateLimit(100, 10.0)),
        ("25/1s", RateLimit(25, 1.0)),
        ("5/2", RateLimit(5, 2.0)),
        ("7/s", RateLimit(7, 1.0)),
    ],
)
def test_rate_limits_parse_from_text(text: str, expected: RateLimit) -> None:
    assert RateLimit.parse(text) == expected


@pytest.mark.parametrize("text", ["fast", "0/1s", "10/0s", "x/y"])
def test_bad_rate_limit_text_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        RateLimit.parse(text)


@pytest.mark.parametrize(
    ("value", "low", "high", "error", "match"),
    [
        (True, 1, None, TypeError, "n must be an int, not bool"),
        (1.0, 1, None, TypeError, "n must be an int, not float"),
        ("3", 1, 10, TypeError, "n must be an int, not str"),
        (0, 1, None, ValueError, "n must be at least 1, got 0"),
        (11, 1, 10, ValueError, "n must be between 1 and 10, got 11"),
        (9, 10, 500, ValueError, "n must be between 10 and 500, got 9"),
    ],
)
def test_check_int_refuses_alike_everywhere(
    value: object, low: int, high: int | None, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        check_int(value, "n", low, high)


@given(st.integers(), st.integers(-5, 5), st.one_of(st.none(), st.integers(-5, 5)))
def test_check_int_accepts_exactly_the_range(value: int, low: int, high: int | None) -> None:
    inside = value >= low and (high is None or value <= high)
    if inside:
        assert check_int(value, "n", low, high) == value
    else:
        with pytest.raises(ValueError):
            check_int(value, "n", low, high)
