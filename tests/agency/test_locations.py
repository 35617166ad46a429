"""Locations: an agency's many locations in one process, against FakeAgency over a socket.

The pairs path (conversations named by the caller, paged one by one) is what exercises
the page cap and the in-flight cap with many small pages; whole locations (the export
route) are in test_whole_locations.py.
"""

from __future__ import annotations

import asyncio
import gc
import time
import types
from collections import Counter
from collections.abc import Iterator
from contextlib import aclosing

import aiohttp
import anyio
import pytest
from anyio import wait_all_tasks_blocked
from hypothesis import given
from hypothesis import strategies as st

from ghl_async import AgencyToken, Locations, MessagesPage, RateLimit, errors, location_concurrency
from ghl_async.agency.inflight import InFlight, next_in_flight
from ghl_async.agency.locations import workers_per_location
from ghl_async.oauth import TOKEN_PATH, decode_access_token, refresh_token_form
from ghl_async.testing import FakeAgency

pytestmark = pytest.mark.anyio

BUDGET = RateLimit(20, 1.0)


def expected(agency: FakeAgency) -> Counter[tuple[str, str, str]]:
    """Every message of every location, once."""
    return Counter(
        (location_id, conversation_id, message["id"])
        for location_id, fake in agency.locations.items()
        for conversation_id in fake.conversation_ids
        for message in fake.messages(conversation_id)
    )


def pairs_of(agency: FakeAgency) -> Iterator[tuple[str, str]]:
    for location_id, fake in agency.locations.items():
        for conversation_id in fake.conversation_ids:
            yield location_id, conversation_id


@pytest.mark.parametrize(
    ("rate", "latency", "wanted"),
    [
        (RateLimit(100, 10.0), 0.1, 2),  # HighLevel's budget: 10/s needs two in flight
        (None, 0.1, 2),
        (RateLimit(100, 1.0), 0.1, 11),
        (RateLimit(100, 1.0), 0.005, 2),
        (RateLimit(1, 60.0), 0.3, 2),
        (RateLimit(10_000, 1.0), 0.1, 16),  # the ceiling
    ],
)
def test_location_concurrency_follows_the_budget(
    rate: RateLimit | None, latency: float, wanted: int
) -> None:
    assert location_concurrency(rate, latency=latency) == wanted


async def test_twenty_locations_every_message_once_no_429_within_the_page_cap() -> None:
    async with FakeAgency(
        20, conversations=4, messages=(5, 60), seed=3, rate_limit=BUDGET
    ) as agency:
        tokens = {lid: fake.token for lid, fake in agency.locations.items()}
        seen: Counter[tuple[str, str, str]] = Counter()
        started = time.monotonic()
        async with Locations(tokens, base_url=agency.url, rate_limit=BUDGET, max_pages=6) as pool:
            async for location_id, conversation_id, message in pool.fan_out(
                list(pairs_of(agency)), page_size=10
            ):
                assert pool.pages_held <= 6
                seen[location_id, conversation_id, message.id] += 1
                await asyncio.sleep(0)  # a consumer that lets the producers run ahead
            assert pool.peak_pages_held == 6  # the cap, reached and never passed
            assert pool.pages_held == 0
            clients = [await pool.client(lid) for lid in agency.location_ids]
            requests = sum(client.stats.requests for client in clients)
        elapsed = time.monotonic() - started
        assert seen == expected(agency)
        assert agency.throttled == 0
        assert max(agency.max_in_window.values()) <= BUDGET.max_requests
        # More requests than one budget allows in the time: the budgets are separate.
        assert requests > BUDGET.per_second * (elapsed + 1) * 3


async def test_pairs_with_an_async_token_provider() -> None:
    async with FakeAgency(5, conversations=3, seed=4) as agency:
        asked: Counter[str] = Counter()

        async def token(location_id: str) -> str:
            asked[location_id] += 1
            return agency.locations[location_id].token

        pairs = list(pairs_of(agency))
        seen: Counter[tuple[str, str, str]] = Counter()
        async with Locations(token, base_url=agency.url) as pool:
            async for location_id, conversation_id, message in pool.fan_out(pairs):
                seen[location_id, conversation_id, message.id] += 1
        assert seen == expected(agency)
        assert asked == Counter(dict.fromkeys(agency.location_ids, 1))


