"""Whole locations in Locations: the export pipeline, its fallback, and mirrors into SQLite.

Against FakeAgency over a real socket (each location a FakeHighLevel with its own stats
and request log) and real SQLite files; no mocks.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from contextlib import aclosing, closing
from pathlib import Path

import pytest

from ghl_async import AgencyToken, Locations, MessagesPage, RateLimit, errors
from ghl_async._http.export_route import EMAIL_TYPES
from ghl_async.agency.locations import route_filter
from ghl_async.export import ExportResult, sink_for
from ghl_async.testing import FakeAgency, FakeHighLevel
from tests.support.memory_sink import MemorySink

pytestmark = pytest.mark.anyio

ROUTE_PAGE = 500


def tokens_of(agency: FakeAgency) -> dict[str, str]:
    return {lid: fake.token for lid, fake in agency.locations.items()}


def expected(agency: FakeAgency, kinds: set[str] | None = None) -> Counter[tuple[str, str, str]]:
    """Every message of every location once (of ``kinds`` only, if given)."""
    return Counter(
        (location_id, conversation_id, message["id"])
        for location_id, fake in agency.locations.items()
        for conversation_id in fake.conversation_ids
        for message in fake.messages(conversation_id)
        if kinds is None or message["messageType"] in kinds
    )


def tasks_left(before: set[asyncio.Task[object]]) -> list[str]:
    """Tasks started since ``before`` still running, but the fake server's connections."""
    names = [getattr(task.get_coro(), "__qualname__", "") for task in asyncio.all_tasks() - before]
    return [name for name in names if not name.startswith("RequestHandler.")]


