"""SQLiteSink: the Sink contract on a SQLite file, crash-safe, readable by plain sqlite3.

Round trips of rows and state, the upsert's date rule case by case (and as a hypothesis
property), refusals (another schema version, a file that is not a database), batches
that fail part way (nothing of them kept, the state before stands), and a crash test:
a child process committing batches is SIGKILLed at seeded random instants, and after
every kill the file holds exactly the rows its committed state covers.
"""

from __future__ import annotations

import hashlib
import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ghl_async import Client, errors
from ghl_async.export import sqlite as sqlite_sink
from ghl_async.export.pipeline import export_location
from ghl_async.export.schema import EMAIL_COLUMNS, MESSAGE_COLUMNS, SCHEMA_VERSION, STATE_COLUMNS
from ghl_async.export.sink import Batch, ExportState, Sink
from ghl_async.export.sqlite import SQLiteSink, iso_utc
from ghl_async.models import (
    EmailMessage,
    Message,
    MessageMeta,
    RepairedMessage,
    decode_email,
    decode_page,
)
from ghl_async.testing import FakeHighLevel, make_conversations
from ghl_async.testing._data import email_ids, make_email
from tests.export import sqlite_crash_child as child

LOCATION = "ve9EPM428h8vShlRW1KT"
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
ROOT = Path(__file__).resolve().parents[2]


def state(**changes: Any) -> ExportState:
    base = ExportState(location_id=LOCATION, query="q=1", cursor="c1", messages=1)
    return msgspec.structs.replace(base, **changes)


def message(message_id: str, updated: datetime | None = None, body: str = "b") -> Message:
    return Message(
        id=message_id,
        conversation_id="conv1",
        location_id=LOCATION,
        message_type="TYPE_SMS",
        type=2,
        date_added=T0,
        date_updated=updated,
        body=body,
    )