async def test_agency_token_lists_installed_locations_and_mints_one_token_each() -> None:
    async with FakeAgency(7, uninstalled=3, conversations=2, seed=5) as agency:
        auth = AgencyToken(agency.agency_token, company_id=agency.company_id, app_id=agency.app_id)
        assert agency.agency_token not in repr(auth)
        async with Locations(auth, base_url=agency.url) as pool:
            listed = [location.id async for location in pool.installed_locations(page_size=3)]
            assert listed == agency.location_ids
            seen: Counter[tuple[str, str | None, str]] = Counter()
            async for location_id, conversation_id, message in pool.fan_out():
                seen[location_id, conversation_id, message.id] += 1
            assert agency.agency_token not in repr(pool)
        assert seen == expected(agency)
        assert agency.stats.location_tokens == Counter(dict.fromkeys(agency.location_ids, 1))
        assert agency.stats.oauth["installed_locations"] == 3 + 1  # 7 in pages of 3, then of 100
        assert agency.stats.unauthorized == 0


async def test_location_tokens_are_single_flight_and_cached_until_they_expire() -> None:
    now = [0.0]
    async with FakeAgency(2, conversations=0, token_ttl=1000.0) as agency:
        auth = AgencyToken(agency.agency_token, company_id=agency.company_id)
        async with Locations(auth, base_url=agency.url, clock=lambda: now[0]) as pool:
            a, b = agency.location_ids
            tokens = await asyncio.gather(*(pool.location_token(a) for _ in range(20)))
            assert len(set(tokens)) == 1
            assert agency.stats.location_tokens[a] == 1
            assert await pool.location_token(a) == tokens[0]  # cached
            now[0] = 899.0  # before the margin (a tenth of the life here)
            assert await pool.location_token(a) == tokens[0]
            now[0] = 901.0
            fresh = await pool.location_token(a)
            assert fresh != tokens[0]
            assert agency.stats.location_tokens == Counter({a: 2})
            await pool.location_token(b)
            assert agency.stats.location_tokens == Counter({a: 2, b: 1})


async def test_an_expired_location_token_is_minted_again_after_its_401() -> None:
    async with (
        FakeAgency(4, conversations=2, messages=(1, 30), seed=6, token_ttl=600.0) as agency,
        aiohttp.ClientSession() as http,
    ):
        refreshes = [0]

        async def agency_token() -> str:
            # First the token the agency issued; after a 401 a refresh grant, as an app does.
            if refreshes[0] == 0:
                refreshes[0] += 1
                return agency.agency_token
            form = refresh_token_form(agency.client_id, agency.client_secret, agency.refresh_token)
            async with http.post(agency.url + TOKEN_PATH, data=form) as reply:
                refreshes[0] += 1
                return decode_access_token(await reply.read()).access_token

        auth = AgencyToken(agency_token, company_id=agency.company_id)
        async with Locations(auth, base_url=agency.url) as pool:
            first: Counter[tuple[str, str, str]] = Counter()
            async for item in pool.fan_out(list(pairs_of(agency))):
                first[item[0], item[1], item[2].id] += 1
            agency.advance(601.0)  # every token, the agency's included, has expired
            second: Counter[tuple[str, str, str]] = Counter()
            async for item in pool.fan_out(list(pairs_of(agency))):
                second[item[0], item[1], item[2].id] += 1
        assert first == second == expected(agency)
        assert agency.stats.location_tokens == Counter(dict.fromkeys(agency.location_ids, 2))
        assert agency.stats.refreshes == 1  # the agency token refreshed once, not per location
        assert agency.throttled == 0


