"""A server that misbehaves on purpose: odd bytes, odd cursors, bodies without end.

Served by a small aiohttp app on a real socket (FakeHighLevel plays by the rules). Each
conversation id names a behaviour; ``ok*`` conversations are healthy, so every test can
check that the others go on.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ghl_async import Client, RetryPolicy, errors
from tests.support.helpers import open_connections

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(max_attempts=3, backoff_base=0.001, backoff_cap=0.005)
CAP = 64 * 1024  # max_body_bytes in these tests
_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def _page(ids: list[str], *, cursor: object = None, more: bool = False) -> dict[str, object]:
    messages = [
        {"id": i, "body": f"text of {i}", "dateAdded": "2024-05-01T10:00:00Z"} for i in ids
    ]
    page: dict[str, object] = {"messages": messages, "nextPage": more}
    if cursor is not None:
        page["lastMessageId"] = cursor
    return {"messages": page}


def _json(data: object) -> bytes:
    return json.dumps(data).encode()


@dataclass
class Hostile:
    """What the server does; tests change it between requests."""

    url: str = ""
    bad_cursor: object = "../../etc"
    requests: dict[str, int] = field(default_factory=dict)


def _reply(state: Hostile, cid: str, cursor: str | None) -> web.StreamResponse:
    if cid.startswith("ok"):
        # Two pages: m1, m2 then m3 (the server's cursor names the page's last id).
        if cursor is None:
            return web.Response(
                body=_json(_page([f"{cid}m1", f"{cid}m2"], cursor=f"{cid}m2", more=True)),
                content_type="application/json",
            )
        return web.Response(body=_json(_page([f"{cid}m3"])), content_type="application/json")
    if cid == "gzipped":
        return web.Response(
            body=gzip.compress(_json(_page(["g1", "g2"]))),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
    if cid == "badCursor":
        return web.Response(
            body=_json(_page(["b1"], cursor=state.bad_cursor, more=True)),
            content_type="application/json",
        )
    if cid == "notUtf8":
        body = b'{"messages": {"nextPage": false, "messages": [{"id": "u1", "body": "\xff\xfe"}]}}'
        return web.Response(body=body, content_type="application/json")
    if cid == "deep":
        # Deeper than Python's C recursion limit lets msgspec go on every version we
        # test (3.13 decodes 5,000 levels), and still under CAP.
        body = (
            b'{"messages": {"nextPage": false, "messages": [{"id": "d1", "meta": {"a": '
            + b"[" * 30_000
            + b"1"
            + b"]" * 30_000
            + b"}}]}}"
        )
        return web.Response(body=body, content_type="application/json")
    if cid == "noCursor":
        # No lastMessageId at all: the cursor is the last message's id. The second
        # page is refused for good.
        if cursor is None:
            return web.Response(
                body=_json(_page(["n1", "n2"], more=True)), content_type="application/json"
            )
        return web.json_response({"message": "no"}, status=403)
    raise web.HTTPNotFound()


async def _big(request: web.Request) -> web.StreamResponse:
    """Bodies over the cap, in every way a server can send them."""
    how = request.match_info["cid"]
    filler = _json(_page(["x1"])) + b" " * (CAP * 4)
    if how == "bigLength":  # Content-Length says it all up front
        return web.Response(body=filler, content_type="application/json")
    if how == "bigChunked":  # no length: only counting finds out
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(filler), 8192):
            await response.write(filler[start : start + 8192])
        await response.write_eof()
        return response
    if how == "bigGzip":  # small on the wire, over the cap once inflated
        packed = gzip.compress(filler)
        assert len(packed) < CAP
        return web.Response(
            body=packed,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
    # "atCap": exactly CAP bytes is still read
    body = _json(_page(["c1"]))
    return web.Response(body=body + b" " * (CAP - len(body)), content_type="application/json")


@asynccontextmanager
async def hostile() -> AsyncIterator[Hostile]:
    state = Hostile()

    async def handler(request: web.Request) -> web.StreamResponse:
        cid = request.match_info["cid"]
        state.requests[cid] = state.requests.get(cid, 0) + 1
        if cid.startswith(("big", "atCap")):
            return await _big(request)
        return _reply(state, cid, request.query.get("lastMessageId"))

    app = web.Application()
    app.router.add_get("/conversations/{cid}/messages", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield state
    finally:
        await runner.cleanup()


def _client(state: Hostile, **kwargs: object) -> Client:
    return Client("t", base_url=state.url, retry=FAST, max_body_bytes=CAP, **kwargs)  # type: ignore[arg-type]


async def _fan_out(
    client: Client, ids: list[str]
) -> tuple[dict[str, list[str]], dict[str, errors.GHLError]]:
    got: dict[str, list[str]] = {}
    failed: dict[str, errors.GHLError] = {}
    async for cid, item in client.fan_out(ids, return_exceptions=True):
        if isinstance(item, errors.GHLError):
            assert cid not in failed, "one error item per conversation"
            failed[cid] = item
        else:
            got.setdefault(cid, []).append(item.id)
    return got, failed


# What we promise is the conversation's DecodeError, with the underlying problem chained as
# its cause and named in its message: not which exception a dependency raises underneath
# (msgspec 0.23 reports invalid UTF-8 as its own DecodeError, older releases as a
# UnicodeDecodeError).
@pytest.mark.parametrize(
    ("victim", "named"),
    [
        ("badCursor", r"lastMessageId '\.\./\.\./etc' is not a HighLevel id"),
        ("notUtf8", r"(?i)utf-8"),
        ("deep", r"(?i)recursion|depth"),
    ],
)
async def test_one_hostile_conversation_is_that_conversations_error_item(
    victim: str, named: str
) -> None:
    async with hostile() as state, _client(state) as client:
        got, failed = await _fan_out(client, ["ok1", victim, "ok2"])
    assert got == {"ok1": ["ok1m1", "ok1m2", "ok1m3"], "ok2": ["ok2m1", "ok2m2", "ok2m3"]}
    assert list(failed) == [victim]
    error = failed[victim]
    assert isinstance(error, errors.DecodeError)
    assert error.__cause__ is not None
    assert re.search(named, str(error)), str(error)
    assert re.search(named, str(error.__cause__)), repr(error.__cause__)
    assert error.conversation_id == victim
    # Nothing of the victim was handed out, so it resumes from the start.
    assert error.last_message_id is None
    assert not error.retryable
    assert state.requests[victim] == 1


async def test_a_bad_cursor_fails_iter_pages_with_a_decode_error_not_a_value_error() -> None:
    async with hostile() as state, _client(state) as client:
        with pytest.raises(errors.DecodeError, match="lastMessageId") as caught:
            async for _ in client.iter_pages("badCursor", last_message_id="start"):
                pass
    assert caught.value.conversation_id == "badCursor"
    assert caught.value.last_message_id == "start"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cursor=st.one_of(
        # "" counts as no cursor (the last message's id is used instead).
        st.text(min_size=1, max_size=200).filter(lambda s: _ID.fullmatch(s) is None),
        st.integers(),
        st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
        st.booleans(),
        st.floats(allow_nan=False),
    )
)
async def test_any_cursor_that_is_not_an_id_costs_only_its_conversation(cursor: object) -> None:
    async with hostile() as state:
        state.bad_cursor = cursor
        async with _client(state) as client:
            got, failed = await _fan_out(client, ["ok1", "badCursor"])
    assert got["ok1"] == ["ok1m1", "ok1m2", "ok1m3"]
    assert list(failed) == ["badCursor"]
    error = failed["badCursor"]
    if isinstance(cursor, str):
        # Never sent back: the one request that brought it.
        assert state.requests["badCursor"] == 1
        assert isinstance(error, errors.DecodeError)
        assert isinstance(error.__cause__, ValueError)
    else:
        # A cursor of another JSON type may be refused by the decoder already (or, if
        # the decoder drops it, fall back to the last id and be refused as repeated).
        assert isinstance(error, (errors.DecodeError, errors.PaginationError))
    if isinstance(error, errors.PaginationError):
        # The decoder read the odd cursor as absent, the page was delivered and the
        # last message's id followed: resume after that page, never before it.
        assert error.last_message_id == "b1"
    else:
        # Refused before the page was handed out: resume from the start.
        assert error.last_message_id is None


async def test_the_resume_cursor_is_right_when_the_server_omits_last_message_id() -> None:
    async with hostile() as state, _client(state) as client:
        got, failed = await _fan_out(client, ["noCursor", "ok1"])
        assert got["noCursor"] == ["n1", "n2"]
        error = failed["noCursor"]
        assert isinstance(error, errors.PermissionDeniedError)
        assert error.last_message_id == "n2"
        # get_messages and iter_pages mark their errors the same way.
        with pytest.raises(errors.PermissionDeniedError) as caught:
            await client.get_messages("noCursor", last_message_id="n2")
        assert (caught.value.conversation_id, caught.value.last_message_id) == ("noCursor", "n2")
        with pytest.raises(errors.PermissionDeniedError) as caught:
            async for _ in client.iter_pages("noCursor"):
                pass
        assert caught.value.last_message_id == "n2"


@pytest.mark.parametrize("how", ["bigLength", "bigChunked", "bigGzip"])
async def test_a_body_over_max_body_bytes_fails_that_request_and_is_not_retried(how: str) -> None:
    async with hostile() as state, _client(state) as client:
        with pytest.raises(errors.TransportError, match="max_body_bytes") as caught:
            await client.get_messages(how)
        assert not caught.value.retryable
        assert caught.value.conversation_id == how
        assert state.requests[how] == 1
        assert open_connections(client) == 0
        # The client goes on: the next reply is read as usual.
        page = await client.get_messages("atCap")
        assert [m.id for m in page.messages] == ["c1"]
        # And in a fan-out it is that conversation's error.
        got, failed = await _fan_out(client, [how, "ok1"])
        assert list(failed) == [how]
        assert got == {"ok1": ["ok1m1", "ok1m2", "ok1m3"]}


async def test_max_body_bytes_is_checked() -> None:
    with pytest.raises(ValueError, match="max_body_bytes"):
        Client("t", max_body_bytes=0)
    with pytest.raises(TypeError, match="max_body_bytes"):
        Client("t", max_body_bytes=1.5)  # type: ignore[arg-type]


async def test_a_caller_session_with_raise_for_status_changes_nothing() -> None:
    async with hostile() as state:
        session = aiohttp.ClientSession(raise_for_status=True, auto_decompress=False)
        try:
            async with Client("t", base_url=state.url, retry=FAST, session=session) as client:
                got, failed = await _fan_out(client, ["noCursor", "ok1"])
                assert isinstance(failed["noCursor"], errors.PermissionDeniedError)
                assert got["ok1"] == ["ok1m1", "ok1m2", "ok1m3"]
                with pytest.raises(errors.NotFoundError):
                    await client.get_messages("unknown")
                assert state.requests["unknown"] == 1  # a 404 is still never retried
                # auto_decompress=False on the session does not reach our requests.
                page = await client.get_messages("gzipped")
                assert [m.id for m in page.messages] == ["g1", "g2"]
        finally:
            await session.close()