def realistic(count: int, seed: int = 5) -> tuple[list[Message], list[tuple[str, EmailMessage]]]:
    """Decoded fake-server messages (with the live quirks) and the emails of the email ones."""
    wire = [m for c in make_conversations(3, seed=seed, messages=count // 3).values() for m in c]
    messages = decode_page(msgspec.json.encode({"messages": {"messages": wire}})).messages
    emails = [
        (str(m["id"]), decode_email(msgspec.json.encode(make_email(m, email_id))))
        for m in wire
        for email_id in email_ids(m)
    ]
    return messages, emails


def rows(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute(sql, args).fetchall()


def bodies(path: Path) -> dict[str, str]:
    return dict(rows(path, "SELECT id, body FROM messages"))


def write_text(path: Path, text: str) -> None:
    path.write_text(text)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "mirror.db"


# -- construction ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", [b"x.db", 3, None, ["x.db"]])
def test_a_path_of_the_wrong_type_is_a_type_error(bad: Any) -> None:
    with pytest.raises(TypeError):
        SQLiteSink(bad)


@pytest.mark.parametrize("bad", ["", ":memory:", "a\x00b.db"])
def test_a_path_that_names_no_file_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        SQLiteSink(bad)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"busy_timeout": -1}, ValueError),
        ({"busy_timeout": float("nan")}, ValueError),
        ({"busy_timeout": "5"}, TypeError),
        ({"busy_timeout": True}, TypeError),
        ({"synchronous": "OFF"}, ValueError),
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        SQLiteSink("x.db", **kwargs)


def test_the_path_is_not_touched_before_async_with(tmp_path: Path) -> None:
    sink = SQLiteSink(tmp_path / "missing-dir" / "x.db")
    assert isinstance(sink, Sink)
    assert sink.path == str(tmp_path / "missing-dir" / "x.db")
    assert list(tmp_path.iterdir()) == []


# -- round trips ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_state_rows_and_emails_round_trip(db: Path) -> None:
    messages, emails = realistic(120)
    assert emails, "the seed should give email messages"
    committed = state(
        cursor="updatedAt:xyz",
        high_water=T0,
        fallback=True,
        conversations={"c1": "m9", "c2": None},
        messages=len(messages),
    )
    async with SQLiteSink(db) as sink:
        assert await sink.load(LOCATION) is None
        await sink.commit(Batch(messages=messages, emails=emails, state=committed))
        assert await sink.load(LOCATION) == committed
        assert await sink.load("another") is None
    async with SQLiteSink(db) as sink:  # and after reopening
        assert await sink.load(LOCATION) == committed

    stored = {r[0]: r for r in rows(db, "SELECT * FROM messages")}
    assert set(stored) == {m.id for m in messages}
    for m in messages:
        row = dict(zip([c.name for c in MESSAGE_COLUMNS], stored[m.id], strict=True))
        assert row["conversation_id"] == m.conversation_id
        assert row["body"] == m.body and row["message_type"] == m.message_type
        assert row["date_added"] == (m.date_added and iso_utc(m.date_added))
        assert row["date_updated"] == (m.date_updated and iso_utc(m.date_updated))
        assert json_of(row["attachments"]) == list(m.attachments)
        assert json_of(row["meta"]) == msgspec.to_builtins(m.meta)
        if m.meta is not None and m.meta.email is not None:
            assert json_of(row["email_message_ids"]) == m.meta.email.message_ids
    email_rows = rows(db, 'SELECT id, message_id, subject, "to" FROM emails')
    assert {(r[0], r[1], r[2]) for r in email_rows} == {
        (e.id, message_id, e.subject) for message_id, e in emails
    }
    assert all(isinstance(json_of(r[3]), list) for r in email_rows)


def json_of(text: str | None) -> Any:
    return None if text is None else msgspec.json.decode(text)


@pytest.mark.anyio
async def test_conversation_ids_of_the_batch_override_the_messages_own(db: Path) -> None:
    async with SQLiteSink(db) as sink:
        batch = Batch(
            messages=[message("a"), message("b")],
            conversation_ids=["fromList", None],
            state=state(),
        )
        await sink.commit(batch)
    assert dict(rows(db, "SELECT id, conversation_id FROM messages")) == {
        "a": "fromList",
        "b": "conv1",
    }


@pytest.mark.anyio
async def test_an_empty_batch_moves_the_state_alone(db: Path) -> None:
    async with SQLiteSink(db) as sink:
        await sink.commit(Batch(messages=[message("a")], state=state()))
        await sink.commit(Batch(messages=[], state=state(done=True, cursor=None)))
        assert await sink.load(LOCATION) == state(done=True, cursor=None)
    assert bodies(db) == {"a": "b"}


@pytest.mark.anyio
async def test_the_state_is_read_from_its_columns_so_sql_can_edit_it(db: Path) -> None:
    async with SQLiteSink(db) as sink:
        await sink.commit(Batch(messages=[], state=state(done=True, cursor="c9")))
        with closing(sqlite3.connect(db)) as plain:
            plain.execute("UPDATE export_state SET cursor = NULL, done = 0")
            plain.commit()
        assert await sink.load(LOCATION) == state(done=False, cursor=None)
        with closing(sqlite3.connect(db)) as plain:
            plain.execute("UPDATE export_state SET messages = 'many'")
            plain.commit()
        with pytest.raises(errors.SinkError, match="unreadable") as caught:
            await sink.load(LOCATION)
        assert "\n" not in str(caught.value)


@pytest.mark.anyio
async def test_locations_share_a_file(db: Path) -> None:
    async with SQLiteSink(db) as sink:
        await sink.commit(Batch(messages=[message("a")], state=state()))
        await sink.commit(Batch(messages=[message("b")], state=state(location_id="other")))
        assert await sink.load(LOCATION) == state()
        assert await sink.load("other") == state(location_id="other")


@pytest.mark.anyio
async def test_sinks_opening_one_new_file_at_once_all_open(tmp_path: Path) -> None:
    # Workers each open the mirror for their location; on a new file their switches to
    # WAL collide, and SQLite refuses one at once rather than wait (a few in a
    # thousand opens): none may fail for it, and every location's batch is kept.
    for round_ in range(250):
        path = tmp_path / f"m{round_}.db"

        async def one(number: int, path: Path = path) -> None:
            async with SQLiteSink(path) as sink:
                batch = Batch(
                    messages=[message(f"m{number}")], state=state(location_id=f"L{number}")
                )
                await sink.commit(batch)

        async with anyio.create_task_group() as group:
            for number in range(4):
                group.start_soon(one, number)
        assert sorted(rows(path, "SELECT id FROM messages")) == [(f"m{n}",) for n in range(4)]


def test_fast_rows_equal_the_schema_row_builder() -> None:
    """The hot path writes what schema.message_rows says, to the last value."""
    assert sqlite_sink._FAST_ROWS, "schema.py's columns changed: update _fast_row"
    messages, _ = realistic(300, seed=9)
    berlin = timezone(timedelta(hours=2))
    odd = [
        RepairedMessage(id="r1", unparsed={"meta": {"callDuration": "12.5"}}),
        Message(id="tz", date_added=T0.astimezone(berlin), date_updated=T0.astimezone(berlin)),
        Message(id="big", type=10**23, meta=MessageMeta(call_duration=2**64 - 1)),
        Message(id="bare"),
        # msgspec writes a sub-minute offset as "Z": the fast path must not trust it.
        Message(id="sub", date_added=datetime(2025, 6, 1, tzinfo=timezone(timedelta(seconds=15)))),
        Message(id="naive", date_added=datetime(2025, 6, 1, 3, 4, 5, 6)),
        Message(id="y5", date_added=datetime(5, 1, 1, tzinfo=timezone.utc), date_updated=T0),
    ]
    sink = SQLiteSink("unused.db")
    for batch in (
        Batch(messages=messages, state=state()),
        Batch(messages=odd, conversation_ids=["c", None, "d", *[None] * 4], state=state()),
    ):
        fast = sink._message_rows(batch)
        assert fast == sink._generic_rows(batch)
        assert all(len(row) == len(MESSAGE_COLUMNS) for row in fast)


@pytest.mark.anyio
async def test_dates_are_fixed_width_utc_text_that_sorts_as_time(db: Path) -> None:
    berlin = timezone(timedelta(hours=2))
    early = Message(id="early", date_added=datetime(2025, 6, 1, 12, 30, tzinfo=berlin))  # 10:30Z
    late = Message(id="late", date_added=datetime(2025, 6, 1, 11, 0, 0, 5, tzinfo=timezone.utc))
    async with SQLiteSink(db) as sink:
        await sink.commit(Batch(messages=[late, early], state=state(high_water=T0)))
    stored = rows(db, "SELECT id, date_added FROM messages ORDER BY date_added")
    assert stored == [
        ("early", "2025-06-01T10:30:00.000000Z"),
        ("late", "2025-06-01T11:00:00.000005Z"),
    ]
    assert rows(db, "SELECT high_water FROM export_state") == [("2025-06-01T12:00:00.000000Z",)]


@pytest.mark.anyio
async def test_a_number_past_64_bits_is_kept_as_real_not_a_failed_batch(db: Path) -> None:
    big = Message(id="big", type=10**23, meta=MessageMeta(call_duration=2**64 - 1))
    async with SQLiteSink(db) as sink:
        await sink.commit(Batch(messages=[big], state=state()))
    [(kind, duration, meta)] = rows(db, "SELECT type, call_duration, meta FROM messages")
    assert kind == 1e23 and duration == float(2**64 - 1)
    assert json_of(meta)["callDuration"] == 2**64 - 1  # the exact value stays in meta


@pytest.mark.anyio
async def test_the_export_pipeline_fills_the_mirror(db: Path) -> None:
    """export_location against the fake server, into the file, emails and all."""
    async with FakeHighLevel(conversations=6, messages=(0, 120), seed=8) as fake:
        wanted = {m["id"] for c in fake.conversation_ids for m in fake.messages(c)}
        async with Client(fake.token, base_url=fake.url) as client, SQLiteSink(db) as sink:
            result = await export_location(client, fake.location_id, sink, email_bodies=True)
            again = await export_location(client, fake.location_id, sink, email_bodies=True)
        assert result.state is not None and result.state.done and again.messages == 0
    assert set(bodies(db)) == wanted
    assert rows(db, "SELECT COUNT(*) FROM emails") == [(result.emails,)]
    assert result.emails > 0


# -- the upsert's date rule -----------------------------------------------------------

T1 = T0 + timedelta(microseconds=1)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("stored", "incoming", "winner"),
    [
        pytest.param(T0, T1, "new", id="newer-replaces"),
        pytest.param(T1, T0, "old", id="older-is-skipped"),
        pytest.param(T0, T0, "new", id="equal-replaces"),
        pytest.param(T0, None, "new", id="incoming-null-replaces"),
        pytest.param(None, T0, "new", id="stored-null-is-replaced"),
        pytest.param(None, None, "new", id="both-null-replaces"),
    ],
)
async def test_upsert_date_rule(
    db: Path, stored: datetime | None, incoming: datetime | None, winner: str
) -> None:
    async with SQLiteSink(db) as sink:
        await sink.commit(Batch(messages=[message("m", stored, "old")], state=state()))
        await sink.commit(Batch(messages=[message("m", incoming, "new")], state=state()))
        assert await sink.load(LOCATION) == state()
    kept = stored if winner == "old" else incoming
    assert rows(db, "SELECT body, date_updated FROM messages") == [
        (winner, None if kept is None else iso_utc(kept))
    ]


