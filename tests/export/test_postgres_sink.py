"""PostgresSink against a real PostgreSQL: upserts, state, failures, concurrency, crashes.

The server is the session's ``postgres_server`` (tests/support/postgres_server.py); each
test gets a fresh database (``postgres_dsn``). Run as a module, this file is the crash
test's child: ``python -m tests.export.test_postgres_sink DSN`` waits for a line on
stdin, then commits :func:`crash_batch` after :func:`crash_batch` from where the sink's
state says, until it is killed.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import subprocess
import sys
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio
import anyio.lowlevel
import asyncpg
import pytest

from ghl_async import errors
from ghl_async.export.postgres import PostgresSink
from ghl_async.export.schema import EMAIL_COLUMNS, MESSAGE_COLUMNS, SCHEMA_VERSION, message_rows
from ghl_async.export.sink import Batch, ExportState, Sink
from ghl_async.models import EmailMessage, EmailMeta, Message, MessageMeta, RepairedMessage
from tests.support.helpers import LogCapture
from tests.support.postgres_server import PostgresServer

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
LOCATION = "loc1"


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def msg(i: int | str, version: float | None = 0, **fields: Any) -> Message:
    """Message ``i``; ``version`` is its date_updated in minutes after T0 (None: unset)."""
    ident = i if isinstance(i, str) else f"m{i:05d}"
    defaults: dict[str, Any] = {
        "message_type": "TYPE_SMS",
        "type": 2,
        "conversation_id": "c1",
        "location_id": LOCATION,
        "date_added": T0,
        "body": f"{ident} v{version}",
        "date_updated": None if version is None else at(version),
    }
    return Message(id=ident, **{**defaults, **fields})


def state(cursor: str | None = None, messages: int = 0, **fields: Any) -> ExportState:
    return ExportState(
        location_id=LOCATION, query="q1", cursor=cursor, messages=messages, **fields
    )


def batch(messages: list[Message], **fields: Any) -> Batch:
    return Batch(
        messages=messages, state=fields.pop("state", state("p1", len(messages))), **fields
    )


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


async def bodies(dsn: str) -> dict[str, str]:
    return {r["id"]: r["body"] for r in await fetch(dsn, "SELECT id, body FROM messages")}


def secrets_in(exc: BaseException, secret: str) -> list[str]:
    """Every text of ``exc`` and its causes that holds ``secret``."""
    found = []
    seen: BaseException | None = exc
    while seen is not None:
        for text in (str(seen), repr(seen)):
            if secret in text:
                found.append(text)
        seen = seen.__cause__ or seen.__context__
    return found


pytestmark = pytest.mark.anyio


# -- the contract ---------------------------------------------------------------------


async def test_round_trip_rows_and_state(postgres_dsn: str) -> None:
    messages = [
        msg(1, 5, attachments=("https://x/a.png",), content_type="text/plain"),
        msg(
            2,
            6,
            message_type="TYPE_CALL",
            type=1,
            meta=MessageMeta(call_duration=42, call_status="completed"),
        ),
        msg(3, None, message_type="TYPE_EMAIL", meta=MessageMeta(email=EmailMeta(["e1"]))),
        RepairedMessage(id="m00004", type=2.5, unparsed={"meta": {"callDuration": "1h"}}),
    ]
    saved = state("cursor-1", 4, high_water=at(6), fallback=True, conversations={"c1": "m2"})
    async with PostgresSink(postgres_dsn) as sink:
        assert isinstance(sink, Sink)
        assert await sink.load(LOCATION) is None
        await sink.commit(
            Batch(messages=messages, conversation_ids=["cx", None, None, None], state=saved)
        )
        assert await sink.load(LOCATION) == saved
        assert await sink.load("other") is None
    async with PostgresSink(postgres_dsn) as sink:  # a new connection reads the same
        assert await sink.load(LOCATION) == saved

    rows = await fetch(postgres_dsn, "SELECT * FROM messages ORDER BY id")
    expected = message_rows(messages, ["cx", None, None, None])
    assert [r["id"] for r in rows] == [e["id"] for e in expected]
    for row, want in zip(rows, expected, strict=True):
        assert list(row.keys()) == [c.name for c in MESSAGE_COLUMNS]
        for column in MESSAGE_COLUMNS:
            value = row[column.name]
            if column.postgres == "jsonb" and value is not None:
                value = json.loads(value)
                if column.name == "unparsed":
                    assert value == json.loads(want["unparsed"])
                    continue
            assert value == want[column.name], column.name
    assert rows[0]["conversation_id"] == "cx"
    assert rows[3]["unparsed"] is not None


async def test_upsert_keeps_the_newest_version(postgres_dsn: str) -> None:
    async with PostgresSink(postgres_dsn) as sink:
        await sink.commit(batch([msg(i, 10, body="first") for i in range(6)] + [msg(9, None)]))
        await sink.commit(
            batch(
                [
                    msg(0, 9, body="older"),  # skipped
                    msg(1, 10, body="equal"),  # replaces
                    msg(2, 11, body="newer"),  # replaces
                    msg(3, None, body="undated"),  # replaces: cannot be ordered
                    msg(9, 1, body="dated over undated"),  # replaces
                ]
            )
        )
        await sink.commit(batch([msg(3, 1, body="dated over undated 2")]))
    got = await bodies(postgres_dsn)
    assert got == {
        "m00000": "first",
        "m00001": "equal",
        "m00002": "newer",
        "m00003": "dated over undated 2",
        "m00004": "first",
        "m00005": "first",
        "m00009": "dated over undated",
    }
    dates = {
        r["id"]: r["date_updated"] for r in await fetch(postgres_dsn, "SELECT * FROM messages")
    }
    assert dates["m00002"] == at(11)
    assert dates["m00000"] == at(10)


async def test_one_id_twice_in_a_batch_keeps_the_version_the_rule_keeps(
    postgres_dsn: str,
) -> None:
    async with PostgresSink(postgres_dsn) as sink:
        await sink.commit(
            batch(
                [
                    msg(1, 5, body="newer"),
                    msg(1, 4, body="older"),
                    msg(2, 4, body="a"),
                    msg(2, 4, body="b: equal, later"),
                    msg(3, 4, body="dated"),
                    msg(3, None, body="undated, later"),
                ]
            )
        )
    assert await bodies(postgres_dsn) == {
        "m00001": "newer",
        "m00002": "b: equal, later",
        "m00003": "undated, later",
    }


async def test_emails_are_upserted_by_id(postgres_dsn: str) -> None:
    def email(ident: str, body: str) -> EmailMessage:
        return EmailMessage(
            id=ident,
            thread_id="t1",
            conversation_id="c1",
            date_added=T0,
            subject="hello",
            body=body,
            from_="a@example.com",
            to=["b@example.com"],
            cc=[],
            direction="outbound",
            status="delivered",
            content_type="text/html",
        )

    async with PostgresSink(postgres_dsn) as sink:
        await sink.commit(batch([msg(1)], emails=[("m00001", email("e1", "v1"))]))
        await sink.commit(
            batch([msg(2)], emails=[("m00002", email("e2", "x")), ("m00001", email("e1", "v2"))])
        )
    rows = await fetch(postgres_dsn, "SELECT * FROM emails ORDER BY id")
    assert list(rows[0].keys()) == [c.name for c in EMAIL_COLUMNS]
    assert [(r["id"], r["message_id"], r["body"]) for r in rows] == [
        ("e1", "m00001", "v2"),
        ("e2", "m00002", "x"),
    ]
    assert json.loads(rows[0]["to"]) == ["b@example.com"]
    assert rows[0]["from_"] == "a@example.com"
    assert rows[0]["date_added"] == T0


async def test_values_postgres_cannot_hold_are_stored_not_refused(postgres_dsn: str) -> None:
    odd = msg(
        1,
        body="a\x00b",
        attachments=("x\x00y",),
        meta=MessageMeta(call_duration=2**40, call_status="s\x00"),
    )
    email = EmailMessage(id="e1", body="b\x00", to=["x\x00@example.com"])
    async with PostgresSink(postgres_dsn) as sink:
        await sink.commit(batch([odd], emails=[("m00001", email)]))
    row = (await fetch(postgres_dsn, "SELECT * FROM messages"))[0]
    assert row["body"] == "a\ufffdb"
    assert json.loads(row["attachments"]) == ["x\ufffdy"]
    assert row["call_status"] == "s\ufffd"
    assert row["call_duration"] is None
    assert json.loads(row["meta"])["callDuration"] == 2**40
    stored = (await fetch(postgres_dsn, 'SELECT body, "to" FROM emails'))[0]
    assert stored["body"] == "b\ufffd"
    assert json.loads(stored["to"]) == ["x\ufffd@example.com"]


async def test_readable_by_sql(postgres_dsn: str) -> None:
    kinds = ["TYPE_SMS"] * 5 + ["TYPE_CALL"] * 3 + ["TYPE_EMAIL"] * 2
    async with PostgresSink(postgres_dsn) as sink:
        await sink.commit(
            batch(
                [
                    msg(i, i, message_type=kind, meta=MessageMeta(call_duration=i))
                    for i, kind in enumerate(kinds)
                ]
            )
        )
        await sink.commit(batch([msg(0, 99, message_type="TYPE_SMS")]))  # an edit: one row
    per_type = await fetch(
        postgres_dsn,
        "SELECT message_type, count(*) AS n FROM messages GROUP BY message_type ORDER BY 1",
    )
    assert [(r["message_type"], r["n"]) for r in per_type] == [
        ("TYPE_CALL", 3),
        ("TYPE_EMAIL", 2),
        ("TYPE_SMS", 5),
    ]
    calls = await fetch(
        postgres_dsn,
        "SELECT sum((meta->>'callDuration')::int) AS s, max(date_updated) AS latest,"
        " pg_typeof(max(date_added))::text AS t FROM messages"
        " WHERE message_type = 'TYPE_CALL'",
    )
    assert calls[0]["s"] == 5 + 6 + 7
    assert calls[0]["latest"] == at(7)
    assert calls[0]["t"] == "timestamp with time zone"
    states = await fetch(
        postgres_dsn, "SELECT location_id, cursor, done, messages, updated_at FROM export_state"
    )
    assert [(r["location_id"], r["cursor"], r["done"], r["messages"]) for r in states] == [
        (LOCATION, "p1", False, 1)
    ]
    assert states[0]["updated_at"] > T0


async def test_a_bad_batch_is_refused_before_any_write(postgres_dsn: str) -> None:
    async with PostgresSink(postgres_dsn) as sink:
        with pytest.raises(TypeError, match="Batch"):
            await sink.commit("rows")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="2 conversation ids for 1 messages"):
            await sink.commit(batch([msg(1)], conversation_ids=["a", "b"]))
        with pytest.raises(TypeError, match="location_id"):
            await sink.load(1)  # type: ignore[arg-type]
        assert await sink.load(LOCATION) is None
        with pytest.raises(RuntimeError, match="entered once"):
            await sink.__aenter__()
    with pytest.raises(RuntimeError, match="closed"):
        await sink.load(LOCATION)


# -- the schema -----------------------------------------------------------------------


async def test_many_sinks_opening_an_empty_database_at_once_create_it_once(
    postgres_dsn: str,
) -> None:
    sinks = [PostgresSink(postgres_dsn) for _ in range(8)]

    async def open_one(sink: PostgresSink, i: int) -> None:
        async with sink:
            await sink.commit(batch([msg(i)], state=ExportState(location_id=f"l{i}", query="q")))

    async with anyio.create_task_group() as group:
        for i, sink in enumerate(sinks):
            group.start_soon(open_one, sink, i)
    assert [r["version"] for r in await fetch(postgres_dsn, "SELECT * FROM schema_version")] == [
        SCHEMA_VERSION
    ]
    assert len(await bodies(postgres_dsn)) == 8


async def test_another_schema_version_is_refused_and_left_unchanged(postgres_dsn: str) -> None:
    async with PostgresSink(postgres_dsn) as sink:
        await sink.commit(batch([msg(1)]))
    connection = await asyncpg.connect(postgres_dsn)
    try:
        await connection.execute("UPDATE schema_version SET version = 99")
    finally:
        await connection.close()
    with pytest.raises(errors.SinkError) as caught:
        async with PostgresSink(postgres_dsn):
            pass
    text = str(caught.value)
    assert "\n" not in text
    assert "version 99" in text
    assert f"version {SCHEMA_VERSION}" in text
    assert [r["version"] for r in await fetch(postgres_dsn, "SELECT * FROM schema_version")] == [
        99
    ]
    assert await bodies(postgres_dsn) == {"m00001": "m00001 v0"}


async def test_a_table_of_other_columns_is_refused_and_left_unchanged(postgres_dsn: str) -> None:
    async with PostgresSink(postgres_dsn):
        pass
    connection = await asyncpg.connect(postgres_dsn)
    try:
        await connection.execute("ALTER TABLE emails DROP COLUMN subject")
    finally:
        await connection.close()
    with pytest.raises(errors.SinkError, match="table emails has columns"):
        async with PostgresSink(postgres_dsn):
            pass


async def test_an_unreadable_state_is_a_sink_error(postgres_dsn: str) -> None:
    async with PostgresSink(postgres_dsn) as sink:
        await sink.commit(batch([msg(1)]))
        connection = await asyncpg.connect(postgres_dsn)
        try:
            await connection.execute("""UPDATE export_state SET conversations = '{"c1": 5}'""")
        finally:
            await connection.close()
        with pytest.raises(errors.SinkError, match="export_state of loc1 is unreadable"):
            await sink.load(LOCATION)


async def test_a_database_with_a_foreign_messages_table_is_refused(postgres_dsn: str) -> None:
    connection = await asyncpg.connect(postgres_dsn)
    try:
        await connection.execute("CREATE TABLE messages (id int PRIMARY KEY, x text)")
    finally:
        await connection.close()
    with pytest.raises(errors.SinkError, match="no schema_version: not a ghl-async mirror"):
        async with PostgresSink(postgres_dsn):
            pass
    tables = await fetch(
        postgres_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    )
    assert [r["tablename"] for r in tables] == ["messages"]


# -- the DSN and its password ---------------------------------------------------------


@pytest.mark.parametrize(
    "dsn",
    [
        "mysql://user:hunter2@127.0.0.1:1/db",
        "sqlite:///hunter2.db",
        "127.0.0.1:5432/hunter2",
        "",
        "http://[::1/hunter2",
    ],
)
async def test_a_dsn_of_another_kind_is_refused_before_any_io(dsn: str) -> None:
    with pytest.raises(ValueError, match="postgresql://") as caught:
        PostgresSink(dsn)
    assert "hunter2" not in str(caught.value)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(TypeError, match="dsn must be a str"):
        PostgresSink(b"postgresql://x/y")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        PostgresSink("postgresql://x/y", timeout=0)
    with pytest.raises(TypeError, match="timeout"):
        PostgresSink("postgresql://x/y", timeout="1")  # type: ignore[arg-type]


async def test_the_password_is_never_shown(
    postgres_server: PostgresServer, postgres_dsn: str, ghl_log: LogCapture
) -> None:
    secret = "s3cr%40t-pw"  # percent-encoded in the DSN: s3cr@t-pw
    plain = "s3cr@t-pw"
    with_password = postgres_dsn.replace("postgres@", f"postgres:{secret}@")
    sink = PostgresSink(with_password + "?application_name=x")
    assert secret not in repr(sink) and plain not in repr(sink)
    assert sink.dsn.startswith("postgresql://postgres:***@127.0.0.1")
    async with sink:  # trust: the server asks for no password
        await sink.commit(batch([msg(1)]))
    short_scheme = postgres_dsn.replace("postgresql://", "postgres://")
    option = PostgresSink(short_scheme + "?password=hunter2&sslmode=disable")
    assert "hunter2" not in repr(option)
    assert "password=***" in option.dsn
    async with option:
        assert await option.load(LOCATION) is not None

    closed = with_password.replace(f":{postgres_server.port}/", ":1/")
    with pytest.raises(errors.SinkError, match="cannot connect") as caught:
        async with PostgresSink(closed, timeout=5):
            pass
    assert secrets_in(caught.value, plain) == [] and secrets_in(caught.value, secret) == []
    assert "***" in str(caught.value)
    assert plain not in ghl_log.text and secret not in ghl_log.text
    assert "postgres:***@" in ghl_log.text  # the open was logged, without the password


# -- failures ---------------------------------------------------------------------------


async def test_server_gone_mid_run_then_a_fresh_sink_resumes_from_the_last_commit(
    postgres_server: PostgresServer, postgres_dsn: str
) -> None:
    async with PostgresSink(postgres_dsn) as sink:
        await sink.commit(batch([msg(1), msg(2)], state=state("page-1", 2)))
        postgres_server.stop(immediate=True)  # a crash: no shutdown checkpoint
        with pytest.raises(errors.SinkError, match="not written, state unchanged") as caught:
            await sink.commit(batch([msg(3)], state=state("page-2", 3)))
        assert isinstance(
            caught.value.__cause__, (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
        )
        with pytest.raises(errors.SinkError, match="cannot read"):
            await sink.load(LOCATION)
    postgres_server.start()  # replays the WAL
    async with PostgresSink(postgres_dsn) as sink:
        assert await sink.load(LOCATION) == state("page-1", 2)
    assert sorted(await bodies(postgres_dsn)) == ["m00001", "m00002"]
    postgres_server.stop()
    with pytest.raises(errors.SinkError, match="cannot connect"):
        async with PostgresSink(postgres_dsn, timeout=5):
            pass
    postgres_server.start()


async def test_a_failed_commit_keeps_nothing_and_the_sink_goes_on(postgres_dsn: str) -> None:
    async with PostgresSink(postgres_dsn) as sink:
        await sink.commit(batch([msg(1)], state=state("page-1", 1)))
        connection = await asyncpg.connect(postgres_dsn)
        try:  # a constraint the batch breaks, half way through the transaction
            await connection.execute(
                "ALTER TABLE export_state ADD CONSTRAINT small CHECK (messages < 100)"
            )
        finally:
            await connection.close()
        with pytest.raises(errors.SinkError, match="CheckViolationError"):
            await sink.commit(batch([msg(2), msg(1, 5)], state=state("page-2", 100)))
        assert await sink.load(LOCATION) == state("page-1", 1)
        assert await bodies(postgres_dsn) == {"m00001": "m00001 v0"}
        await sink.commit(batch([msg(2)], state=state("page-2", 2)))
        assert await sink.load(LOCATION) == state("page-2", 2)


async def test_a_commit_cancelled_while_waiting_keeps_nothing_and_closes_the_sink(
    postgres_dsn: str,
) -> None:
    async with PostgresSink(postgres_dsn) as sink:
        await sink.commit(batch([msg(1)], state=state("page-1", 1)))
        holder = await asyncpg.connect(postgres_dsn)
        try:
            async with holder.transaction():  # holds m00001's row: the commit waits
                await holder.execute("SELECT * FROM messages WHERE id = 'm00001' FOR UPDATE")
                with anyio.move_on_after(0.5) as scope:
                    await sink.commit(batch([msg(2), msg(1, 5)], state=state("page-2", 2)))
                assert scope.cancelled_caught
        finally:
            await holder.close()
        with pytest.raises(errors.SinkError, match="interrupted"):
            await sink.commit(batch([msg(3)]))
    async with PostgresSink(postgres_dsn) as sink:
        assert await sink.load(LOCATION) == state("page-1", 1)
    assert await bodies(postgres_dsn) == {"m00001": "m00001 v0"}


# -- many writers -----------------------------------------------------------------------


async def test_concurrent_sinks_with_overlapping_ids_never_deadlock_and_the_newest_wins(
    postgres_dsn: str,
) -> None:
    writers, rounds, pool, size = 4, 12, 300, 150
    rng = random.Random(7)
    plans: list[list[list[int]]] = [
        [rng.sample(range(pool), size) for _ in range(rounds)] for _ in range(writers)
    ]
    newest: dict[str, tuple[int, str]] = {}
    for w, plan in enumerate(plans):
        for r, ids in enumerate(plan):
            version = r * writers + w  # unique: no ties
            for i in ids:
                key = f"m{i:05d}"
                if key not in newest or newest[key][0] < version:
                    newest[key] = (version, f"w{w} r{r}")

    async def write(w: int) -> None:
        async with PostgresSink(postgres_dsn) as sink:
            for r, ids in enumerate(plans[w]):
                # Not in id order: the sink sorts, or two writers would deadlock.
                messages = [msg(i, r * writers + w, body=f"w{w} r{r}") for i in ids]
                await sink.commit(
                    Batch(messages=messages, state=ExportState(location_id=f"l{w}", query="q"))
                )
                await anyio.lowlevel.checkpoint()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for w in range(writers):
                group.start_soon(write, w)
    rows = await fetch(postgres_dsn, "SELECT id, body, date_updated FROM messages")
    assert {r["id"]: (r["date_updated"], r["body"]) for r in rows} == {
        key: (at(version), body) for key, (version, body) in newest.items()
    }


# -- the crash test ---------------------------------------------------------------------

CRASH_BATCH = 40
CRASH_OVERLAP = 10  # each batch sends again this many of the previous batch's messages


def crash_ids(k: int) -> list[int]:
    """The message numbers of batch ``k``: new ones, and some of batch ``k - 1`` again."""
    new = list(range(k * CRASH_BATCH, (k + 1) * CRASH_BATCH))
    again = list(range((k - 1) * CRASH_BATCH, (k - 1) * CRASH_BATCH + CRASH_OVERLAP))
    return new + (again if k else [])


def crash_batch(k: int) -> Batch:
    """Batch ``k`` of the crash test: its messages at version ``k``, the state after it."""
    messages = [msg(i, k, body=f"{i} at {k}") for i in crash_ids(k)]
    total = sum(len(crash_ids(j)) for j in range(k + 1))
    return Batch(
        messages=messages,
        state=state(str(k + 1), total, high_water=at(k)),
    )


def crash_expected(committed: int) -> dict[str, datetime]:
    """What the database must hold after batches ``0 .. committed - 1``: id to version."""
    latest: dict[str, datetime] = {}
    for k in range(committed):
        for i in crash_ids(k):
            latest[f"m{i:05d}"] = at(k)
    return latest


async def crash_child(dsn: str) -> None:
    async with PostgresSink(dsn) as sink:
        saved = await sink.load(LOCATION)
        k = 0 if saved is None else int(saved.cursor or 0)
        while True:
            await sink.commit(crash_batch(k))
            k += 1


async def crash_check(dsn: str) -> int:
    """Check the invariants; return how many batches the state says are committed."""
    connection = await asyncpg.connect(dsn)
    try:
        if await connection.fetchval("SELECT to_regclass('export_state')") is None:
            return 0  # killed before the schema was committed
        async with connection.transaction(isolation="repeatable_read"):
            saved = await connection.fetchrow(
                "SELECT cursor, messages, high_water FROM export_state WHERE location_id = $1",
                LOCATION,
            )
            rows = await connection.fetch("SELECT id, date_updated, body FROM messages")
    finally:
        await connection.close()
    committed = 0 if saved is None else int(saved["cursor"])
    expected = crash_expected(committed)
    found = {r["id"]: r["date_updated"] for r in rows}
    assert len(found) == len(rows)
    # Every message the state covers, at its latest version; nothing the state does not.
    assert found == expected, f"after {committed} batches"
    for r in rows:  # the whole row is of that version, not only its date
        version = (r["date_updated"] - T0) // timedelta(minutes=1)
        assert r["body"] == f"{int(r['id'][1:])} at {version}"
    if saved is not None:
        assert saved["messages"] == crash_batch(committed - 1).state.messages
        assert saved["high_water"] == at(committed - 1)
    return committed


def _spawn_child(dsn: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.export.test_postgres_sink", dsn],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_sigkill_at_random_instants_never_loses_or_doubles_a_message(
    postgres_dsn: str,
) -> None:
    rng = random.Random(20250601)
    kills = 24
    progress: list[int] = []
    # Children import everything before they are let go (a third of a second each):
    # two warm up while one works, so the kills land in the work, not in the imports.
    warm = deque(_spawn_child(postgres_dsn) for _ in range(2))
    try:
        for _ in range(kills):
            child = warm.popleft()
            warm.append(_spawn_child(postgres_dsn))
            assert child.stdin is not None and child.stdout is not None
            assert child.stdout.readline() == "ready\n"
            child.stdin.write("go\n")
            child.stdin.flush()
            try:
                child.wait(timeout=rng.uniform(0.03, 0.3))
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGKILL)
            _, err = child.communicate(timeout=30)
            assert child.returncode == -signal.SIGKILL, err
            progress.append(asyncio.run(crash_check(postgres_dsn)))
    finally:
        for child in warm:
            child.kill()
            child.communicate()
    assert progress == sorted(progress)
    assert progress[-1] >= kills, progress  # the children did get work done


def _child_main() -> None:
    dsn = sys.argv[1]
    print("ready", flush=True)
    sys.stdin.readline()
    asyncio.run(crash_child(dsn))


if __name__ == "__main__":
    _child_main()
