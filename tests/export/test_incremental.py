"""sync_location: the incremental contract, against FakeHighLevel over a real socket.

The contract (ghl_async.export.incremental): after a run that started at T, the sink
holds, at its latest version, every message change the server made visible before T,
provided it was made visible within the lookback of its dateUpdated. The sink here is
tests.support.memory_sink (rows by id, every write counted); one test uses SQLite.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ghl_async import Client, RetryPolicy, errors
from ghl_async.export.incremental import (
    LOOKBACK,
    next_mark,
    pruned,
    sync_location,
    unseen,
    window_start,
)
from ghl_async.export.pipeline import ExportResult, export_location
from ghl_async.export.targets import sink_for
from ghl_async.models import Message, decode_message
from ghl_async.testing import FakeHighLevel
from tests.support.memory_sink import MemorySink

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(max_attempts=3, backoff_base=0.001, backoff_cap=0.01)
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)


def client_of(fake: FakeHighLevel) -> Client:
    return Client(fake.token, base_url=fake.url, retry=FAST)


def server_view(fake: FakeHighLevel) -> dict[str, Message]:
    """Every message the fake holds, decoded as the client decodes it."""
    return {
        m["id"]: decode_message(json.dumps(m).encode())
        for c in fake.conversation_ids
        for m in fake.messages(c)
    }


def assert_mirrors(sink: MemorySink, fake: FakeHighLevel) -> None:
    """The sink holds every message of the fake, each at its latest version."""
    want = server_view(fake)
    assert set(sink.messages) == set(want)
    for message_id, message in want.items():
        assert sink.messages[message_id] == message, message_id


def msg(message_id: str, updated: int | None, **fields: Any) -> Message:
    data: dict[str, Any] = {"id": message_id, "dateAdded": T0, **fields}
    if updated is not None:
        data["dateUpdated"] = T0 + timedelta(seconds=updated)
    return msgspec.convert(data, Message)


# -- the pure rules ------------------------------------------------------------------


def test_the_mark_never_passes_the_ceiling() -> None:
    ceiling = T0 + timedelta(seconds=10)
    assert next_mark(None, [], ceiling) is None
    assert next_mark(None, [msg("a", 3), msg("b", 7)], ceiling) == T0 + timedelta(seconds=7)
    # Ten years ahead: taken at the ceiling, not at its own date.
    assert next_mark(None, [msg("a", 10 * 365 * 86400)], ceiling) == ceiling
    # An older message never moves the mark back.
    assert next_mark(T0 + timedelta(seconds=5), [msg("a", 1)], ceiling) == T0 + timedelta(
        seconds=5
    )


def test_window_start_reads_the_lookback_again_and_survives_year_one() -> None:
    assert window_start(None, LOOKBACK) is None
    assert window_start(T0, timedelta(minutes=5)) == T0 - timedelta(minutes=5)
    early = datetime(1, 1, 1, 0, 1, tzinfo=timezone.utc)
    assert window_start(early, timedelta(minutes=5)) is None  # from the beginning


def test_a_version_is_id_and_content_so_same_second_edits_are_kept() -> None:
    first = msg("a", 5, status="sent")
    fresh, recent = unseen([first], {}, T0)
    assert fresh == [first]
    # The same version again (the lookback, an overlapping page): not written again.
    assert unseen([first], recent, T0)[0] == []
    # An edit within the same second, another content: written.
    edited = msg("a", 5, status="read")
    assert unseen([edited], recent, T0)[0] == [edited]
    # The same message twice in one page: once.
    assert unseen([first, first], {}, T0)[0] == [first]
    # Versions older than the window are forgotten; newer ones kept.
    old, new = unseen([msg("o", 1), msg("n", 9)], {}, T0)[1], None
    new = pruned(old, T0 + timedelta(seconds=5))
    assert set(new) == {"n"}
    assert pruned(old, None) == old


# -- against the fake ------------------------------------------------------------------


async def test_first_run_everything_then_nothing_then_only_what_changed() -> None:
    async with FakeHighLevel(conversations=10, messages=(0, 120), seed=71) as fake:
        sink = MemorySink()
        async with client_of(fake) as client, sink:
            first = await sync_location(client, fake.location_id, sink)
            assert_mirrors(sink, fake)
            assert first.messages == len(server_view(fake)) and not first.resumed
            assert first.state is not None and first.state.done
            assert first.state.run_started is None and first.state.cursor is None

            before = fake.stats.by_route["export"]
            again = await sync_location(client, fake.location_id, sink)
            # Nothing new: nothing written, and a request per pass (the lookback is
            # read again, its versions dropped by their digests).
            assert again.messages == 0
            assert fake.stats.by_route["export"] - before == 2
            assert set(sink.writes.values()) == {1}

            some = fake.conversation_ids[0]
            edited = fake.messages(some)[0]["id"]
            fake.update_message(edited, status="read")
            added = fake.add_message(some)["id"]
            third = await sync_location(client, fake.location_id, sink)
        assert third.messages == 2
        assert sink.writes[edited] == 2 and sink.writes[added] == 1
        assert_mirrors(sink, fake)


async def test_a_message_dated_years_ahead_does_not_hide_later_changes() -> None:
    async with FakeHighLevel(conversations=3, messages=(5, 20), seed=72) as fake:
        sink = MemorySink()
        conversation = fake.conversation_ids[0]
        future = datetime.now(timezone.utc) + timedelta(days=3650)
        async with client_of(fake) as client, sink:
            fake.add_message(conversation, when=future)
            result = await sync_location(client, fake.location_id, sink)
            assert result.state is not None
            assert all(mark <= datetime.now(timezone.utc) for mark in result.state.marks.values())
            # A later change, dated now: still found by the next run.
            fake.update_message(fake.messages(conversation)[-1]["id"], status="read")
            later = fake.add_message(conversation)["id"]
            second = await sync_location(client, fake.location_id, sink)
        assert later in sink.messages
        assert second.messages == 2  # the future message is read again, not written again
        assert_mirrors(sink, fake)


async def test_a_change_that_appears_late_within_the_lookback_is_synced() -> None:
    async with FakeHighLevel(conversations=3, messages=(5, 20), seed=73) as fake:
        sink = MemorySink()
        conversation = fake.conversation_ids[1]
        async with client_of(fake) as client, sink:
            first = await sync_location(client, fake.location_id, sink)
            assert first.state is not None
            mark = first.state.marks["rest"]
            # Made visible now, but dated 5 s before the mark (a late commit, a skewed clock).
            late = fake.add_message(conversation, when=mark - timedelta(seconds=5))["id"]
            await sync_location(client, fake.location_id, sink)
            assert late in sink.messages
            # Beyond the lookback it is not promised; a longer lookback finds it.
            lost = fake.add_message(conversation, when=mark - timedelta(minutes=10))["id"]
            await sync_location(client, fake.location_id, sink)
            assert lost not in sink.messages
            await sync_location(client, fake.location_id, sink, lookback=timedelta(minutes=20))
        assert lost in sink.messages
        assert_mirrors(sink, fake)


async def test_an_edit_in_the_same_millisecond_as_the_mark_is_kept() -> None:
    async with FakeHighLevel(conversations=2, messages=(3, 8), seed=74) as fake:
        sink = MemorySink()
        conversation = fake.conversation_ids[0]
        target = fake.messages(conversation)[0]["id"]
        when = datetime.now(timezone.utc).replace(microsecond=0)
        fake.update_message(target, when=when, status="sent")
        async with client_of(fake) as client, sink:
            await sync_location(client, fake.location_id, sink)
            fake.update_message(target, when=when, status="read")  # same dateUpdated
            result = await sync_location(client, fake.location_id, sink)
        assert result.messages == 1
        assert sink.messages[target].status == "read"


@pytest.mark.parametrize("fail_after", [0, 1, 2, 4])
async def test_a_sync_stopped_at_any_commit_resumes_exactly_once(fail_after: int) -> None:
    async with FakeHighLevel(conversations=20, messages=(0, 300), seed=75) as fake:
        sink = MemorySink(fail_after=fail_after)
        async with client_of(fake) as client, sink:
            with pytest.raises(errors.SinkError):
                await sync_location(client, fake.location_id, sink)
            state = await sink.load(fake.location_id)
            assert (state.messages if state else 0) == len(sink.messages)
            sink.fail_after = None
            result = await sync_location(client, fake.location_id, sink)
        assert result.resumed == (fail_after > 0)
        assert set(sink.writes.values()) == {1}
        assert_mirrors(sink, fake)


async def test_a_refused_cursor_restarts_the_pass_from_its_mark() -> None:
    async with FakeHighLevel(conversations=20, messages=(50, 300), seed=76) as fake:
        sink = MemorySink()
        refused = False

        def refuse_the_next_cursor(result: ExportResult) -> None:
            nonlocal refused
            if not refused and result.pages == 2:
                refused = True
                fake.inject("422", route="export")  # "Invalid cursor" after a pause

        async with client_of(fake) as client, sink:
            result = await sync_location(
                client, fake.location_id, sink, on_batch=refuse_the_next_cursor
            )
        assert refused and result.state is not None and result.state.done
        assert set(sink.writes.values()) == {1}
        assert_mirrors(sink, fake)


async def test_a_cursor_refused_for_good_ends_in_the_servers_error() -> None:
    async with FakeHighLevel(conversations=10, messages=(50, 300), seed=77) as fake:
        sink = MemorySink()

        def refuse_everything_after_the_first_page(result: ExportResult) -> None:
            if result.pages == 1:
                fake.inject("422", 50, route="export")

        async with client_of(fake) as client, sink:
            with pytest.raises(errors.BadRequestError):
                await sync_location(
                    client, fake.location_id, sink, on_batch=refuse_everything_after_the_first_page
                )


async def test_sync_and_export_never_share_a_location_state() -> None:
    async with FakeHighLevel(conversations=2, messages=(1, 5), seed=78) as fake:
        sink = MemorySink()
        async with client_of(fake) as client, sink:
            await export_location(client, fake.location_id, sink)
            with pytest.raises(ValueError, match="other arguments"):
                await sync_location(client, fake.location_id, sink)
            with pytest.raises(ValueError, match="lookback"):
                await sync_location(client, fake.location_id, sink, lookback=timedelta(-1))


async def test_email_bodies_sync_into_sqlite_and_a_second_run_writes_nothing(
    tmp_path: Path,
) -> None:
    async with FakeHighLevel(conversations=6, messages=(2, 40), seed=79) as fake:
        url = f"sqlite:///{tmp_path / 'mirror.db'}"
        async with client_of(fake) as client:
            async with sink_for(url) as sink:
                first = await sync_location(client, fake.location_id, sink, email_bodies=True)
            async with sink_for(url) as sink:
                second = await sync_location(client, fake.location_id, sink, email_bodies=True)
        assert first.emails == len(fake.email_ids) > 0
        assert second.messages == 0
        with closing(sqlite3.connect(tmp_path / "mirror.db")) as db:
            (count,) = db.execute("SELECT count(*) FROM messages").fetchone()
            (emails,) = db.execute("SELECT count(*) FROM emails").fetchone()
            (marks,) = db.execute("SELECT marks FROM export_state").fetchone()
        assert count == len(server_view(fake)) and emails == len(fake.email_ids)
        assert '"rest"' in marks


# -- the contract, over sequences of changes ----------------------------------------------

SKEW = st.integers(min_value=-240, max_value=240)  # seconds: inside the 5 min lookback
CHANGE = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 3), SKEW),
    st.tuples(st.just("edit"), st.integers(0, 1000), SKEW),
    st.tuples(st.just("same-second edit"), st.integers(0, 1000), st.just(0)),
    st.tuples(st.just("same-second edit"), st.integers(0, 1000), st.just(0)),
    st.tuples(st.just("future"), st.integers(0, 3), st.integers(1, 10 * 365)),
    st.tuples(st.just("sync"), st.integers(0, 3), st.just(0)),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(changes=st.lists(CHANGE, min_size=1, max_size=12), crash=st.integers(0, 6))
def test_after_every_run_the_sink_holds_every_change_made_before_it(
    changes: list[tuple[str, int, int]], crash: int
) -> None:
    import anyio

    async def scenario() -> None:
        async with FakeHighLevel(conversations=4, messages=(0, 30), seed=80) as fake:
            sink = MemorySink(fail_after=crash)
            last_edit: tuple[str, datetime] | None = None
            async with client_of(fake) as client, sink:
                for kind, which, amount in [*changes, ("sync", 0, 0)]:
                    now = datetime.now(timezone.utc)
                    conversation = fake.conversation_ids[which % len(fake.conversation_ids)]
                    ids = list(server_view(fake))
                    if kind == "add":
                        fake.add_message(conversation, when=now + timedelta(seconds=amount))
                    elif kind == "future":
                        fake.add_message(conversation, when=now + timedelta(days=amount))
                    elif kind == "edit" and ids:
                        target = ids[which % len(ids)]
                        # A message's own edits never go back in time (the server
                        # stamps them); the skew is against the client's clock.
                        current = server_view(fake)[target]
                        previous = current.date_updated or current.date_added or now
                        when = max(
                            now + timedelta(seconds=amount), previous + timedelta(0, 0, 1000)
                        )
                        last_edit = (target, when)
                        fake.update_message(target, when=last_edit[1], status=f"e{which}")
                    elif kind == "same-second edit" and last_edit is not None:
                        # Edited again within the same millisecond: same dateUpdated.
                        fake.update_message(last_edit[0], when=last_edit[1], status=f"s{which}")
                    elif kind == "sync":
                        # A run that crashes at a commit, then the run that finishes it.
                        try:
                            await sync_location(client, fake.location_id, sink)
                        except errors.SinkError:
                            sink.fail_after = None
                            await sync_location(client, fake.location_id, sink)
                        sink.fail_after = None
                        state = await sink.load(fake.location_id)
                        assert state is not None and state.done
                        assert state.messages == sum(sink.writes.values())
                        assert_mirrors(sink, fake)

    anyio.run(scenario)


async def test_a_call_that_finishes_a_killed_run_also_syncs_what_changed_since() -> None:
    # A run killed in its email pass has read the other messages already: finishing it
    # alone would leave out what changed since it began. The call runs again after it.
    async with FakeHighLevel(conversations=20, messages=(20, 120), seed=78) as fake:
        sink = MemorySink()

        def stop_in_the_email_pass(result: ExportResult) -> None:
            state = result.state
            if state is not None and (state.cursor or "").startswith("email:"):
                sink.fail_after = sink.commits  # the next commit fails: a kill

        async with client_of(fake) as client, sink:
            with pytest.raises(errors.SinkError):
                await sync_location(
                    client, fake.location_id, sink, on_batch=stop_in_the_email_pass
                )
            state = await sink.load(fake.location_id)
            assert state is not None and (state.cursor or "").startswith("email:")
            sink.fail_after = None
            conversation = fake.conversation_ids[3]
            edited = fake.messages(conversation)[0]["id"]
            fake.update_message(edited, status="read-after-the-kill")
            added = fake.add_message(conversation)["id"]
            result = await sync_location(client, fake.location_id, sink)
        assert result.resumed and result.state is not None and result.state.done
        assert sink.messages[edited].status == "read-after-the-kill"
        assert added in sink.messages
        assert_mirrors(sink, fake)