@pytest.mark.anyio
async def test_offsets_do_not_fool_the_date_rule(db: Path) -> None:
    berlin = timezone(timedelta(hours=2))
    async with SQLiteSink(db) as sink:
        await sink.commit(Batch(messages=[message("m", T0, "utc-noon")], state=state()))
        # 13:00+02:00 is 11:00Z: older, skipped.
        older = message("m", datetime(2025, 6, 1, 13, 0, tzinfo=berlin), "berlin-one")
        await sink.commit(Batch(messages=[older], state=state()))
    assert bodies(db) == {"m": "utc-noon"}


@pytest.mark.anyio
async def test_emails_are_keyed_by_email_id(db: Path) -> None:
    first = EmailMessage(id="e1", subject="first", to=["a@example.invalid"], date_added=T0)
    second = EmailMessage(id="e1", subject="second", cc=["c@example.invalid"])
    other = EmailMessage(id="e2", subject="other")
    async with SQLiteSink(db) as sink:
        await sink.commit(Batch(messages=[], emails=[("m1", first), ("m1", other)], state=state()))
        await sink.commit(Batch(messages=[], emails=[("m2", second)], state=state()))
    assert rows(db, 'SELECT id, message_id, subject, "to", cc FROM emails ORDER BY id') == [
        ("e1", "m2", "second", "[]", '["c@example.invalid"]'),
        ("e2", "m1", "other", "[]", "[]"),
    ]


