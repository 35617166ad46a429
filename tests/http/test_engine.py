"""The engine against an in-memory transport: retry, 401 refresh, decode, error mapping.

No sockets: each case is a list of answers and what the engine must make of them. The
aiohttp behaviour itself (the resend through the limiter, the body cap on the wire) is
proved over real sockets in test_client.py and test_hostile_server.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from contextlib import aclosing
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest

from ghl_async import errors
from ghl_async._http.auth import TokenSource
from ghl_async._http.engine import Engine, Slots
from ghl_async._http.paginate import paginate
from ghl_async._http.transport import Request
from ghl_async._params import next_export_params, next_messages_params, next_search_params
from ghl_async._validation import check_id
from ghl_async.models import decode_conversations, decode_export_page, decode_page
from ghl_async.retry import RetryPolicy
from ghl_async.stats import ClientStats
from tests.support.memory_transport import Answer, CountingLimiter, MemoryTransport

pytestmark = pytest.mark.anyio

OK: Answer = (200, {}, b'{"ok": true}')
BUDGET = {
    "X-RateLimit-Remaining": "7",
    "X-RateLimit-Max": "100",
    "X-RateLimit-Interval-Milliseconds": "10000",
}


class Ok(msgspec.Struct):
    ok: bool


def decode_ok(body: bytes) -> Ok:
    return msgspec.json.decode(body, type=Ok)


def script(*answers: Answer | errors.TransportError) -> Callable[[Request], Answer]:
    queue: Iterator[Answer | errors.TransportError] = iter(answers)

    def handler(request: Request) -> Answer:
        answer = next(queue)
        if isinstance(answer, errors.TransportError):
            raise answer
        return answer

    return handler


def make_engine(
    handler: Callable[[Request], Answer],
    token: object = "tok",
    attempts: int = 3,
) -> tuple[Engine, MemoryTransport, CountingLimiter]:
    transport = MemoryTransport(handler)
    stats = ClientStats()
    engine = Engine(
        auth=TokenSource(token),  # type: ignore[arg-type]
        transport=transport,
        retry=RetryPolicy(max_attempts=attempts, backoff_base=0.0, backoff_cap=0.0),
        capacity=anyio.CapacityLimiter(4),
        user_agent="test",
        stats=stats,
    )
    limiter = CountingLimiter()
    engine.limiter = limiter
    return engine, transport, limiter


def unreachable() -> errors.TransportError:
    return errors.TransportError("connection refused")


def too_large() -> errors.TransportError:
    error = errors.TransportError("reply body over max_body_bytes (10 bytes)", status=200)
    error.retryable = False
    return error


# (answers in order, the error the engine raises or None, sends made)
CASES: list[tuple[str, list[Answer | errors.TransportError], type[Exception] | None, int]] = [
    ("ok at once", [OK], None, 1),
    ("a 500 then ok", [(500, {}, b""), OK], None, 2),
    ("a 429 with Retry-After then ok", [(429, {"Retry-After": "0"}, b""), OK], None, 2),
    ("the network fails then ok", [unreachable(), OK], None, 2),
    ("a 500 every time", [(500, {}, b"")] * 3, errors.ServerError, 3),
    ("a 404 is not retried", [(404, {}, b'{"message": "no"}')], errors.NotFoundError, 1),
    ("a 400 is not retried", [(400, {}, b"")], errors.BadRequestError, 1),
    ("a 403 is not retried", [(403, {}, b"")], errors.PermissionDeniedError, 1),
    ("a 401 with a plain token", [(401, {}, b"")], errors.AuthenticationError, 1),
    (
        "a spent day is not retried",
        [(429, {"X-RateLimit-Daily-Remaining": "0"}, b"")],
        errors.DailyLimitExceeded,
        1,
    ),
    (
        "a Retry-After past the policy is raised",
        [(429, {"Retry-After": "3600"}, b"")],
        errors.RateLimitError,
        1,
    ),
    ("a body over the cap is not retried", [too_large()], errors.TransportError, 1),
    ("HTML instead of JSON is retried", [(200, {}, b"<html>"), OK], None, 2),
    ("JSON of the wrong shape is not", [(200, {}, b'{"ok": 3}')], errors.DecodeError, 1),
    ("bytes that are not UTF-8", [(200, {}, b'{"ok": "\xff"}')], errors.DecodeError, 1),
]


@pytest.mark.parametrize(
    ("answers", "raised", "sends"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
async def test_engine_table(
    answers: list[Answer | errors.TransportError], raised: type[Exception] | None, sends: int
) -> None:
    engine, transport, limiter = make_engine(script(*answers))
    if raised is None:
        assert await engine.get("https://h/x", {}, decode_ok, what="t") == Ok(True)
    else:
        with pytest.raises(raised) as caught:
            await engine.get("https://h/x", {}, decode_ok, what="t")
        assert type(caught.value) is raised
    assert len(transport.requests) == sends
    # Every send took one rate slot and gave it back once.
    assert limiter.acquired == len(limiter.released) == sends
    assert engine.stats.retries == sends - 1


async def test_a_decode_error_chains_the_decoders_error_and_keeps_the_body() -> None:
    engine, _, _ = make_engine(script((200, {}, b'{"ok": 3}')))
    with pytest.raises(errors.DecodeError) as caught:
        await engine.get("https://h/x", {}, decode_ok, what="t")
    assert isinstance(caught.value.__cause__, msgspec.ValidationError)
    assert caught.value.status == 200 and caught.value.body == b'{"ok": 3}'


async def test_a_401_asks_the_provider_once_and_sends_the_new_token() -> None:
    tokens = iter(["old", "new", "newer"])

    async def provider() -> str:
        return next(tokens)

    def handler(request: Request) -> Answer:
        if request.headers["Authorization"] == "Bearer old":
            return (401, {}, b"")
        return OK

    engine, transport, limiter = make_engine(handler, token=provider)
    assert await engine.get("https://h/x", {}, decode_ok, what="t") == Ok(True)
    assert [r.headers["Authorization"] for r in transport.requests] == [
        "Bearer old",
        "Bearer new",
    ]
    assert engine.stats.retries == 0  # a refresh is not a retry
    assert limiter.acquired == 2


async def test_a_second_401_after_the_refresh_is_raised() -> None:
    async def provider() -> str:
        return "t"

    engine, transport, _ = make_engine(script((401, {}, b""), (401, {}, b"")), token=provider)
    with pytest.raises(errors.AuthenticationError):
        await engine.get("https://h/x", {}, decode_ok, what="t")
    assert len(transport.requests) == 2


async def test_the_reply_budget_reaches_the_stats_and_429s_are_counted() -> None:
    # (A Retry-After of 0 or below counts as absent: 0.01 keeps the test quick.)
    engine, _, limiter = make_engine(script((429, {"Retry-After": "0.01", **BUDGET}, b""), OK))
    await engine.get("https://h/x", {}, decode_ok, what="t")
    assert engine.stats.throttled == 1
    assert engine.stats.server_remaining == 7
    assert engine.stats.server_max_requests == 100
    assert engine.stats.server_interval == 10.0
    first = limiter.released[0]
    assert first is not None and first.status == 429 and first.retry_after == 0.01


async def test_a_post_carries_its_form_or_json_body_to_the_transport() -> None:
    engine, transport, _ = make_engine(script(OK, OK))
    form: Mapping[str, str] = {"companyId": "c1", "locationId": "l1"}
    await engine.request("POST", "https://h/oauth/locationToken", decode_ok, what="t", form=form)
    await engine.request("POST", "https://h/y", decode_ok, what="t", json=b'{"a": 1}')
    first, second = transport.requests
    assert (first.method, first.form, first.json) == ("POST", form, None)
    assert (second.method, second.form, second.json) == ("POST", None, b'{"a": 1}')


async def test_the_engine_refuses_to_send_before_the_client_opens() -> None:
    engine, transport, _ = make_engine(script(OK))
    engine.limiter = None
    with pytest.raises(RuntimeError, match="not open"):
        await engine.get("https://h/x", {}, decode_ok, what="t")
    assert transport.requests == []


async def test_the_concurrency_slot_is_given_back_whatever_happens() -> None:
    engine, _, _ = make_engine(script(unreachable(), (404, {}, b""), OK), attempts=1)
    for _ in range(2):
        with pytest.raises(errors.GHLError):
            await engine.get("https://h/x", {}, decode_ok, what="t")
    await engine.get("https://h/x", {}, decode_ok, what="t")
    capacity = engine.capacity
    assert isinstance(capacity, anyio.CapacityLimiter)  # make_engine's
    assert capacity.borrowed_tokens == 0


# -- the concurrency slots ----------------------------------------------------------


async def test_slots_bound_requests_in_flight_and_serve_waiters_in_order() -> None:
    slots = Slots(2)
    order: list[int] = []
    in_flight = peak = 0

    async def one(number: int) -> None:
        nonlocal in_flight, peak
        await slots.acquire()
        order.append(number)
        in_flight += 1
        peak = max(peak, in_flight)
        await anyio.sleep(0.01)
        in_flight -= 1
        slots.release()

    async with anyio.create_task_group() as tg:
        for number in range(6):
            tg.start_soon(one, number)
            await anyio.lowlevel.checkpoint()  # so that they queue in this order
    assert peak == 2
    assert order == list(range(6))
    assert slots.borrowed_tokens == 0


async def test_slots_take_no_free_slot_past_a_waiter() -> None:
    slots = Slots(1)
    slots.acquire_nowait()
    async with anyio.create_task_group() as tg:
        tg.start_soon(slots.acquire)
        await anyio.lowlevel.checkpoint()  # it waits in line
        slots.release()  # the slot is the waiter's now, not free
        with pytest.raises(anyio.WouldBlock):
            slots.acquire_nowait()
    assert slots.borrowed_tokens == 1
    slots.release()
    assert slots.borrowed_tokens == 0


async def test_a_cancelled_waiter_passes_on_the_slot_it_was_handed() -> None:
    slots = Slots(1)
    slots.acquire_nowait()
    first = asyncio.ensure_future(slots.acquire())
    second = asyncio.ensure_future(slots.acquire())
    await asyncio.sleep(0)  # both wait in line
    slots.release()  # handed to the first...
    first.cancel()  # ...which is cancelled before it runs
    await asyncio.wait({first})
    assert first.cancelled()
    await asyncio.wait_for(second, 1)  # the slot went on to the second
    assert slots.borrowed_tokens == 1
    slots.release()
    assert slots.borrowed_tokens == 0


async def test_a_waiter_cancelled_in_line_leaves_the_line() -> None:
    slots = Slots(1)
    slots.acquire_nowait()
    with anyio.move_on_after(0.01):
        await slots.acquire()
    slots.release()
    slots.acquire_nowait()  # free again: nobody left in line
    slots.release()
    assert slots.borrowed_tokens == 0


async def test_slots_that_grow_go_to_waiters_and_that_shrink_are_not_handed_on() -> None:
    slots = Slots(2)
    slots.acquire_nowait()
    slots.acquire_nowait()
    waiters = [asyncio.ensure_future(slots.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    assert slots.waiting == 3
    slots.resize(3)  # one more: the first waiter has it at once
    await asyncio.sleep(0)
    assert waiters[0].done() and slots.borrowed_tokens == 3 and slots.waiting == 2
    slots.resize(1)  # three held past a bound of one
    slots.release()
    slots.release()
    await asyncio.sleep(0)
    assert slots.borrowed_tokens == 1 and slots.waiting == 2  # nothing handed on
    slots.release()  # under the bound again: the next waiter's turn
    await asyncio.sleep(0)
    assert waiters[1].done() and not waiters[2].done()
    assert slots.borrowed_tokens == 1
    with pytest.raises(ValueError):
        slots.resize(0)
    waiters[2].cancel()
    await asyncio.wait({waiters[2]})
    slots.release()
    assert slots.borrowed_tokens == 0 and slots.waiting == 0


# -- the one paging loop ------------------------------------------------------------


def pages_of(*bodies: bytes) -> Callable[[Request], Answer]:
    return script(*[(200, {}, body) for body in bodies])


def messages(ids: str, last: str | None, more: bool = True) -> bytes:
    page = {"messages": [{"id": i} for i in ids.split()], "nextPage": more}
    if last is not None:
        page["lastMessageId"] = last
    return msgspec.json.encode({"messages": page})


def search(*pairs: tuple[str, int]) -> bytes:
    found = [{"id": i, "sort": [s]} for i, s in pairs]
    return msgspec.json.encode({"conversations": found, "total": 99})


async def collect(pages: AsyncGenerator[Any, None]) -> list[Any]:
    async with aclosing(pages):
        return [page async for page in pages]


def messages_pages(engine: Engine, cursor: str | None = None) -> AsyncGenerator[Any, None]:
    params = {"limit": "2"} if cursor is None else {"limit": "2", "lastMessageId": cursor}
    return paginate(
        engine,
        "https://h/conversations/c1/messages",
        params,
        decode_page,
        next_messages_params,
        what="conversation c1",
        conversation_id="c1",
        check_cursor=lambda c: check_id(c, "the server's lastMessageId"),
    )


async def test_paging_follows_the_cursor_and_sends_it_back() -> None:
    engine, transport, _ = make_engine(
        pages_of(messages("a b", "b"), messages("c", None, more=False))
    )
    got = await collect(messages_pages(engine))
    assert [[m.id for m in p.messages] for p in got] == [["a", "b"], ["c"]]
    assert [r.params.get("lastMessageId") for r in transport.requests] == [None, "b"]


@pytest.mark.parametrize(
    ("start", "second_cursor", "resume"),
    [(None, "b", "b"), ("z", "z", "b"), ("z", "b", "b")],
    ids=["the same cursor twice", "the cursor started from", "a cursor seen before"],
)
async def test_a_repeated_messages_cursor_is_a_located_pagination_error(
    start: str | None, second_cursor: str, resume: str
) -> None:
    engine, _, _ = make_engine(pages_of(messages("a b", "b"), messages("c d", second_cursor)))
    handed: list[Any] = []
    with pytest.raises(errors.PaginationError) as caught:
        async with aclosing(messages_pages(engine, start)) as pages:
            async for page in pages:
                handed.append(page)
    # The first page went out; the second did not, so its request's cursor is the resume.
    assert len(handed) == 1
    assert (caught.value.conversation_id, caught.value.last_message_id) == ("c1", resume)


async def test_a_cursor_that_is_not_an_id_fails_before_its_page_goes_out() -> None:
    engine, _, _ = make_engine(pages_of(messages("a b", "../x")))
    handed: list[Any] = []
    with pytest.raises(errors.DecodeError) as caught:
        async with aclosing(messages_pages(engine)) as pages:
            async for page in pages:
                handed.append(page)
    assert handed == []
    assert (caught.value.conversation_id, caught.value.last_message_id) == ("c1", None)
    assert isinstance(caught.value.__cause__, ValueError)


async def test_an_error_mid_listing_carries_the_cursor_to_resume_from() -> None:
    engine, _, _ = make_engine(script((200, {}, messages("a b", "b")), (404, {}, b"")), attempts=1)
    with pytest.raises(errors.NotFoundError) as caught:
        await collect(messages_pages(engine))
    assert (caught.value.conversation_id, caught.value.last_message_id) == ("c1", "b")


async def test_a_repeated_search_cursor_raises_too_instead_of_stopping() -> None:
    engine, _, _ = make_engine(pages_of(search(("a", 9), ("b", 7)), search(("c", 8), ("d", 7))))
    pages = paginate(
        engine,
        "https://h/conversations/search",
        {"locationId": "l1", "limit": "2"},
        decode_conversations,
        next_search_params,
        what="location l1 search",
    )
    with pytest.raises(errors.PaginationError, match="repeated the cursor '7'"):
        await collect(pages)


async def test_an_export_pages_through_its_cursor_and_stops_on_null() -> None:
    def export(ids: str, cursor: str | None) -> bytes:
        return msgspec.json.encode(
            {"messages": [{"id": i} for i in ids.split()], "nextCursor": cursor, "total": 3}
        )

    engine, transport, _ = make_engine(pages_of(export("a b", "c1"), export("c", None)))
    got = await collect(
        paginate(
            engine,
            "https://h/conversations/messages/export",
            {"locationId": "l1", "limit": "2"},
            decode_export_page,
            next_export_params,
            what="location l1 export",
        )
    )
    assert [len(p.messages) for p in got] == [2, 1]
    assert [r.params.get("cursor") for r in transport.requests] == [None, "c1"]