async def test_every_location_shares_one_session_and_close_releases_it() -> None:
    async with FakeAgency(3, conversations=1) as agency:
        tokens = {lid: fake.token for lid, fake in agency.locations.items()}
        pool = Locations(tokens, base_url=agency.url)
        assert not pool.is_open
        async for _ in pool.fan_out(list(pairs_of(agency))):  # opens on first use
            pass
        clients = [await pool.client(lid) for lid in agency.location_ids]
        sessions = {id(client._engine.transport._session) for client in clients}  # type: ignore[attr-defined]
        assert sessions == {id(pool._transport._session)}
        assert sorted(pool.location_ids) == sorted(agency.location_ids)
        await pool.aclose()
        assert not pool.is_open
        assert pool.location_ids == []
        with pytest.raises(RuntimeError, match="closed"):
            async for _ in pool.fan_out(list(pairs_of(agency))):
                pass


async def test_a_caller_session_is_used_and_left_open() -> None:
    async with FakeAgency(2, conversations=2) as agency, aiohttp.ClientSession() as http:
        tokens = {lid: fake.token for lid, fake in agency.locations.items()}
        async with Locations(tokens, base_url=agency.url, session=http) as pool:
            count = sum([1 async for _ in pool.fan_out(list(pairs_of(agency)))])
        assert count == agency.total_messages
        assert not http.closed


@pytest.mark.parametrize("whole", [False, True], ids=["pairs", "whole-locations"])
async def test_cancelling_a_fan_out_stops_it_within_a_second(whole: bool) -> None:
    slow = RateLimit(2, 1.0)
    async with FakeAgency(10, conversations=5, messages=(30, 60), rate_limit=slow) as agency:
        tokens = {lid: fake.token for lid, fake in agency.locations.items()}
        async with Locations(tokens, base_url=agency.url, rate_limit=slow, max_pages=8) as pool:
            first = asyncio.Event()

            async def consume() -> None:
                items = (
                    pool.fan_out_pages(locations=agency.location_ids)
                    if whole
                    else pool.fan_out_pages(list(pairs_of(agency)), page_size=5)
                )
                async for _ in items:
                    first.set()

            task = asyncio.create_task(consume())
            await asyncio.wait_for(first.wait(), 10)
            started = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - started < 1.0
            assert pool.pages_held == 0
            assert pool._in_flight.held == 0
            assert not pool._tasks  # every producer has stopped
        assert agency.throttled == 0


async def test_errors_per_conversation_and_per_location() -> None:
    async with FakeAgency(3, conversations=2, seed=8) as agency:
        a, b, c = agency.location_ids
        tokens = {a: agency.locations[a].token, b: "pit-refused", c: agency.locations[c].token}
        pairs = [*pairs_of(agency), (a, "NoSuchConversation")]
        async with Locations(tokens, base_url=agency.url) as pool:
            failed: dict[tuple[str, str | None], errors.GHLError] = {}
            messages = 0
            async for location_id, conversation_id, item in pool.fan_out(
                pairs, return_exceptions=True
            ):
                if isinstance(item, errors.GHLError):
                    failed[location_id, conversation_id] = item
                else:
                    messages += 1
            assert set(failed) == {(a, "NoSuchConversation"), (b, failed_b(failed, b))}
            assert isinstance(failed[a, "NoSuchConversation"], errors.NotFoundError)
            assert isinstance(failed[b, failed_b(failed, b)], errors.AuthenticationError)
            assert messages == agency.total_messages - agency.locations[b].total_messages
            # Without return_exceptions the first error is raised.
            with pytest.raises(errors.GHLError):
                async for _ in pool.fan_out(pairs):
                    pass
            with pytest.raises(ValueError, match="no token"):
                async for _ in pool.fan_out([("UnknownLocation", "x")]):
                    pass


def failed_b(failed: dict[tuple[str, str | None], errors.GHLError], b: str) -> str | None:
    return next(conversation for location, conversation in failed if location == b)