def model(batches: list[list[tuple[str, datetime | None]]]) -> dict[str, tuple[Any, str]]:
    """What the upsert rule leaves: id -> (date_updated, body) of the winning version."""
    table: dict[str, tuple[datetime | None, str]] = {}
    for b, batch in enumerate(batches):
        for i, (message_id, when) in enumerate(batch):
            old = table.get(message_id)
            if old is None or old[0] is None or when is None or when >= old[0]:
                table[message_id] = (when, f"{b}.{i}")
    return {k: (None if w is None else iso_utc(w), body) for k, (w, body) in table.items()}


DATES = st.one_of(
    st.none(), st.sampled_from([T0 + timedelta(seconds=s) for s in (0, 1, 1, 2, 3600)])
)
BATCHES = st.lists(
    st.lists(st.tuples(st.sampled_from("abcdefg"), DATES), max_size=12), min_size=1, max_size=6
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BATCHES)
def test_property_each_id_once_at_its_winning_version(
    batches: list[list[tuple[str, datetime | None]]],
) -> None:
    async def write(path: Path) -> None:
        async with SQLiteSink(path, synchronous="NORMAL") as sink:
            for b, batch in enumerate(batches):
                messages = [message(m, when, f"{b}.{i}") for i, (m, when) in enumerate(batch)]
                await sink.commit(Batch(messages=messages, state=state(messages=b)))

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "p.db"
        anyio.run(write, path)
        stored = {
            r[0]: (r[1], r[2]) for r in rows(path, "SELECT id, date_updated, body FROM messages")
        }
        count = rows(path, "SELECT COUNT(*), COUNT(DISTINCT id) FROM messages")
    expected = model(batches)
    assert stored == expected
    assert count == [(len(expected), len(expected))]
    if all(when is not None for batch in batches for _, when in batch):
        for message_id, (when, _) in stored.items():
            dates = [w for batch in batches for m, w in batch if m == message_id and w]
            assert when == iso_utc(max(dates))


