"""Fan-out across conversations: order, laziness, backpressure, cancellation, errors."""

from __future__ import annotations

import asyncio
import gc
import itertools
from collections import defaultdict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import aclosing

import anyio
import pytest

from ghl_async import Client, RateLimit, RetryPolicy, errors
from ghl_async._http import fanout as _fanout
from ghl_async.testing import Faults
from tests.support.helpers import ServerFactory, open_connections, settle

_SpawnFn = Callable[[Awaitable[None]], asyncio.Task[None]]

pytestmark = pytest.mark.anyio

FAST_BUDGET = RateLimit(100_000, 1.0)


async def test_every_message_once_in_order_and_conversations_interleave(
    server: ServerFactory,
) -> None:
    async with server(
        conversations=25, messages=(0, 320), seed=21, rate_limit=FAST_BUDGET
    ) as fake:
        async with Client(fake.token, base_url=fake.url, max_concurrency=8) as client:
            got: dict[str, list[str]] = defaultdict(list)
            order: list[str] = []
            async for conversation_id, message in client.fan_out(
                fake.conversation_ids, page_size=40
            ):
                got[conversation_id].append(message.id)
                order.append(conversation_id)
        for conversation_id in fake.conversation_ids:
            assert got.get(conversation_id, []) == [
                m["id"] for m in fake.messages(conversation_id)
            ]
        # Interleaved: some conversation starts before an earlier one has finished.
        switches = sum(1 for a, b in itertools.pairwise(order) if a != b)
        assert switches > len(got)
        assert client.stats.messages == fake.total_messages


async def test_ids_are_read_lazily(server: ServerFactory) -> None:
    async with server(conversations=5, messages=5, rate_limit=FAST_BUDGET) as fake:
        pulled = 0

        def ids() -> Iterator[str]:
            nonlocal pulled
            for i in range(1_000_000):
                pulled += 1
                yield fake.conversation_ids[i % 5]

        async with Client(fake.token, base_url=fake.url, max_concurrency=4) as client:
            async for _ in client.fan_out(ids()):
                break
        assert pulled <= 4 + 4 * 3  # a handful per worker, never the million


async def test_an_async_iterable_of_ids_works(server: ServerFactory) -> None:
    async with server(conversations=6, messages=(1, 30), rate_limit=FAST_BUDGET) as fake:

        async def ids() -> AsyncIterator[str]:
            for conversation_id in fake.conversation_ids:
                await asyncio.sleep(0)
                yield conversation_id

        async with Client(fake.token, base_url=fake.url) as client:
            seen = {c async for c, _ in client.fan_out_pages(ids())}
        assert seen == set(fake.conversation_ids)


async def test_a_slow_consumer_slows_fetching(server: ServerFactory) -> None:
    async with server(conversations=40, messages=200, rate_limit=FAST_BUDGET) as fake:
        async with Client(fake.token, base_url=fake.url, max_concurrency=4) as client:
            async with aclosing(
                client.fan_out_pages(fake.conversation_ids, page_size=10)
            ) as pages:
                async for _ in pages:
                    await asyncio.sleep(0.3)
                    break
            requested = fake.stats.requests
        # buffer (2) + one page held by each of 4 workers + the one consumed + in flight
        assert requested <= 2 + 4 + 1 + 4
        assert fake.total_messages // 10 > 100


async def _assert_clean(client: Client) -> None:
    await settle(lambda: not client._tasks and open_connections(client) == 0, timeout=1.0)


@pytest.mark.parametrize("how", ["break", "aclosing", "consumer-error"])
async def test_leaving_the_loop_stops_every_request_within_a_second(
    server: ServerFactory, how: str
) -> None:
    async with server(
        conversations=50, messages=(100, 300), rate_limit=FAST_BUDGET, faults=Faults(latency=0.02)
    ) as fake:
        async with Client(fake.token, base_url=fake.url, max_concurrency=16) as client:
            boom = RuntimeError("consumer failed")
            loop = asyncio.get_running_loop()
            if how == "break":
                async for _ in client.fan_out(fake.conversation_ids, page_size=5):
                    break
            elif how == "aclosing":
                async with aclosing(client.fan_out(fake.conversation_ids, page_size=5)) as it:
                    async for _ in it:
                        break
            else:
                with pytest.raises(RuntimeError) as caught:
                    async for _ in client.fan_out(fake.conversation_ids, page_size=5):
                        raise boom
                assert caught.value is boom
            stopped_at = loop.time()
            await _assert_clean(client)
            assert loop.time() - stopped_at < 1.0
            requests_then = fake.stats.requests
            await asyncio.sleep(0.2)
            assert fake.stats.requests == requests_then  # nothing new goes out
            # The client is still usable.
            page = await client.get_messages(fake.conversation_ids[0], limit=3)
            assert len(page.messages) == 3


