"""The client against FakeHighLevel over a real socket."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from ghl_async import Client, FilterType, MessagesPage, RetryPolicy, errors
from ghl_async.models import decode_email
from ghl_async.testing import FakeHighLevel
from tests.support.helpers import (
    LogCapture,
    ServerFactory,
    aiohttp_session,
    open_connections,
    open_session,
)

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(max_attempts=4, backoff_base=0.001, backoff_cap=0.01)


def ids_of(messages: list[dict[str, Any]]) -> list[str]:
    return [m["id"] for m in messages]


async def test_get_messages_sends_limit_only_when_given(server: ServerFactory) -> None:
    async with server(conversations=3, messages=45, seed=1) as fake:
        conversation = fake.conversation_ids[0]
        async with Client(fake.token, base_url=fake.url) as client:
            default = await client.get_messages(conversation)
            assert len(default.messages) == 20  # the server's default
            five = await client.get_messages(conversation, limit=5)
            assert [m.id for m in five.messages] == ids_of(fake.messages(conversation))[:5]
            assert five.next_page is True
            assert five.last_message_id == five.messages[-1].id
            after = await client.get_messages(
                conversation, last_message_id=five.last_message_id, limit=5
            )
            assert [m.id for m in after.messages] == ids_of(fake.messages(conversation))[5:10]


async def test_fixture_from_the_pytest_plugin_serves(fake_highlevel: FakeHighLevel) -> None:
    async with Client(fake_highlevel.token, base_url=fake_highlevel.url) as client:
        page = await client.get_messages(fake_highlevel.conversation_ids[0], limit=1)
        assert isinstance(page, MessagesPage)


async def test_iter_messages_returns_every_message_newest_first(server: ServerFactory) -> None:
    async with server(conversations=4, messages=(0, 260), seed=2) as fake:
        async with Client(fake.token, base_url=fake.url) as client:
            for conversation in fake.conversation_ids:
                got = [m.id async for m in client.iter_messages(conversation)]
                assert got == ids_of(fake.messages(conversation))


async def test_iter_pages_uses_pages_of_100_and_stops_on_the_final_page(
    server: ServerFactory,
) -> None:
    async with server(conversations=1, messages=250, seed=3) as fake:
        conversation = fake.conversation_ids[0]
        async with Client(fake.token, base_url=fake.url) as client:
            sizes = [len(p.messages) async for p in client.iter_pages(conversation)]
        assert sizes == [100, 100, 50]
        assert fake.stats.requests == 3


async def test_exact_multiple_of_the_page_size_ends_on_an_empty_page(
    server: ServerFactory,
) -> None:
    async with server(conversations=1, messages=200, seed=3, empty_page_next=True) as fake:
        conversation = fake.conversation_ids[0]
        async with Client(fake.token, base_url=fake.url) as client:
            pages = [p async for p in client.iter_pages(conversation)]
        # The empty page says nextPage: true, and paging still stops.
        assert [len(p.messages) for p in pages] == [100, 100, 0]
        assert pages[-1].next_page is True and pages[-1].is_last
        assert fake.stats.requests == 3


async def test_iterators_resume_after_last_message_id(server: ServerFactory) -> None:
    async with server(conversations=1, messages=130, seed=4) as fake:
        conversation = fake.conversation_ids[0]
        expected = ids_of(fake.messages(conversation))
        async with Client(fake.token, base_url=fake.url) as client:
            got = [
                m.id
                async for m in client.iter_messages(
                    conversation, page_size=7, last_message_id=expected[41]
                )
            ]
        assert got == expected[42:]


async def test_type_filter_is_sent_and_applied(server: ServerFactory) -> None:
    async with server(conversations=2, messages=200, seed=5) as fake:
        conversation = fake.conversation_ids[0]
        wanted = {"TYPE_SMS", "TYPE_CALL"}
        expected = [m["id"] for m in fake.messages(conversation) if m["messageType"] in wanted]
        async with Client(fake.token, base_url=fake.url) as client:
            got = [
                m.id
                async for m in client.iter_messages(
                    conversation, types=[FilterType.TYPE_SMS, "TYPE_CALL"], page_size=30
                )
            ]
        assert got == expected


async def test_a_repeated_cursor_raises_instead_of_looping() -> None:
    calls = 0

    async def same_page(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.json_response(
            {"messages": {"lastMessageId": "m1", "nextPage": True, "messages": [{"id": "m1"}]}}
        )

    app = web.Application()
    app.router.add_get("/conversations/{cid}/messages", same_page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with Client("t", base_url=f"http://127.0.0.1:{port}") as client:
            with pytest.raises(errors.PaginationError) as caught:
                async for _ in client.iter_pages("abc"):
                    pass
        assert calls == 2
        assert caught.value.conversation_id == "abc"
    finally:
        await runner.cleanup()


async def test_not_found_is_raised_without_retrying(server: ServerFactory) -> None:
    async with server(conversations=1) as fake:
        async with Client(fake.token, base_url=fake.url, retry=FAST) as client:
            with pytest.raises(errors.NotFoundError) as caught:
                await client.get_messages("doesNotExist")
        assert caught.value.status == 404
        assert caught.value.message == "Conversation not found"
        assert caught.value.trace_id is None
        assert fake.stats.requests == 1


@pytest.mark.parametrize("status", ["400", "403", "404", "422"])
async def test_client_errors_are_never_retried(server: ServerFactory, status: str) -> None:
    async with server(conversations=1) as fake:
        fake.inject(status)
        async with Client(fake.token, base_url=fake.url, retry=FAST) as client:
            with pytest.raises(errors.APIStatusError) as caught:
                await client.get_messages(fake.conversation_ids[0])
        assert caught.value.status == int(status)
        assert fake.stats.requests == 1


@pytest.mark.parametrize("fault", ["server_error", "reset", "truncate", "html", "429"])
async def test_transient_faults_are_retried_then_succeed(
    server: ServerFactory, fault: str, ghl_log: LogCapture
) -> None:
    async with server(conversations=1, messages=10) as fake:
        fake.inject(fault, count=2)
        async with Client(fake.token, base_url=fake.url, retry=FAST) as client:
            page = await client.get_messages(fake.conversation_ids[0], limit=10)
        assert [m.id for m in page.messages] == ids_of(fake.messages(fake.conversation_ids[0]))
        assert fake.stats.faults[fault] == 2
        # Every send is counted, and every resend is a retry with its log line,
        # including the one aiohttp repeats on its own after a dropped pooled connection.
        assert client.stats.requests == fake.stats.requests == 3
        assert client.stats.retries == 2
        retry_lines = [r.getMessage() for r in ghl_log.records if "retrying" in r.getMessage()]
        assert len(retry_lines) == 2
        assert any("attempt 2 of 4" in line for line in retry_lines)
        reasons = {
            "server_error": "HTTP 5",
            "reset": "ServerDisconnectedError",
            "truncate": "truncated reply body",
            "html": "not the documented JSON",
            "429": "HTTP 429",
        }
        assert reasons[fault] in retry_lines[0]


async def test_a_slow_reply_times_out_and_is_retried(server: ServerFactory) -> None:
    async with server(conversations=1, messages=3) as fake:
        fake.inject("slow")
        fake.faults = type(fake.faults)(slow_seconds=1.0)
        async with Client(fake.token, base_url=fake.url, retry=FAST, timeout=0.2) as client:
            page = await client.get_messages(fake.conversation_ids[0])
        assert len(page.messages) == 3
        assert client.stats.retries == 1


async def test_retries_give_up_after_max_attempts(server: ServerFactory) -> None:
    async with server(conversations=1) as fake:
        fake.inject("server_error", count=10)
        async with Client(fake.token, base_url=fake.url, retry=FAST) as client:
            with pytest.raises(errors.ServerError):
                await client.get_messages(fake.conversation_ids[0])
        assert fake.stats.requests == 4


async def test_json_of_the_wrong_shape_is_a_decode_error_not_retried() -> None:
    async def wrong(request: web.Request) -> web.Response:
        return web.json_response({"messages": {"messages": [{"noId": 1}]}})

    app = web.Application()
    app.router.add_get("/conversations/{cid}/messages", wrong)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        async with Client("t", base_url=f"http://127.0.0.1:{port}", retry=FAST) as client:
            with pytest.raises(errors.DecodeError) as caught:
                await client.get_messages("abc")
        assert caught.value.retryable is False
        assert client.stats.requests == 1
    finally:
        await runner.cleanup()


async def test_connection_refused_is_a_transport_error() -> None:
    async with Client("t", base_url="http://127.0.0.1:9", retry=FAST) as client:
        with pytest.raises(errors.TransportError):
            await client.get_messages("abc")
        assert client.stats.requests == 4


async def test_a_static_token_that_is_refused_raises_authentication_error(
    server: ServerFactory,
) -> None:
    async with server(conversations=1) as fake:
        async with Client("wrong-token", base_url=fake.url, retry=FAST) as client:
            with pytest.raises(errors.AuthenticationError) as caught:
                await client.get_messages(fake.conversation_ids[0])
        assert caught.value.message == "Invalid token: access token is invalid"
        assert fake.stats.requests == 1


async def test_a_token_provider_is_asked_again_once_after_a_401(server: ServerFactory) -> None:
    async with server(conversations=1, messages=5) as fake:
        tokens = ["expired", fake.token]
        asked = 0

        async def provider() -> str:
            nonlocal asked
            asked += 1
            return tokens[min(asked - 1, len(tokens) - 1)]

        async with Client(provider, base_url=fake.url, retry=FAST) as client:
            page = await client.get_messages(fake.conversation_ids[0])
        assert len(page.messages) == 5
        assert asked == 2
        assert fake.stats.requests == 2


async def test_a_second_401_after_refreshing_raises(server: ServerFactory) -> None:
    async with server(conversations=1) as fake:
        asked = 0

        async def provider() -> str:
            nonlocal asked
            asked += 1
            return f"still-wrong-{asked}"

        async with Client(provider, base_url=fake.url, retry=FAST) as client:
            with pytest.raises(errors.AuthenticationError):
                await client.get_messages(fake.conversation_ids[0])
        assert asked == 2
        assert fake.stats.requests == 2


async def test_concurrent_401s_share_one_refresh(server: ServerFactory) -> None:
    async with server(conversations=8, messages=3) as fake:
        asked = 0
        good = fake.token

        async def provider() -> str:
            nonlocal asked
            asked += 1
            await asyncio.sleep(0.05)
            return "expired" if asked == 1 else good

        async with Client(provider, base_url=fake.url, retry=FAST) as client:
            pages = await asyncio.gather(*(client.get_messages(c) for c in fake.conversation_ids))
        assert all(len(p.messages) == 3 for p in pages)
        assert asked == 2


async def test_redirects_are_not_followed_and_the_token_stays_home() -> None:
    seen_elsewhere: list[str | None] = []

    async def elsewhere(request: web.Request) -> web.Response:
        seen_elsewhere.append(request.headers.get("Authorization"))
        return web.json_response({"messages": {"messages": []}})

    other = web.Application()
    other.router.add_get("/{tail:.*}", elsewhere)
    other_runner = web.AppRunner(other, access_log=None)
    await other_runner.setup()
    await web.TCPSite(other_runner, "127.0.0.2", 0).start()
    other_port = other_runner.addresses[0][1]

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.2:{other_port}/steal")

    app = web.Application()
    app.router.add_get("/conversations/{cid}/messages", redirect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        async with Client("secret-token-xyz", base_url=f"http://127.0.0.1:{port}") as client:
            with pytest.raises(errors.APIStatusError) as caught:
                await client.get_messages("abc")
        assert caught.value.status == 302
        assert seen_elsewhere == []
    finally:
        await runner.cleanup()
        await other_runner.cleanup()


async def test_the_token_never_shows_in_repr_errors_or_logs(
    server: ServerFactory, ghl_log: LogCapture
) -> None:
    secret = "pit-SECRET-0123456789abcdef"
    async with server(conversations=1, token=secret) as fake:
        fake.inject("server_error", count=1)
        fake.inject("reset", count=1)
        async with Client(secret, base_url=fake.url, retry=FAST) as client:
            assert secret not in repr(client)
            await client.get_messages(fake.conversation_ids[0])
            fake.set_token("rotated")
            with pytest.raises(errors.AuthenticationError) as caught:
                await client.get_messages(fake.conversation_ids[0])
        async with Client(secret, base_url="http://127.0.0.1:9", retry=FAST) as client:
            with pytest.raises(errors.TransportError) as transport:
                await client.get_messages("abc")
    for error in (caught.value, transport.value):
        assert secret not in str(error)
        assert secret not in repr(error)
        assert error.__cause__ is None
        assert secret not in repr(error.__context__)
    assert ghl_log.records, "retries should have been logged"
    for record in ghl_log.records:
        assert secret not in record.getMessage()


async def test_a_caller_owned_session_is_used_and_never_closed(server: ServerFactory) -> None:
    async with server(conversations=1, messages=2) as fake:
        async with aiohttp.ClientSession() as session:
            async with Client(fake.token, base_url=fake.url, session=session) as client:
                page = await client.get_messages(fake.conversation_ids[0])
                assert len(page.messages) == 2
            assert not session.closed
            async with session.get(fake.url + "/nowhere") as response:
                assert response.status == 404


async def test_the_session_opens_in_aenter_and_closing_releases_everything(
    server: ServerFactory,
) -> None:
    async with server(conversations=3, messages=20) as fake:
        client = Client(fake.token, base_url=fake.url)
        assert aiohttp_session(client) is None
        async with client:
            await asyncio.gather(*(client.get_messages(c) for c in fake.conversation_ids))
            assert open_connections(client) == 0
            session = aiohttp_session(client)
        assert session is not None and session.closed
        assert "closed" in repr(client)


async def test_a_token_provider_that_hangs_is_bounded_by_the_timeout(
    server: ServerFactory,
) -> None:
    async with server(conversations=1) as fake:
        never = asyncio.Event()

        async def provider() -> str:
            await never.wait()
            return fake.token

        async with Client(provider, base_url=fake.url, timeout=0.05, retry=FAST) as client:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(errors.AuthenticationError, match=r"no token within 0\.05 s"):
                await client.get_messages(fake.conversation_ids[0])
            assert loop.time() - started < 1.0
        assert fake.stats.requests == 0


async def test_a_provider_raising_timeout_error_raises_it_as_itself(server: ServerFactory) -> None:
    async with server(conversations=1) as fake:
        mine = TimeoutError("vault slow")

        async def provider() -> str:
            raise mine

        async with Client(provider, base_url=fake.url) as client:
            with pytest.raises(TimeoutError) as caught:
                await client.get_messages(fake.conversation_ids[0])
        assert caught.value is mine


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (42, "the token provider returned int, not a str token"),
        (b"bytes-token", "the token provider returned bytes, not a str token"),
        (None, "the token provider returned NoneType, not a str token"),
    ],
)
async def test_a_provider_returning_a_non_string_says_so(
    server: ServerFactory, returned: object, message: str
) -> None:
    async with server(conversations=1) as fake:

        async def provider() -> Any:
            return returned

        async with Client(provider, base_url=fake.url) as client:
            with pytest.raises(TypeError, match=message):
                await client.get_messages(fake.conversation_ids[0])
        assert fake.stats.requests == 0


async def test_a_sync_provider_is_told_to_be_async(server: ServerFactory) -> None:
    async with server(conversations=1) as fake:
        async with Client(lambda: fake.token, base_url=fake.url) as client:  # type: ignore[arg-type, return-value]
            with pytest.raises(TypeError, match="must be an async callable; it returned str"):
                await client.get_messages(fake.conversation_ids[0])


async def test_a_closed_client_says_so(server: ServerFactory) -> None:
    async with server(conversations=2, messages=3) as fake:
        async with Client(fake.token, base_url=fake.url) as client:
            await client.get_messages(fake.conversation_ids[0])
        with pytest.raises(RuntimeError, match="the client is closed"):
            await client.get_messages(fake.conversation_ids[0])
        with pytest.raises(RuntimeError, match="the client is closed"):
            async for _ in client.iter_messages(fake.conversation_ids[0]):
                pass
        # Opening it again is allowed and works.
        async with client:
            assert len((await client.get_messages(fake.conversation_ids[1])).messages) == 3


def test_a_client_works_under_a_second_asyncio_run(caplog: pytest.LogCaptureFixture) -> None:
    client_holder: list[Client] = []

    async def use(close: bool) -> list[str]:
        async with FakeHighLevel(conversations=2, messages=7, seed=5, token="pit-same") as fake:
            if not client_holder:
                client_holder.append(Client(fake.token, base_url=fake.url))
            client = client_holder[0]
            client._base_url = fake.url  # a new fake each run, on a new port
            await client.open()
            try:
                return [m.id async for _, m in client.fan_out(fake.conversation_ids)]
            finally:
                if close:
                    await client.aclose()

    first = asyncio.run(use(close=True))
    second = asyncio.run(use(close=False))  # left open: its loop closes under it
    third = asyncio.run(use(close=True))
    assert len(first) == len(second) == len(third) == 14
    del client_holder[:]
    gc.collect()
    assert "Unclosed" not in caplog.text


async def test_a_client_opens_on_first_use_and_aclose_closes_it(server: ServerFactory) -> None:
    async with server(conversations=3, messages=12) as fake:
        ids = fake.conversation_ids
        client = Client(fake.token, base_url=fake.url)
        assert "closed" in repr(client)
        assert len((await client.get_messages(ids[0])).messages) == 12
        assert "open" in repr(client)
        await client.aclose()
        assert "closed" in repr(client)
        with pytest.raises(RuntimeError, match="the client is closed"):
            await client.get_messages(ids[0])
        # Every way in opens it: fan-out, iterators, the location's conversations.
        for use in ("fan_out", "iter_messages", "iter_conversations"):
            client = Client(fake.token, base_url=fake.url)
            if use == "fan_out":
                got: list[object] = [m async for _, m in client.fan_out(ids)]
            elif use == "iter_messages":
                got = [m async for m in client.iter_messages(ids[1])]
            else:
                got = [c async for c in client.iter_conversations(fake.location_id)]
            assert got
            await client.aclose()
            assert open_connections_or_none(client) is None


def open_connections_or_none(client: Client) -> int | None:
    session = aiohttp_session(client)
    return None if session is None or session.closed else open_connections(client)


async def test_a_client_dropped_without_closing_prints_nothing(
    server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # A notebook cell run twice: the first cell's client is dropped, never closed.
    async with server(conversations=2, messages=3) as fake:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: reported.append(context))
        try:
            for _ in range(2):
                client = Client(fake.token, base_url=fake.url)
                await client.get_messages(fake.conversation_ids[0])
                session = open_session(client)
            del client
            gc.collect()
            await asyncio.sleep(0.05)  # the dropped client's session closes on the loop
            assert session.closed
            gc.collect()
        finally:
            loop.set_exception_handler(None)
        assert reported == []
        assert "Unclosed" not in caplog.text


async def test_a_raise_for_status_session_still_retries_and_maps_statuses(
    server: ServerFactory,
) -> None:
    async with server(conversations=2, messages=5) as fake:
        first, second = fake.conversation_ids
        async with aiohttp.ClientSession(raise_for_status=True) as session:
            async with Client(
                fake.token, base_url=fake.url, retry=FAST, session=session
            ) as client:
                fake.inject("server_error", 2, conversation_id=first)
                fake.inject("429", conversation_id=first)
                assert len((await client.get_messages(first)).messages) == 5
                assert client.stats.retries == 3
                assert client.stats.throttled == 1
                fake.inject("403", conversation_id=second)
                with pytest.raises(errors.PermissionDeniedError):
                    await client.get_messages(second)
                assert client.stats.retries == 3  # never retried


# -- single messages ----------------------------------------------------------------


async def test_get_message_fetches_one_message_by_id(server: ServerFactory) -> None:
    async with server(conversations=2, messages=5, seed=3) as fake:
        wanted = fake.messages(fake.conversation_ids[1])[2]
        async with Client(fake.token, base_url=fake.url, retry=FAST) as client:
            message = await client.get_message(wanted["id"])
            assert message.id == wanted["id"]
            assert message.conversation_id == fake.conversation_ids[1]
            assert message.body == wanted.get("body")
            with pytest.raises(errors.NotFoundError) as caught:
                await client.get_message("noSuchMessage")
            assert caught.value.status == 404
            sent = client.stats.requests
            for bad in ("../x", "a/b", "", "a?b=1"):
                with pytest.raises(ValueError, match="message_id"):
                    await client.get_message(bad)
            with pytest.raises(TypeError, match="message_id"):
                await client.get_message(5)  # type: ignore[arg-type]
            assert client.stats.requests == sent  # nothing reached the network


async def test_get_email_fetches_an_email_body_by_id(server: ServerFactory) -> None:
    async with server(conversations=1, messages=2, seed=4) as fake:
        conversation = fake.conversation_ids[0]
        fake.add_message(conversation, messageType="TYPE_EMAIL", type=3)
        async with Client(fake.token, base_url=fake.url, retry=FAST) as client:
            page = await client.get_messages(conversation, limit=1)
            [email_message] = page.messages
            assert email_message.meta is not None and email_message.meta.email is not None
            email_id = email_message.meta.email.message_ids[0]
            email = await client.get_email(email_id)
            assert email.id == email_id
            assert email == decode_email(msgspec.json.encode(fake.email(email_id)))
            with pytest.raises(errors.NotFoundError):
                await client.get_email("noSuchEmail")
            sent = client.stats.requests
            with pytest.raises(ValueError, match="email_message_id"):
                await client.get_email("../x")
            assert client.stats.requests == sent


# -- the public surface -------------------------------------------------------------


def test_the_public_surface_is_exact_documented_and_enough_for_a_limiter() -> None:
    import inspect
    import typing

    import ghl_async
    from ghl_async import ratelimit

    assert sorted(ghl_async.__all__) == sorted(set(ghl_async.__all__))
    for name in ghl_async.__all__:
        value = getattr(ghl_async, name)
        # A type alias (LocationTokenProvider) is documented by its `#:` comment: it can
        # carry no docstring, and on Python 3.10 a generic alias passes isinstance(type).
        is_alias = typing.get_origin(value) is not None
        if not is_alias and (isinstance(value, type) or inspect.isfunction(value)):
            assert value.__doc__, name
    # Everything a Limiter sees (Reply and its fields' types) is importable publicly.
    public = {getattr(ghl_async, n) for n in ghl_async.__all__}
    assert {ghl_async.Limiter, ghl_async.Reply} <= public
    hints = typing.get_type_hints(ratelimit.Reply)
    assert hints["rate"] is ghl_async.RateLimitHeaders
    # Nothing private leaks: every exported object comes from a public module or is
    # re-exported on purpose from one place.
    assert not [n for n in ghl_async.__all__ if n.startswith("_") and n != "__version__"]


async def test_the_aiohttp_transport_posts_a_form_or_a_json_body() -> None:
    # What issue 14's POST /oauth/locationToken needs of the seam, over a real socket.
    seen: list[tuple[str, str, bytes]] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append((request.method, request.content_type, await request.read()))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/oauth/locationToken", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/oauth/locationToken"
    try:
        async with Client("t") as client:
            engine = client._engine
            form = {"companyId": "c1", "locationId": "l 1"}
            for body in ({"form": form}, {"json": b'{"a": 1}'}):
                got = await engine.request("POST", url, msgspec.json.decode, what="t", **body)
                assert got == {"ok": True}
            assert client.stats.requests == 2
    finally:
        await runner.cleanup()
    assert seen == [
        ("POST", "application/x-www-form-urlencoded", b"companyId=c1&locationId=l+1"),
        ("POST", "application/json", b'{"a": 1}'),
    ]


async def test_each_request_carries_its_own_headers_on_the_clients_session() -> None:
    # A session of the client's carries the engine's headers as its defaults: a new
    # token replaces them, a JSON body's Content-Type stays with its request.
    seen: list[tuple[str, str | None, str | None]] = []

    async def echo(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization")
        seen.append((request.method, auth, request.headers.get("Content-Type")))
        if auth != "Bearer new":
            return web.json_response({"message": "expired"}, status=401)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/x", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/x"
    tokens = iter(["old", "new"])

    async def provider() -> str:
        return next(tokens)

    try:
        async with Client(provider, retry=RetryPolicy(max_attempts=1)) as client:
            engine = client._engine
            for json in (None, b"{}", None):
                method = "GET" if json is None else "POST"
                got = await engine.request(method, url, msgspec.json.decode, what="t", json=json)
                assert got == {"ok": True}
    finally:
        await runner.cleanup()
    assert seen == [
        ("GET", "Bearer old", None),
        ("GET", "Bearer new", None),
        ("POST", "Bearer new", "application/json"),
        ("GET", "Bearer new", None),
    ]


async def test_message_iterators_check_arguments_when_called_and_close_their_pages(
    server: ServerFactory,
) -> None:
    async with server(conversations=1, messages=250) as fake:
        async with Client(fake.token, base_url=fake.url) as client:
            with pytest.raises(ValueError):
                client.iter_messages("not an id/../x")  # at the call, no await
            with pytest.raises(ValueError):
                client.iter_location_messages(fake.location_id, page_size=0)
            assert fake.stats.requests == 0
            for stream in (
                client.iter_messages(fake.conversation_ids[0]),
                client.iter_location_messages(fake.location_id, page_size=100),
            ):
                assert isinstance(stream, AsyncGenerator)
                before = fake.stats.requests
                got = [await anext(stream) for _ in range(150)]  # two pages of 100
                assert len({m.id for m in got}) == 150
                await stream.aclose()
                assert [m async for m in stream] == []
                assert fake.stats.requests - before == 2