# -- refusals -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_another_schema_version_is_refused_in_one_line_and_left_alone(db: Path) -> None:
    async with SQLiteSink(db) as sink:
        await sink.commit(Batch(messages=[message("a")], state=state()))
    with closing(sqlite3.connect(db)) as plain:
        plain.execute("UPDATE schema_version SET version = 99")
        plain.commit()
        plain.execute("PRAGMA journal_mode = DELETE")
    before = digest(db)
    with pytest.raises(errors.SinkError) as caught:
        async with SQLiteSink(db):
            pass
    text = str(caught.value)
    assert "\n" not in text and "99" in text and str(SCHEMA_VERSION) in text
    assert digest(db) == before
    assert rows(db, "PRAGMA journal_mode") == [("delete",)]


@pytest.mark.anyio
async def test_a_file_that_is_not_a_database_is_refused_in_one_line(db: Path) -> None:
    write_text(db, "id,body\n1,hello\n" * 200)
    before = digest(db)
    with pytest.raises(errors.SinkError, match="not a SQLite database") as caught:
        async with SQLiteSink(db):
            pass
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)
    assert digest(db) == before


@pytest.mark.anyio
async def test_a_database_of_someone_else_is_refused(db: Path) -> None:
    with closing(sqlite3.connect(db)) as plain:
        plain.execute("CREATE TABLE messages (id TEXT, other TEXT)")
        plain.commit()
    with pytest.raises(errors.SinkError, match="no schema_version"):
        async with SQLiteSink(db):
            pass


@pytest.mark.anyio
async def test_a_missing_directory_is_a_sink_error(tmp_path: Path) -> None:
    with pytest.raises(errors.SinkError, match="cannot open") as caught:
        async with SQLiteSink(tmp_path / "nope" / "x.db"):
            pass
    assert "\n" not in str(caught.value)


@pytest.mark.anyio
async def test_the_sink_must_be_open(db: Path) -> None:
    sink = SQLiteSink(db)
    with pytest.raises(RuntimeError):
        await sink.load(LOCATION)
    async with sink:
        with pytest.raises(TypeError):
            await sink.commit("not a batch")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await sink.commit(
                Batch(messages=[message("a")], conversation_ids=["x", "y"], state=state())
            )
    with pytest.raises(RuntimeError):
        await sink.commit(Batch(messages=[], state=state()))
    with pytest.raises(RuntimeError):
        async with sink:
            pass


@pytest.mark.anyio
async def test_a_cancelled_commit_is_whole_or_absent_and_the_sink_goes_on(db: Path) -> None:
    big = [message(f"n{i}", T1, "x" * 500) for i in range(3000)]
    async with SQLiteSink(db) as sink:
        await sink.commit(Batch(messages=[message("a", T0, "kept")], state=state()))
        with anyio.move_on_after(0.005):
            # The deadline falls while the thread writes: the thread is not abandoned,
            # so the batch lands whole (or, cancelled before it started, not at all).
            await sink.commit(Batch(messages=big, state=state(cursor="c2")))
        after = await sink.load(LOCATION)
        assert after in (state(), state(cursor="c2"))
        assert len(bodies(db)) == (1 if after == state() else 3001)
        await sink.commit(Batch(messages=[message("b")], state=state(cursor="c3")))
        assert await sink.load(LOCATION) == state(cursor="c3")


@pytest.mark.anyio
async def test_a_cancelled_open_closes_what_it_opened(db: Path) -> None:
    sink = SQLiteSink(db)
    with anyio.move_on_after(0.0005):
        await sink.__aenter__()
        await sink.__aexit__(None, None, None)
    assert sink._connection is None
    async with SQLiteSink(db) as again:  # the file is fine
        assert await again.load(LOCATION) is None


# -- batches that fail ----------------------------------------------------------------


async def committed_once(path: Path, **options: Any) -> SQLiteSink:
    """An open sink holding message "a" and state() (the caller closes it)."""
    sink = SQLiteSink(path, **options)
    await sink.__aenter__()
    await sink.commit(Batch(messages=[message("a", T0, "kept")], state=state()))
    return sink


def poison(path: Path, table: str, when: str) -> None:
    """A trigger that aborts the statement writing ``table`` when ``when`` holds."""
    with closing(sqlite3.connect(path)) as plain:
        for event in ("INSERT", "UPDATE"):
            plain.execute(
                f"CREATE TRIGGER poison_{table}_{event} BEFORE {event} ON {table} "
                f"WHEN {when} BEGIN SELECT RAISE(ABORT, 'poisoned'); END"
            )
        plain.commit()