def route_requests(fake: FakeHighLevel) -> int:
    """What reading ``fake`` through the route costs: a request per 500 messages a pass."""
    kinds = [m["messageType"] for c in fake.conversation_ids for m in fake.messages(c)]
    emails = sum(kind in EMAIL_TYPES for kind in kinds)
    rest = len(kinds) - emails
    # A pass ends on a short page; an exactly full last page needs an empty one after.
    return sum(n // ROUTE_PAGE + 1 for n in (rest, emails))


@pytest.mark.parametrize(
    ("types", "channel", "kept"),
    [
        (None, None, None),
        ("TYPE_EMAIL", "Email", {"TYPE_EMAIL"}),
        ("TYPE_SMS", "SMS", {"TYPE_SMS"}),  # SMS also admits campaign SMS: filtered out
        ("TYPE_SMS,TYPE_CALL", None, {"TYPE_SMS", "TYPE_CALL"}),  # two channels: both passes
        ("TYPE_LIVE_CHAT", None, {"TYPE_LIVE_CHAT"}),  # no channel of its own
        ("TYPE_WHATSAPP,TYPE_LIVE_CHAT", None, {"TYPE_WHATSAPP", "TYPE_LIVE_CHAT"}),
    ],
)
def test_a_type_filter_maps_to_the_route_channel_where_one_channel_holds_it(
    types: str | None, channel: str | None, kept: set[str] | None
) -> None:
    assert route_filter(types) == (channel, None if kept is None else frozenset(kept))


async def test_whole_locations_cost_a_request_per_500_messages_not_one_per_conversation() -> None:
    async with FakeAgency(4, conversations=40, messages=(10, 60), seed=21) as agency:
        seen: Counter[tuple[str, str | None, str]] = Counter()
        async with Locations(tokens_of(agency), base_url=agency.url, max_pages=4) as pool:
            async for location_id, conversation_id, message in pool.fan_out_locations(
                agency.location_ids
            ):
                assert pool.pages_held <= 4
                seen[location_id, conversation_id, message.id] += 1
            assert pool.pages_held == 0
            assert pool._in_flight.held == 0
            requests = {
                lid: (await pool.client(lid)).stats.requests for lid in agency.location_ids
            }
        assert seen == expected(agency)
        for location_id, fake in agency.locations.items():
            assert fake.stats.by_route["export"] == route_requests(fake)
            assert requests[location_id] == route_requests(fake)
            assert fake.stats.by_route["search"] == fake.stats.by_route["messages"] == 0
            # 40 conversations would cost 40 requests and a search at the least.
            assert requests[location_id] < len(fake.conversation_ids) / 4


async def test_a_whole_location_page_spans_conversations_and_names_none() -> None:
    async with FakeAgency(3, conversations=30, messages=(20, 60), seed=22) as agency:
        pages: dict[str, list[MessagesPage]] = {lid: [] for lid in agency.location_ids}
        async with Locations(tokens_of(agency), base_url=agency.url) as pool:
            async for location_id, conversation_id, page in pool.fan_out_pages(
                locations=agency.location_ids
            ):
                assert conversation_id is None
                pages[location_id].append(page)
        for location_id, fake in agency.locations.items():
            got = pages[location_id]
            assert all(0 < len(page.messages) <= ROUTE_PAGE for page in got)
            assert [page.next_page for page in got] == [True] * (len(got) - 1) + [False]
            assert sum(len(page.messages) for page in got) == fake.total_messages
            assert len({m.conversation_id for page in got for m in page.messages}) > 1


async def test_whole_locations_fall_back_to_conversations_where_the_route_is_refused() -> None:
    async with FakeAgency(3, conversations=6, messages=(0, 40), seed=23) as agency:
        refused, *served = agency.location_ids
        agency.locations[refused].export_refusal = 403  # a token without the export scope
        seen: Counter[tuple[str, str | None, str]] = Counter()
        async with Locations(tokens_of(agency), base_url=agency.url) as pool:
            async for location_id, conversation_id, message in pool.fan_out_locations(
                agency.location_ids
            ):
                seen[location_id, conversation_id, message.id] += 1
        assert seen == expected(agency)
        fake = agency.locations[refused]
        assert fake.stats.by_route["export"] == 1  # the refused first request only
        assert fake.stats.by_route["search"] >= 1
        assert fake.stats.by_route["messages"] >= len(fake.conversation_ids)
        for location_id in served:
            assert agency.locations[location_id].stats.by_route["messages"] == 0


def emails_of(fake: FakeHighLevel) -> int:
    return sum(
        m["messageType"] in EMAIL_TYPES for c in fake.conversation_ids for m in fake.messages(c)
    )


@pytest.mark.parametrize(
    "types",
    [
        ["TYPE_EMAIL"],  # one channel: only its pass is asked for
        ["TYPE_SMS", "TYPE_CALL"],  # two: every message, both passes, filtered here
    ],
)
async def test_the_type_filter_holds_for_whole_locations(types: list[str]) -> None:
    async with FakeAgency(2, conversations=20, messages=(10, 40), seed=24) as agency:
        seen: Counter[tuple[str, str | None, str]] = Counter()
        async with Locations(tokens_of(agency), base_url=agency.url) as pool:
            async for location_id, conversation_id, message in pool.fan_out_locations(
                agency.location_ids, types=types
            ):
                seen[location_id, conversation_id, message.id] += 1
        assert seen == expected(agency, set(types))
        for fake in agency.locations.values():
            wanted = emails_of(fake) // ROUTE_PAGE + 1 if types == ["TYPE_EMAIL"] else None
            assert fake.stats.by_route["export"] == (wanted or route_requests(fake))


async def test_a_refused_location_is_its_item_and_the_others_go_on() -> None:
    async with FakeAgency(3, conversations=4, messages=(0, 30), seed=25) as agency:
        b = agency.location_ids[1]
        tokens = {**tokens_of(agency), b: "pit-refused"}
        failed: dict[str, errors.GHLError] = {}
        messages = 0
        async with Locations(tokens, base_url=agency.url) as pool:
            async for location_id, _, item in pool.fan_out(
                locations=agency.location_ids, return_exceptions=True
            ):
                if isinstance(item, errors.GHLError):
                    failed[location_id] = item
                else:
                    messages += 1
            with pytest.raises(errors.AuthenticationError):
                async for _ in pool.fan_out(locations=agency.location_ids):
                    pass
        assert list(failed) == [b]
        assert isinstance(failed[b], errors.AuthenticationError)
        assert messages == agency.total_messages - agency.locations[b].total_messages


async def test_breaking_out_of_a_whole_location_fan_out_stops_every_request() -> None:
    slow = RateLimit(3, 1.0)
    async with FakeAgency(
        6, conversations=30, messages=(20, 60), seed=26, rate_limit=slow
    ) as agency:
        async with Locations(
            tokens_of(agency), base_url=agency.url, rate_limit=slow, max_pages=4
        ) as pool:
            before = asyncio.all_tasks()
            pages = pool.fan_out_pages(locations=agency.location_ids)
            async with aclosing(pages):
                async for _ in pages:
                    break
            assert not pool._tasks
            assert tasks_left(before) == []
            assert pool.pages_held == 0
            assert pool._in_flight.held == 0
            for _ in range(100):  # the server sees the connections close
                if all(f.stats.in_flight == 0 for f in agency.locations.values()):
                    break
                await asyncio.sleep(0.01)
            assert all(f.stats.in_flight == 0 for f in agency.locations.values())


# -- Locations.export: many locations into one sink ------------------------------------


def mirrored(path: Path) -> tuple[int, Counter[str], dict[str, bool]]:
    """Rows, distinct ids per location's messages, and each location's done flag."""
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        ids = Counter(row[0] for row in db.execute("SELECT id FROM messages"))
        done = {
            row[0]: bool(row[1])
            for row in db.execute("SELECT location_id, done FROM export_state")
        }
    return rows, ids, done


def all_ids(agency: FakeAgency) -> Counter[str]:
    return Counter(message_id for _, _, message_id in expected(agency))


async def test_export_mirrors_several_locations_into_sqlite_once(tmp_path: Path) -> None:
    async with FakeAgency(4, conversations=15, messages=(10, 60), seed=27) as agency:
        path = tmp_path / "agency.db"
        progress: Counter[str] = Counter()
        async with (
            Locations(tokens_of(agency), base_url=agency.url, locations_at_once=2) as pool,
            sink_for(f"sqlite:///{path}") as sink,
        ):
            results = await pool.export(
                sink,
                agency.location_ids,
                on_batch=lambda lid, result: progress.update({lid: 1}),
            )
            assert list(results) == agency.location_ids
            for location_id, result in results.items():
                assert isinstance(result, ExportResult)
                assert result.state is not None and result.state.done
                assert result.messages == agency.locations[location_id].total_messages
                assert not result.fallback and not result.resumed
                assert progress[location_id] >= result.pages  # a call per commit
            assert pool.pages_held == 0
            before = {lid: f.stats.requests for lid, f in agency.locations.items()}
            again = await pool.export(sink, agency.location_ids)
        rows, ids, done = mirrored(path)
        assert rows == agency.total_messages
        assert ids == all_ids(agency)  # every message once
        assert done == dict.fromkeys(agency.location_ids, True)
        for result in again.values():
            assert isinstance(result, ExportResult)
            assert result.resumed and result.messages == 0
        # Finished locations cost nothing the second time.
        assert {lid: f.stats.requests for lid, f in agency.locations.items()} == before


async def test_an_export_cancelled_mid_run_resumes_to_every_message_once(tmp_path: Path) -> None:
    async with FakeAgency(3, conversations=40, messages=(20, 60), seed=28) as agency:
        path = tmp_path / "agency.db"
        url = f"sqlite:///{path}"
        commits = [0]
        async with Locations(tokens_of(agency), base_url=agency.url) as pool:
            async with sink_for(url) as sink:
                task: asyncio.Task[dict[str, ExportResult | errors.GHLError]] | None = None

                def count(location_id: str, result: ExportResult) -> None:
                    commits[0] += 1
                    if commits[0] == 4 and task is not None:
                        task.cancel()  # mid-run: every location has pages to go

                before = asyncio.all_tasks()
                task = asyncio.create_task(pool.export(sink, agency.location_ids, on_batch=count))
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert tasks_left(before) == []
                assert pool.pages_held == 0
                assert pool._in_flight.held == 0
            rows, _, done = mirrored(path)
            assert 0 < rows < agency.total_messages
            assert not all(done.values())
            async with sink_for(url) as sink:
                results = await pool.export(sink, agency.location_ids)
        rows, ids, done = mirrored(path)
        assert rows == agency.total_messages
        assert ids == all_ids(agency)
        assert done == dict.fromkeys(agency.location_ids, True)
        assert any(isinstance(r, ExportResult) and r.resumed for r in results.values())


async def test_export_falls_back_and_reports_each_failed_location(tmp_path: Path) -> None:
    async with FakeAgency(3, conversations=5, messages=(0, 40), seed=29) as agency:
        a, b, c = agency.location_ids
        agency.locations[c].export_refusal = 404  # a plan without the route
        tokens = {**tokens_of(agency), b: "pit-refused"}
        path = tmp_path / "agency.db"
        async with (
            Locations(tokens, base_url=agency.url) as pool,
            sink_for(f"sqlite:///{path}") as sink,
        ):
            results = await pool.export(sink, agency.location_ids, return_exceptions=True)
            first, second, third = (results[a], results[b], results[c])
            assert isinstance(first, ExportResult) and not first.fallback
            assert isinstance(second, errors.AuthenticationError)
            assert isinstance(third, ExportResult) and third.fallback
            with pytest.raises(errors.AuthenticationError):
                await pool.export(sink, [b])
        rows, _, done = mirrored(path)
        assert rows == agency.total_messages - agency.locations[b].total_messages
        assert done == {a: True, c: True}


async def test_a_sink_error_stops_the_whole_export_even_with_return_exceptions() -> None:
    async with FakeAgency(4, conversations=20, messages=(20, 60), seed=31) as agency:
        sink = MemorySink(fail_after=3)  # a full disk: every location would fail alike
        async with Locations(tokens_of(agency), base_url=agency.url) as pool, sink:
            before = asyncio.all_tasks()
            with pytest.raises(errors.SinkError):
                await pool.export(sink, agency.location_ids, return_exceptions=True)
            assert tasks_left(before) == []
            assert pool.pages_held == 0
            assert pool._in_flight.held == 0
            # What was committed stands, and its state covers it: a second run finishes.
            sink.fail_after = None
            results = await pool.export(sink, agency.location_ids)
        assert len(sink.messages) == agency.total_messages
        assert set(sink.writes.values()) == {1}  # every message written once
        assert any(isinstance(r, ExportResult) and r.resumed for r in results.values())


async def test_export_with_no_ids_mirrors_every_installed_location(tmp_path: Path) -> None:
    async with FakeAgency(3, uninstalled=2, conversations=4, seed=30) as agency:
        auth = AgencyToken(agency.agency_token, company_id=agency.company_id, app_id=agency.app_id)
        path = tmp_path / "agency.db"
        async with (
            Locations(auth, base_url=agency.url) as pool,
            sink_for(f"sqlite:///{path}") as sink,
        ):
            results = await pool.export(sink)
        assert list(results) == agency.location_ids
        rows, ids, done = mirrored(path)
        assert rows == agency.total_messages and ids == all_ids(agency)
        assert done == dict.fromkeys(agency.location_ids, True)
        assert agency.stats.location_tokens == Counter(dict.fromkeys(agency.location_ids, 1))


async def test_export_refuses_a_bad_sink_or_a_single_id_before_any_request() -> None:
    pool = Locations({})
    with pytest.raises(TypeError, match="Sink"):
        await pool.export(object(), ["a"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="single str"):
        await pool.export(sink_for("sqlite:///unused.db"), "abc")
    assert not pool.is_open