async def test_cancelling_the_consumer_stops_the_fan_out(server: ServerFactory) -> None:
    async with server(
        conversations=50, messages=(100, 300), rate_limit=FAST_BUDGET, faults=Faults(latency=0.02)
    ) as fake:
        async with Client(fake.token, base_url=fake.url) as client:
            received = 0

            async def consume() -> None:
                nonlocal received
                async for _ in client.fan_out(fake.conversation_ids, page_size=5):
                    received += 1

            task = asyncio.create_task(consume())
            await settle(lambda: received > 20, timeout=5.0)
            loop = asyncio.get_running_loop()
            started = loop.time()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await _assert_clean(client)
            assert loop.time() - started < 1.0
            assert (await client.get_messages(fake.conversation_ids[1], limit=1)).messages


async def test_closing_the_client_stops_a_running_fan_out(server: ServerFactory) -> None:
    async with server(conversations=20, messages=300, rate_limit=FAST_BUDGET) as fake:
        client = Client(fake.token, base_url=fake.url)
        async with client:
            iterator = client.fan_out(fake.conversation_ids, page_size=5)
            await iterator.__anext__()
            assert client._tasks
        assert not client._tasks
        await iterator.aclose()


async def test_the_first_hard_error_stops_the_rest_and_is_raised_as_itself(
    server: ServerFactory,
) -> None:
    async with server(conversations=30, messages=(50, 120), rate_limit=FAST_BUDGET) as fake:
        ids = [*fake.conversation_ids[:3], "missingConversation", *fake.conversation_ids[3:]]
        async with Client(fake.token, base_url=fake.url, max_concurrency=4) as client:
            with pytest.raises(errors.NotFoundError) as caught:
                async for _ in client.fan_out(ids, page_size=10):
                    pass
            assert caught.value.conversation_id == "missingConversation"
            await _assert_clean(client)
        assert fake.stats.requests < sum(len(fake.messages(c)) // 10 + 1 for c in ids[4:])


async def test_return_exceptions_yields_the_error_and_goes_on(server: ServerFactory) -> None:
    async with server(conversations=6, messages=(60, 90), rate_limit=FAST_BUDGET) as fake:
        victim = fake.conversation_ids[2]
        expected = [m["id"] for m in fake.messages(victim)]
        # Two pages in, the victim's third request fails for good (403 is never retried).
        seen: dict[str, list[str]] = defaultdict(list)
        failures: list[tuple[str, errors.GHLError]] = []
        async with Client(fake.token, base_url=fake.url, max_concurrency=1) as client:
            async for conversation_id, item in client.fan_out(
                fake.conversation_ids, page_size=20, return_exceptions=True
            ):
                if isinstance(item, errors.GHLError):
                    failures.append((conversation_id, item))
                    continue
                seen[conversation_id].append(item.id)
                if conversation_id == victim and len(seen[victim]) == 40:
                    fake.inject("403", conversation_id=victim)
        assert [c for c, _ in failures] == [victim]
        error = failures[0][1]
        assert isinstance(error, errors.PermissionDeniedError)
        assert error.last_message_id == expected[39]
        assert seen[victim] == expected[:40]
        for other in fake.conversation_ids:
            if other != victim:
                assert seen[other] == [m["id"] for m in fake.messages(other)]
        # And resuming from the cursor finishes the conversation.
        async with Client(fake.token, base_url=fake.url) as client:
            rest = [
                m.id
                async for m in client.iter_messages(victim, last_message_id=error.last_message_id)
            ]
        assert seen[victim] + rest == expected


async def test_every_message_exactly_once_under_mixed_faults(server: ServerFactory) -> None:
    faults = Faults(
        server_error=0.06, reset=0.06, truncate=0.06, html=0.06, slow=0.03, slow_seconds=0.5
    )
    async with server(
        conversations=30, messages=(0, 400), seed=23, faults=faults, rate_limit=FAST_BUDGET
    ) as fake:
        retry = RetryPolicy(max_attempts=30, backoff_base=0.001, backoff_cap=0.01)
        async with Client(fake.token, base_url=fake.url, retry=retry, timeout=0.25) as client:
            got: dict[str, list[str]] = defaultdict(list)
            async for conversation_id, message in client.fan_out(
                fake.conversation_ids, page_size=25
            ):
                got[conversation_id].append(message.id)
        assert sum(fake.stats.faults.values()) > 20
        assert set(fake.stats.faults) == {"server_error", "reset", "truncate", "html", "slow"}
        for conversation_id in fake.conversation_ids:
            assert got.get(conversation_id, []) == [
                m["id"] for m in fake.messages(conversation_id)
            ]
        assert client.stats.retries > 0


async def test_on_page_sees_every_page(server: ServerFactory) -> None:
    async with server(conversations=5, messages=(10, 60), rate_limit=FAST_BUDGET) as fake:
        seen: list[tuple[str, int]] = []
        async with Client(fake.token, base_url=fake.url) as client:
            count = 0
            async for _ in client.fan_out(
                fake.conversation_ids,
                page_size=20,
                on_page=lambda c, p: seen.append((c, len(p.messages))),
            ):
                count += 1
        assert sum(n for _, n in seen) == count == fake.total_messages


async def test_bad_fan_out_arguments(server: ServerFactory) -> None:
    async with server(conversations=1) as fake:
        async with Client(fake.token, base_url=fake.url) as client:
            with pytest.raises(TypeError):
                client.fan_out("notAList")
            with pytest.raises(ValueError):
                client.fan_out(["a"], concurrency=0)
            with pytest.raises(TypeError):
                client.fan_out(["a"], concurrency=2.5)  # type: ignore[call-overload]
            with pytest.raises(ValueError, match="not a HighLevel id"):
                async for _ in client.fan_out(["../etc"]):
                    pass
        assert fake.stats.requests == 0
    closed = Client("t")
    await closed.aclose()
    with pytest.raises(RuntimeError, match="the client is closed"):
        closed.fan_out(["a"])


async def test_a_refused_token_stops_the_fan_out_even_when_returning_exceptions(
    server: ServerFactory,
) -> None:
    async with server(conversations=40, messages=5, rate_limit=FAST_BUDGET) as fake:
        async with Client("not-the-token", base_url=fake.url, max_concurrency=4) as client:
            with pytest.raises(errors.AuthenticationError):
                async for _ in client.fan_out(fake.conversation_ids, return_exceptions=True):
                    pass
        assert fake.stats.requests <= 4


@pytest.mark.parametrize("return_exceptions", [False, True])
async def test_an_error_of_the_callers_own_comes_out_as_itself(
    server: ServerFactory, return_exceptions: bool
) -> None:
    async with server(conversations=10, messages=5, rate_limit=FAST_BUDGET) as fake:
        mine = RuntimeError("the vault is sealed")

        async def provider() -> str:
            raise mine

        async with Client(provider, base_url=fake.url, max_concurrency=4) as client:
            with pytest.raises(RuntimeError) as caught:
                async for _ in client.fan_out(
                    fake.conversation_ids,
                    return_exceptions=return_exceptions,  # type: ignore[call-overload]
                ):
                    pass
            assert caught.value is mine
            await _assert_clean(client)

        def broken_ids() -> Iterator[str]:
            yield fake.conversation_ids[0]
            raise KeyError("from the caller's id source")

        async with Client(fake.token, base_url=fake.url, max_concurrency=4) as client:
            with pytest.raises(KeyError, match="id source"):
                async for _ in client.fan_out(
                    broken_ids(),
                    return_exceptions=return_exceptions,  # type: ignore[call-overload]
                ):
                    pass


async def test_a_closed_client_raises_one_clear_runtime_error(server: ServerFactory) -> None:
    async with server(conversations=10, messages=5, rate_limit=FAST_BUDGET) as fake:
        async with Client(fake.token, base_url=fake.url) as client:
            pass
        with pytest.raises(RuntimeError, match="the client is closed"):
            client.fan_out(fake.conversation_ids)
        # Closed while a fan-out waits to start: still one RuntimeError, no group.
        async with Client(fake.token, base_url=fake.url, max_concurrency=4) as client:
            pending = client.fan_out_pages(fake.conversation_ids, return_exceptions=True)
        with pytest.raises(RuntimeError, match="the client is closed"):
            async for _ in pending:
                pass
        assert fake.stats.requests == 0


async def test_cancelling_300_consumers_at_once_logs_nothing(
    server: ServerFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Closing waits a moment for the producers, then leaves them to finish on their
    # own, as a loaded machine does with 300 at once; what they end with must still
    # be retrieved.
    monkeypatch.setattr(_fanout, "_CLOSE_WAIT", 0.0)
    async with server(
        conversations=30, messages=300, rate_limit=FAST_BUDGET, faults=Faults(latency=0.01)
    ) as fake:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _, context: reported.append(context))
        try:
            async with Client(fake.token, base_url=fake.url, max_concurrency=64) as client:
                started = 0

                async def consume(offset: int) -> None:
                    nonlocal started
                    ids = fake.conversation_ids[offset % 30 :] + fake.conversation_ids
                    first = True
                    async for _ in client.fan_out(ids, page_size=5, concurrency=2):
                        if first:
                            started += 1
                            first = False
                        # A slow consumer: its producers fill the buffer and wait.
                        await asyncio.sleep(0.01 * (offset % 7))

                tasks = [asyncio.create_task(consume(i)) for i in range(300)]
                await settle(lambda: started == 300, timeout=60.0)
                for task in tasks:
                    task.cancel()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                assert all(isinstance(r, asyncio.CancelledError) for r in results)
                await settle(lambda: not client._tasks, timeout=10.0)
            del tasks, results
            gc.collect()
            await asyncio.sleep(0.05)
        finally:
            loop.set_exception_handler(None)
        assert reported == []
        assert "never retrieved" not in caplog.text


# -- the fan-out core over any page source -------------------------------------------


def _spawn_into(tasks: set[asyncio.Task[None]]) -> _SpawnFn:
    def spawn(work: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        tasks.add(task)
        return task

    return spawn


async def test_any_page_type_fans_out_and_a_fatal_error_class_stops_it() -> None:
    # Pages here are plain ints: the core knows nothing of MessagesPage.
    async def numbers(item_id: str) -> AsyncGenerator[int, None]:
        if item_id == "bad":
            raise errors.NotFoundError("gone", status=404)
        for n in range(3):
            yield n

    options = _fanout.FanOutOptions(concurrency=2, return_exceptions=True, buffer=2)
    tasks: set[asyncio.Task[None]] = set()
    got: list[tuple[str, int | errors.GHLError]] = []
    items = _fanout.run_fan_out(["a", "bad", "b"], numbers, options, _spawn_into(tasks))
    async with aclosing(items):
        async for item in items:
            got.append(item)
    assert sorted((i, n) for i, n in got if isinstance(n, int)) == [
        (i, n) for i in "ab" for n in range(3)
    ]
    [(bad, error)] = [(i, e) for i, e in got if isinstance(e, errors.GHLError)]
    assert bad == "bad" and isinstance(error, errors.NotFoundError)
    assert error.conversation_id == "bad"

    # An error class that says it stops a fan-out does, even when returning errors.
    class Fatal(errors.GHLError):
        stops_fan_out = True

    async def fatal(item_id: str) -> AsyncGenerator[int, None]:
        raise Fatal("no")
        yield 0  # pragma: no cover - makes this an async generator

    items = _fanout.run_fan_out(["a", "b"], fatal, options, _spawn_into(tasks))
    with pytest.raises(Fatal):
        async with aclosing(items):
            async for _ in items:
                pass
    await asyncio.gather(*tasks, return_exceptions=True)


def test_only_a_refused_token_and_a_spent_day_stop_a_fan_out() -> None:
    stopping = {
        cls.__name__
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.GHLError) and cls.stops_fan_out
    }
    assert stopping == {"AuthenticationError", "DailyLimitExceeded"}


# -- the hand-off between the producers and the consumer -----------------------------


async def test_the_hand_off_keeps_order_and_serves_waiting_producers_in_turn() -> None:
    stream = _fanout.Handoff[int](2)
    stream.send_nowait(0)
    stream.send_nowait(1)
    with pytest.raises(anyio.WouldBlock):
        stream.send_nowait(2)
    waiting = [asyncio.ensure_future(stream.send(n)) for n in (2, 3)]
    await asyncio.sleep(0)  # both wait for room, in this order
    got = [stream.receive_nowait() for _ in range(4)]
    await asyncio.wait(waiting)
    assert got == [0, 1, 2, 3]
    assert all(task.result() is None for task in waiting)


async def test_a_hand_off_of_size_zero_passes_each_item_straight_through() -> None:
    stream = _fanout.Handoff[str](0)
    receiving = asyncio.ensure_future(stream.receive())
    await asyncio.sleep(0)
    await asyncio.wait_for(stream.send("page"), 1)
    assert await asyncio.wait_for(receiving, 1) == "page"
    async with stream:  # the producers are done
        pass
    with pytest.raises(anyio.EndOfStream):
        await stream.receive()


async def test_a_producer_cancelled_while_waiting_for_room_withdraws_its_item() -> None:
    stream = _fanout.Handoff[int](1)
    stream.send_nowait(0)
    cancelled = asyncio.ensure_future(stream.send(1))
    later = asyncio.ensure_future(stream.send(2))
    await asyncio.sleep(0)
    cancelled.cancel()  # its future is cancelled now, its cleanup runs later
    assert stream.receive_nowait() == 0
    assert stream.receive_nowait() == 2  # not 1: that one was withdrawn
    await asyncio.wait({cancelled, later})
    assert cancelled.cancelled() and later.result() is None


async def test_producers_learn_at_once_that_the_consumer_has_gone() -> None:
    stream = _fanout.Handoff[int](1)
    stream.send_nowait(0)
    waiting = asyncio.ensure_future(stream.send(1))
    await asyncio.sleep(0)
    stream.close()
    with pytest.raises(anyio.BrokenResourceError):
        await asyncio.wait_for(waiting, 1)
    with pytest.raises(anyio.BrokenResourceError):
        stream.send_nowait(2)


async def test_a_message_stream_sends_throws_and_closes_like_an_async_generator(
    server: ServerFactory,
) -> None:
    async with server(conversations=6, messages=(10, 30), rate_limit=FAST_BUDGET) as fake:
        async with Client(fake.token, base_url=fake.url, max_concurrency=4) as client:
            stream = client.fan_out(fake.conversation_ids, page_size=7)
            assert isinstance(stream, AsyncGenerator)
            first = await stream.asend(None)
            second = await stream.__anext__()
            assert first[0] == second[0]  # a page is handed out in order, whole
            with pytest.raises(TypeError):
                await stream.asend(1)  # type: ignore[arg-type]
            with pytest.raises(KeyError):
                await stream.athrow(KeyError("stop"))
            with pytest.raises(StopAsyncIteration):
                await stream.__anext__()  # closed by the throw: its fan-out too
            await _assert_clean(client)
            # aclose twice is fine, and ends iteration
            again = client.fan_out(fake.conversation_ids, page_size=7)
            async for _ in again:
                break
            await again.aclose()
            await again.aclose()
            assert [x async for x in again] == []
            await _assert_clean(client)
            # Pages flattened are the messages, in order, every one once.
            pages = [
                (c, [m.id for m in p.messages])
                async for c, p in client.fan_out_pages(fake.conversation_ids, concurrency=1)
            ]
            messages = [
                (c, m.id) async for c, m in client.fan_out(fake.conversation_ids, concurrency=1)
            ]
            assert messages == [(c, i) for c, ids in pages for i in ids]


async def test_a_message_stream_passes_a_conversations_error_on(server: ServerFactory) -> None:
    async with server(conversations=4, messages=(5, 20), rate_limit=FAST_BUDGET) as fake:
        fake.inject("404", conversation_id=fake.conversation_ids[1])
        async with Client(fake.token, base_url=fake.url) as client:
            items = [
                item
                async for item in client.fan_out(fake.conversation_ids, return_exceptions=True)
            ]
        failed = [(c, m) for c, m in items if isinstance(m, errors.GHLError)]
        assert [(c, type(m)) for c, m in failed] == [
            (fake.conversation_ids[1], errors.NotFoundError)
        ]
        assert len(items) - 1 == sum(
            len(fake.messages(c)) for c in fake.conversation_ids if c != fake.conversation_ids[1]
        )