def next_batch() -> Batch:
    messages = [message(f"n{i}", T1, "new") for i in range(50)]
    messages.insert(10, message("a", T1, "would replace"))
    emails = [("n0", EmailMessage(id="e1", subject="s"))]
    return Batch(messages=messages, emails=emails, state=state(cursor="c2", messages=52))


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("table", "when"),
    [
        pytest.param("messages", "NEW.id = 'n40'", id="a-message-late-in-the-batch"),
        pytest.param("emails", "1", id="the-emails"),
        pytest.param("export_state", "NEW.cursor = 'c2'", id="the-state-row"),
    ],
)
async def test_a_failing_batch_keeps_nothing_and_the_state_before_stands(
    db: Path, table: str, when: str
) -> None:
    sink = await committed_once(db)
    try:
        poison(db, table, when)
        with pytest.raises(errors.SinkError, match="poisoned") as caught:
            await sink.commit(next_batch())
        assert isinstance(caught.value.__cause__, sqlite3.Error)
        assert "\n" not in str(caught.value)
        assert await sink.load(LOCATION) == state()
        assert bodies(db) == {"a": "kept"}
        assert rows(db, "SELECT COUNT(*) FROM emails") == [(0,)]
        # The sink is still usable once the cause is gone.
        with closing(sqlite3.connect(db)) as plain:
            plain.execute(f"DROP TRIGGER poison_{table}_INSERT")
            plain.execute(f"DROP TRIGGER poison_{table}_UPDATE")
            plain.commit()
        await sink.commit(next_batch())
        assert await sink.load(LOCATION) == next_batch().state
        assert len(bodies(db)) == 51
    finally:
        await sink.__aexit__(None, None, None)


@pytest.mark.anyio
async def test_a_full_disk_keeps_nothing(db: Path) -> None:
    sink = await committed_once(db)
    try:
        assert sink._connection is not None
        pages = sink._connection.execute("PRAGMA page_count").fetchone()[0]
        sink._connection.execute(f"PRAGMA max_page_count = {pages}")
        big = [message(f"n{i}", T1, "x" * 2000) for i in range(200)]
        with pytest.raises(errors.SinkError, match="full"):
            await sink.commit(Batch(messages=big, state=state(cursor="c2")))
        assert await sink.load(LOCATION) == state()
        assert bodies(db) == {"a": "kept"}
    finally:
        await sink.__aexit__(None, None, None)


@pytest.mark.anyio
async def test_a_read_only_database_keeps_nothing(db: Path) -> None:
    sink = await committed_once(db)
    try:
        assert sink._connection is not None
        # As root, chmod does not stop a write; query_only makes SQLite refuse it alike.
        sink._connection.execute("PRAGMA query_only = ON")
        with pytest.raises(errors.SinkError, match="readonly"):
            await sink.commit(next_batch())
        assert await sink.load(LOCATION) == state()
        assert bodies(db) == {"a": "kept"}
    finally:
        await sink.__aexit__(None, None, None)


@pytest.mark.anyio
async def test_a_lock_held_past_busy_timeout_is_a_sink_error(db: Path) -> None:
    sink = await committed_once(db, busy_timeout=0.2)
    try:
        with closing(sqlite3.connect(db, isolation_level=None)) as other:
            other.execute("BEGIN IMMEDIATE")
            started = time.monotonic()
            with pytest.raises(errors.SinkError, match="locked"):
                await sink.commit(next_batch())
            assert 0.15 < time.monotonic() - started < 5
            other.execute("ROLLBACK")
        # A reader never blocks the writer (WAL).
        with closing(sqlite3.connect(db, isolation_level=None)) as reader:
            reader.execute("BEGIN")
            assert reader.execute("SELECT COUNT(*) FROM messages").fetchone() == (1,)
            await sink.commit(next_batch())
            assert reader.execute("SELECT COUNT(*) FROM messages").fetchone() == (1,)
        assert len(bodies(db)) == 51
    finally:
        await sink.__aexit__(None, None, None)


# -- what a SQL user sees -------------------------------------------------------------