def test_bad_arguments_are_refused_before_any_request() -> None:
    with pytest.raises(TypeError):
        Locations(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Locations({}, max_pages=0)
    with pytest.raises(ValueError):
        Locations(AgencyToken("t", company_id="a/b"))
    pool = Locations({})
    with pytest.raises(TypeError, match="pairs or locations"):
        pool.fan_out([("a", "b")], locations=["a"])  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="single str"):
        pool.fan_out(locations="abc")
    assert "<redacted>" in repr(pool)


def pages_alive_in_frames() -> int:
    """MessagesPage objects held by suspended generators and coroutines (their locals).

    Each page once, however many frames hold it (a page on its way to the consumer is in
    the frames of the worker sending it and of the send itself).
    """
    held: set[int] = set()
    for thing in gc.get_objects():
        if isinstance(thing, types.AsyncGeneratorType):
            frame = thing.ag_frame
        elif isinstance(thing, types.CoroutineType):
            frame = thing.cr_frame
        else:
            continue
        if frame is None:
            continue
        for value in frame.f_locals.values():
            items = value if isinstance(value, tuple) else (value,)
            held.update(id(item) for item in items if isinstance(item, MessagesPage))
    return len(held)


async def test_workers_waiting_for_room_keep_no_page_alive() -> None:
    async with FakeAgency(10, conversations=4, messages=(30, 60), seed=9) as agency:
        tokens = {lid: fake.token for lid, fake in agency.locations.items()}
        async with Locations(tokens, base_url=agency.url, concurrency=4, max_pages=3) as pool:
            pages = pool.fan_out_pages(list(pairs_of(agency)), page_size=5)
            async with aclosing(pages):
                seen = 0
                async for _ in pages:
                    seen += 1
                    if seen == 30:
                        await asyncio.sleep(0.2)  # 40 workers wait for the 3 slots
                        # No more pages than the cap: requested, buffered or in hand.
                        assert pages_alive_in_frames() <= pool.max_pages
                        break


@pytest.mark.parametrize(
    ("concurrency", "max_pages", "locations", "wanted"),
    [
        (11, 256, 300, 2),  # twice each location's share of the cap
        (11, 256, 10, 11),  # the budget's concurrency when the cap has room
        (11, 256, 100, 6),
        (2, 256, 1000, 1),  # never none
        (11, 256, None, 11),  # an async source: the count is unknown
        (4, 8, 0, 4),
    ],
)
def test_workers_per_location_share_the_page_cap(
    concurrency: int, max_pages: int, locations: int | None, wanted: int
) -> None:
    assert workers_per_location(concurrency, max_pages, locations) == wanted


@pytest.mark.parametrize(
    ("limit", "busy", "waiting", "wanted"),
    [
        (256, 0.97, True, 224),  # CPU-bound: an eighth fewer
        (256, 0.90, False, 224),  # whether or not requests wait
        (17, 0.99, True, 16),  # never below the floor
        (16, 0.99, True, 16),
        (64, 0.50, True, 68),  # time to spare and requests waiting: a sixteenth more
        (250, 0.10, True, 256),  # never above the ceiling
        (64, 0.50, False, 64),  # nobody waits: nothing to grow for
        (64, 0.85, True, 64),  # between the two marks: as it is
        (8, 0.99, True, 8),  # a ceiling under the floor is the floor
    ],
)
def test_requests_at_once_shrink_while_the_loop_is_busy_and_grow_back(
    limit: int, busy: float, waiting: bool, wanted: int
) -> None:
    ceiling = 8 if limit == 8 else 256
    assert next_in_flight(limit, busy, waiting, floor=16, ceiling=ceiling) == wanted


@given(
    limit=st.integers(1, 1000),
    busy=st.floats(0, 1.5, allow_nan=False),
    waiting=st.booleans(),
    floor=st.integers(1, 64),
    ceiling=st.integers(1, 1000),
)
def test_requests_at_once_stay_within_floor_and_ceiling(
    limit: int, busy: float, waiting: bool, floor: int, ceiling: int
) -> None:
    limit = min(limit, ceiling)
    after = next_in_flight(limit, busy, waiting, floor=floor, ceiling=ceiling)
    assert min(floor, ceiling) <= after <= ceiling
    if busy >= 0.9:
        assert after <= max(limit, min(floor, ceiling))  # never more while CPU-bound
    if not waiting:
        assert after <= max(limit, min(floor, ceiling))  # never more for nobody


