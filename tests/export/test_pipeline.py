"""export_location: a whole location into a sink, resumable, exactly once, with fallback.

Against FakeHighLevel over a real socket; the sink is tests.support.memory_sink (the
Sink contract in dicts, every write counted), so a message written twice shows.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ghl_async import Client, RateLimit, RetryPolicy, errors
from ghl_async.export.pipeline import ExportResult, export_location
from ghl_async.export.targets import sink_for
from ghl_async.testing import FakeHighLevel
from tests.support.memory_sink import MemorySink

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(max_attempts=3, backoff_base=0.001, backoff_cap=0.01)


def all_ids(fake: FakeHighLevel) -> set[str]:
    return {m["id"] for c in fake.conversation_ids for m in fake.messages(c)}


def client_of(fake: FakeHighLevel) -> Client:
    return Client(fake.token, base_url=fake.url, retry=FAST)


async def test_a_whole_location_lands_once_and_the_state_says_done() -> None:
    async with FakeHighLevel(conversations=12, messages=(0, 300), seed=3) as fake:
        sink = MemorySink()
        async with client_of(fake) as client, sink:
            result = await export_location(client, fake.location_id, sink)
        assert set(sink.messages) == all_ids(fake)
        assert set(sink.writes.values()) == {1}
        assert result.state is not None and result.state.done
        assert result.state.messages == result.messages == len(all_ids(fake))
        assert not result.fallback and not result.resumed
        # Pages of up to 500: about a tenth of the requests the messages endpoint needs.
        assert fake.stats.by_route["export"] == result.pages
        assert fake.stats.by_route["messages"] == 0


async def test_a_finished_export_run_again_sends_nothing() -> None:
    async with FakeHighLevel(conversations=4, messages=(0, 50), seed=4) as fake:
        sink = MemorySink()
        async with client_of(fake) as client, sink:
            await export_location(client, fake.location_id, sink)
            before = fake.stats.requests
            again = await export_location(client, fake.location_id, sink)
        assert fake.stats.requests == before
        assert again.resumed and again.messages == 0


@pytest.mark.parametrize("fail_after", [0, 1, 2, 5])
async def test_a_run_stopped_at_any_commit_resumes_to_every_message_exactly_once(
    fail_after: int,
) -> None:
    async with FakeHighLevel(conversations=30, messages=(0, 400), seed=5) as fake:
        sink = MemorySink(fail_after=fail_after)
        async with client_of(fake) as client, sink:
            with pytest.raises(errors.SinkError):
                await export_location(client, fake.location_id, sink)
            # The state covers exactly what was committed: never ahead of the data.
            state = await sink.load(fake.location_id)
            assert (state.messages if state else 0) == len(sink.messages)
            sink.fail_after = None
            result = await export_location(client, fake.location_id, sink)
        assert result.resumed == (fail_after > 0)
        assert set(sink.messages) == all_ids(fake)
        assert set(sink.writes.values()) == {1}


async def test_the_latest_version_of_an_edited_message_wins() -> None:
    async with FakeHighLevel(conversations=3, messages=(5, 20), seed=6) as fake:
        sink = MemorySink()
        target = fake.messages(fake.conversation_ids[0])[0]["id"]
        async with client_of(fake) as client, sink:
            await export_location(client, fake.location_id, sink)
            fake.update_message(target, status="read")
            await export_location(client, fake.location_id, sink, resume=False)
        assert sink.messages[target].status == "read"
        assert sink.writes[target] == 2


async def test_email_bodies_land_with_their_messages() -> None:
    async with FakeHighLevel(conversations=10, messages=(5, 40), seed=7) as fake:
        sink = MemorySink()
        async with client_of(fake) as client, sink:
            result = await export_location(client, fake.location_id, sink, email_bodies=True)
        assert fake.email_ids, "the fake's data has emails"
        assert set(sink.emails) == set(fake.email_ids)
        assert result.emails == len(fake.email_ids)


@pytest.mark.parametrize("refusal", [401, 403, 404])
async def test_a_refused_route_falls_back_to_conversations_and_still_lands_everything(
    refusal: int,
) -> None:
    async with FakeHighLevel(
        conversations=8, messages=(0, 150), seed=8, export_refusal=refusal
    ) as fake:
        sink = MemorySink()
        async with client_of(fake) as client, sink:
            result = await export_location(client, fake.location_id, sink)
        assert result.fallback
        assert set(sink.messages) == all_ids(fake)
        assert result.state is not None and result.state.done and result.state.fallback
        # Each message is filed under the conversation it was read from.
        for message_id, conversation_id in sink.conversation_of.items():
            assert conversation_id == sink.messages[message_id].conversation_id


async def test_a_stopped_fallback_resumes_on_the_fallback_and_skips_finished_conversations() -> (
    None
):
    async with FakeHighLevel(
        conversations=10, messages=(0, 250), seed=9, export_refusal=403
    ) as fake:
        sink = MemorySink(fail_after=4)
        async with client_of(fake) as client, sink:
            with pytest.raises(errors.SinkError):
                await export_location(client, fake.location_id, sink)
            state = await sink.load(fake.location_id)
            assert state is not None and state.fallback
            finished = {c for c, cursor in state.conversations.items() if cursor is None}
            sink.fail_after = None
            before = fake.stats.by_route["export"]
            await export_location(client, fake.location_id, sink)
        assert fake.stats.by_route["export"] == before, "a fallback run stays on the fallback"
        assert set(sink.messages) == all_ids(fake)
        for conversation_id in finished:  # not read again
            ids = {m["id"] for m in fake.messages(conversation_id)}
            assert all(sink.writes[i] == 1 for i in ids)


async def test_other_arguments_against_a_committed_state_are_refused_before_any_request() -> None:
    async with FakeHighLevel(conversations=3, messages=(5, 20), seed=10) as fake:
        sink = MemorySink(fail_after=1)
        async with client_of(fake) as client, sink:
            with pytest.raises(errors.SinkError):
                await export_location(client, fake.location_id, sink)
            before = fake.stats.requests
            with pytest.raises(ValueError, match="resume=False"):
                await export_location(client, fake.location_id, sink, channel="SMS")
            assert fake.stats.requests == before


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"location_id": "../etc"}, ValueError),
        ({"since": datetime(2025, 1, 1)}, ValueError),  # naive
        ({"since": "2025-01-01"}, TypeError),
        (
            {
                "since": datetime(2025, 2, 1, tzinfo=timezone.utc),
                "until": datetime(2025, 1, 1, tzinfo=timezone.utc),
            },
            ValueError,
        ),
        ({"sink": object()}, TypeError),
    ],
)
async def test_bad_arguments_fail_before_any_request(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    async with FakeHighLevel(conversations=1, messages=5, seed=11) as fake:
        sink = MemorySink()
        arguments: dict[str, Any] = {"location_id": fake.location_id, "sink": sink, **kwargs}
        async with client_of(fake) as client, sink:
            with pytest.raises(error):
                await export_location(client, **arguments)
        assert fake.stats.requests == 0


async def test_on_batch_sees_the_totals_after_every_commit() -> None:
    async with FakeHighLevel(conversations=6, messages=(100, 300), seed=12) as fake:
        seen: list[int] = []

        def on_batch(result: ExportResult) -> None:
            seen.append(result.messages)

        sink = MemorySink()
        async with client_of(fake) as client, sink:
            result = await export_location(client, fake.location_id, sink, on_batch=on_batch)
        assert seen == sorted(seen) and seen[-1] == result.messages == len(all_ids(fake))


# -- the same pipeline into the real sinks --------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_location_mirrored_into_each_database_sink_reads_back_by_sql(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'mirror.db'}"
        if kind == "sqlite"
        else request.getfixturevalue("postgres_dsn")
    )
    roomy = RateLimit(10_000, 1.0)  # email bodies are a request each
    async with FakeHighLevel(
        conversations=10, messages=(0, 200), seed=13, rate_limit=roomy
    ) as fake:
        async with client_of(fake) as client, sink_for(url) as sink:
            first = await export_location(client, fake.location_id, sink, email_bodies=True)
            again = await export_location(client, fake.location_id, sink, email_bodies=True)
        want = all_ids(fake)
    assert first.state is not None and first.state.done and again.messages == 0
    query = "SELECT id FROM messages"
    if kind == "sqlite":
        with closing(sqlite3.connect(tmp_path / "mirror.db")) as db:
            got = [row[0] for row in db.execute(query)]
            emails = db.execute("SELECT count(*) FROM emails").fetchone()[0]
            done = db.execute("SELECT done FROM export_state").fetchone()[0]
    else:
        connection = await asyncpg.connect(url)
        try:
            got = [row[0] for row in await connection.fetch(query)]
            emails = await connection.fetchval("SELECT count(*) FROM emails")
            done = await connection.fetchval("SELECT done FROM export_state")
        finally:
            await connection.close()
    assert sorted(got) == sorted(want)
    assert emails == len(fake.email_ids) and done


async def test_a_refused_cursor_restarts_the_pass_at_its_position_exactly_once() -> None:
    async with FakeHighLevel(conversations=30, messages=(50, 400), seed=21) as fake:
        sink = MemorySink()
        refusals = 0

        def refuse_a_cursor(result: ExportResult) -> None:
            nonlocal refusals
            if result.pages in (2, 5) and refusals < result.pages // 2:
                refusals += 1
                fake.inject("422", route="export")  # "Invalid cursor" after a pause

        async with client_of(fake) as client, sink:
            result = await export_location(
                client, fake.location_id, sink, on_batch=refuse_a_cursor
            )
        assert refusals == 2
        assert result.state is not None and result.state.done and not result.fallback
        assert set(sink.messages) == all_ids(fake)
        assert set(sink.writes.values()) == {1}


async def test_a_resume_whose_cursor_expired_goes_on_from_the_position() -> None:
    async with FakeHighLevel(conversations=30, messages=(50, 400), seed=22) as fake:
        sink = MemorySink(fail_after=3)
        async with client_of(fake) as client, sink:
            with pytest.raises(errors.SinkError):
                await export_location(client, fake.location_id, sink)
            state = await sink.load(fake.location_id)
            assert state is not None and state.cursor and state.position is not None
            sink.fail_after = None
            fake.inject("422", route="export")  # the cursor of the stopped run expired
            result = await export_location(client, fake.location_id, sink)
        assert result.resumed and result.state is not None and result.state.done
        assert set(sink.messages) == all_ids(fake)
        assert set(sink.writes.values()) == {1}


async def test_a_cursor_refused_from_the_position_too_is_the_servers_error() -> None:
    async with FakeHighLevel(conversations=10, messages=(50, 400), seed=23) as fake:
        sink = MemorySink()

        def refuse_from_now_on(result: ExportResult) -> None:
            if result.pages == 1:
                fake.inject("422", 20, route="export")

        async with client_of(fake) as client, sink:
            with pytest.raises(errors.BadRequestError):
                await export_location(client, fake.location_id, sink, on_batch=refuse_from_now_on)
            state = await sink.load(fake.location_id)
        # What was committed stands, and says where to go on.
        assert state is not None and state.messages == len(sink.messages) > 0


async def test_the_route_refused_part_way_goes_on_by_conversation() -> None:
    async with FakeHighLevel(conversations=20, messages=(50, 300), seed=24) as fake:
        sink = MemorySink()

        def plan_change(result: ExportResult) -> None:
            if result.pages == 2:
                fake.inject("404", 50, route="export")  # the route is gone for good

        async with client_of(fake) as client, sink:
            result = await export_location(client, fake.location_id, sink, on_batch=plan_change)
            again = await export_location(client, fake.location_id, sink)
        assert result.fallback and result.state is not None and result.state.done
        assert set(sink.messages) == all_ids(fake)
        assert again.resumed and again.messages == 0


async def test_the_fallback_honours_channel_and_until() -> None:
    async with FakeHighLevel(conversations=15, messages=(5, 60), seed=25) as fake:
        fake.inject("404", route="export")  # the route refused: the fallback
        messages = [fake.message(i) for i in all_ids(fake)]
        until = sorted(m["dateAdded"] for m in messages)[len(messages) // 2]
        until_at = datetime.fromisoformat(until.replace("Z", "+00:00"))
        sink = MemorySink()
        async with client_of(fake) as client, sink:
            result = await export_location(
                client, fake.location_id, sink, channel="sms", until=until_at
            )
        want = {
            m["id"]
            for m in messages
            if m.get("messageType") == "TYPE_SMS"
            and datetime.fromisoformat(m["dateAdded"].replace("Z", "+00:00")) <= until_at
        }
        assert result.fallback and want
        assert set(sink.messages) == want


async def test_pages_that_overlap_write_each_message_once() -> None:
    async with FakeHighLevel(conversations=30, messages=(50, 300), seed=26) as fake:
        fake.export_overlap = 3  # every page repeats the last three of the one before
        sink = MemorySink()
        async with client_of(fake) as client, sink:
            result = await export_location(client, fake.location_id, sink)
        assert result.pages > 3
        assert set(sink.messages) == all_ids(fake)
        assert set(sink.writes.values()) == {1}
        assert result.state is not None and result.state.messages == len(all_ids(fake))