@pytest.mark.anyio
async def test_plain_sqlite3_reads_the_documented_tables(db: Path) -> None:
    messages, emails = realistic(150, seed=2)
    async with SQLiteSink(db) as sink:
        committed = state(high_water=T0, conversations={"c1": "m1"})
        await sink.commit(Batch(messages=messages, emails=emails, state=committed))
    for table, columns in (
        ("messages", MESSAGE_COLUMNS),
        ("emails", EMAIL_COLUMNS),
        ("export_state", STATE_COLUMNS),
    ):
        names = [r[1] for r in rows(db, f"PRAGMA table_info({table})")]
        assert names == [c.name for c in columns]
    assert rows(db, "SELECT version FROM schema_version") == [(SCHEMA_VERSION,)]
    assert rows(db, "PRAGMA journal_mode") == [("wal",)]

    per_type = dict(rows(db, "SELECT message_type, COUNT(*) FROM messages GROUP BY message_type"))
    want: dict[str | None, int] = {}
    for m in messages:
        want[m.message_type] = want.get(m.message_type, 0) + 1
    assert per_type == want
    months = rows(db, "SELECT strftime('%Y-%m', date_added), COUNT(*) FROM messages GROUP BY 1")
    assert sum(n for _, n in months) == len(messages) and all(m[0] for m in months)
    calls = rows(
        db,
        "SELECT COUNT(*) FROM messages WHERE message_type = 'TYPE_CALL' AND call_duration >= 0",
    )
    assert calls[0][0] == sum(1 for m in messages if m.meta and m.meta.call_duration is not None)
    thread = rows(
        db,
        "SELECT COUNT(*) FROM messages, json_each(messages.email_message_ids) AS e "
        "JOIN emails ON emails.id = e.value",
    )
    assert thread[0][0] == len(emails)
    [state_row] = rows(
        db,
        "SELECT location_id, query, cursor, done, high_water, fallback, messages, updated_at,"
        " json_extract(conversations, '$.c1') FROM export_state",
    )
    assert state_row[:7] == (LOCATION, "q=1", "c1", 0, "2025-06-01T12:00:00.000000Z", 0, 1)
    assert state_row[7].endswith("Z") and state_row[8] == "m1"


# -- the crash test -------------------------------------------------------------------

KILLS = 24
SEED = int(os.environ.get("GHL_SQLITE_CRASH_SEED", "20250601"))


def wait_ready(process: subprocess.Popen[str], timeout: float) -> int | None:
    """The batch the child starts from, once it says ``ready``; ``None`` on timeout."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    if not ready:
        return None
    line = process.stdout.readline().split()
    assert line and line[0] == "ready", line
    return int(line[1])


def check_consistent(path: Path) -> int:
    """The file holds exactly the rows its committed state covers; returns batches done."""
    if not path.exists():
        return 0
    with closing(sqlite3.connect(path)) as plain:
        assert plain.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        tables = {
            r[0] for r in plain.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if "export_state" not in tables:
            assert not tables, f"a half-created schema: {tables}"
            return 0
        assert tables == {"messages", "emails", "email_failures", "export_state", "schema_version"}
        stored = dict(plain.execute("SELECT id, body FROM messages").fetchall())
        distinct = plain.execute("SELECT COUNT(DISTINCT id) FROM messages").fetchone()[0]

    async def load() -> ExportState | None:
        async with SQLiteSink(path) as sink:
            return await sink.load(child.LOCATION)

    committed = anyio.run(load)
    if committed is None:
        assert stored == {}, "rows without a state"
        return 0
    assert committed.cursor is not None
    done = int(committed.cursor)
    assert committed == child.state_after(done - 1)
    # Every row the state covers, at its latest covered version, once; nothing else
    # (not even the batch in flight when the kill came: it commits whole or not at all).
    assert stored == child.expected(done)
    assert distinct == len(stored)
    return done


@pytest.mark.slow
def test_kill_9_at_random_instants_never_leaves_the_state_ahead_of_the_rows(
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    path = tmp_path / "crash.db"
    done = 0
    mid_run = 0
    started = time.monotonic()
    for kill in range(KILLS):
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.export.sqlite_crash_child", str(path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            if kill % 6 == 0:
                # While it imports, opens or creates the schema.
                time.sleep(rng.uniform(0.05, 0.3))
            else:
                resumed = wait_ready(process, timeout=15)
                assert resumed == done, f"resumed at {resumed}, committed {done}"
                time.sleep(rng.uniform(0.01, 0.3))
                mid_run += 1
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        now = check_consistent(path)
        assert now >= done, "committed batches disappeared"
        done = now
    assert mid_run >= 20
    assert done >= 2 * mid_run, f"only {done} batches committed: the kills hit no commits"
    assert time.monotonic() - started < 60