class Clocks:
    """A wall clock and an event-loop thread CPU clock that tests move by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.cpu_now = 0.0

    def wall(self) -> float:
        return self.now

    def cpu(self) -> float:
        return self.cpu_now

    def run(self, seconds: float, busy: float) -> None:
        self.now += seconds
        self.cpu_now += seconds * busy


async def test_the_cap_follows_how_busy_the_loop_thread_was() -> None:
    clocks = Clocks()
    cap = InFlight(64, floor=16, wall=clocks.wall, cpu=clocks.cpu)
    for _ in range(20):  # CPU-bound: down to the floor, an eighth a period
        clocks.run(0.125, busy=1.0)
        await cap.take()
        cap.give()
    assert cap.limit == 16
    clocks.run(0.125, busy=0.3)  # time to spare, but nobody waits: as it is
    await cap.take()
    cap.give()
    assert cap.limit == 16
    clocks.run(5.0, busy=1.0)  # a long pause is not judged (the pool was idle)
    await cap.take()
    cap.give()
    assert cap.limit == 16

    async def hold(done: anyio.Event) -> None:
        await cap.take()
        await done.wait()
        cap.give()

    done = anyio.Event()
    async with anyio.create_task_group() as tg:
        for _ in range(20):  # 16 hold a slot, 4 wait for one
            tg.start_soon(hold, done)
        await wait_all_tasks_blocked()
        assert cap.limiter.waiting == 4
        clocks.run(0.125, busy=0.3)
        tg.start_soon(hold, done)  # its take() reconsiders: time to spare, 4 waiting
        await wait_all_tasks_blocked()
        assert cap.limit == 17
        assert cap.held == 17
        done.set()
    assert cap.held == 0
    assert cap.peak == 17


async def test_the_pool_asks_the_cap_for_every_page_request() -> None:
    fast = RateLimit(1000, 1.0)
    async with FakeAgency(
        10, conversations=4, messages=(30, 60), seed=11, rate_limit=fast
    ) as agency:
        tokens = {lid: fake.token for lid, fake in agency.locations.items()}
        seen: Counter[tuple[str, str, str]] = Counter()
        async with Locations(tokens, base_url=agency.url, rate_limit=fast, max_pages=64) as pool:
            assert pool.in_flight_limit == 64
            # The loop reported busy all the time: the cap shrinks as the pages come.
            pool._in_flight = InFlight(64, wall=time.perf_counter, cpu=time.perf_counter)
            async for location_id, conversation_id, page in pool.fan_out_pages(
                list(pairs_of(agency)), page_size=5
            ):
                for message in page.messages:
                    seen[location_id, conversation_id, message.id] += 1
            assert pool.in_flight_limit < 64
            assert pool._in_flight.held == 0
        assert seen == expected(agency)
        assert agency.throttled == 0


async def test_a_loop_with_time_to_spare_keeps_every_request_slot() -> None:
    slow = RateLimit(20, 1.0)
    async with FakeAgency(
        10, conversations=3, messages=(20, 40), seed=12, rate_limit=slow
    ) as agency:
        tokens = {lid: fake.token for lid, fake in agency.locations.items()}
        async with Locations(tokens, base_url=agency.url, rate_limit=slow, max_pages=64) as pool:
            pages = 0
            async for _ in pool.fan_out_pages(list(pairs_of(agency)), page_size=5):
                pages += 1
            assert pages > 100
            # The budgets bound the run, not the cap: it was never full, so no request
            # ever waited for a slot (a burst at the start may have trimmed it a little).
            assert pool._in_flight.peak < pool.in_flight_limit
        assert agency.throttled == 0
