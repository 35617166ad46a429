"""ghl_async.export.jobs and its commands, in process: a real redis-server, a FakeAgency, and
an arq worker run in burst mode in the test's own loop, writing into SQLite (the
PostgreSQL run with workers killed is in test_arq_workers.py)."""

from __future__ import annotations

import asyncio
import fcntl
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job
from arq.worker import Worker

from ghl_async import RateLimit
from ghl_async.cli.main import main
from ghl_async.cli.queue import read_tokens
from ghl_async.client import Client
from ghl_async.export import SQLiteSink
from ghl_async.export import export_location as export_into
from ghl_async.export.jobs import (
    EXPORT_LOCATION,
    LocationState,
    RideOut,
    _Fenced,
    _HandedOver,
    _limiter,
    _Owner,
    _write_state,
    enqueue_locations,
    export_location,
    functions,
    job_id,
    latest_run,
    part_path,
    read_run,
    startup,
    worker_settings,
)
from ghl_async.export.jsonl import JsonlSink
from ghl_async.export.pipeline import ExportResult
from ghl_async.export.sink import Batch, ExportState
from ghl_async.testing import FakeAgency
from ghl_async.testing._location import channel_admits
from tests.support.redis_server import RedisServer, redis_server  # noqa: F401

pytestmark = pytest.mark.anyio


@pytest.fixture
async def pool(redis_server: RedisServer) -> AsyncIterator[ArqRedis]:  # noqa: F811
    redis = await create_pool(RedisSettings.from_dsn(redis_server.url))
    yield redis
    await redis.aclose()


async def run_burst(pool: ArqRedis, tokens: Any, **options: Any) -> Worker:
    settings = worker_settings(
        tokens=tokens, lease=2.0, report_every=0.01, burst=True, poll_delay=0.05, **options
    )
    worker = Worker(**settings, redis_pool=pool, handle_signals=False)
    await worker.main()  # burst: returns once the queue is empty (the pool stays ours)
    return worker


def ids_in(db: Path, location_id: str) -> list[str]:
    """The message ids the SQLite mirror holds for a location."""
    with closing(sqlite3.connect(db)) as connection:
        rows = connection.execute("SELECT id FROM messages WHERE location_id = ?", (location_id,))
        return [row[0] for row in rows]


def expected_ids(agency: FakeAgency, location_id: str) -> list[str]:
    fake = agency.locations[location_id]
    return sorted(m["id"] for c in fake.conversation_ids for m in fake.messages(c))


def route_minimum(agency: FakeAgency, location_id: str) -> int:
    """The export route's fewest requests for a location: 500 a page, each pass apart."""
    fake = agency.locations[location_id]
    kinds = [m["messageType"] for c in fake.conversation_ids for m in fake.messages(c)]
    rest = sum(channel_admits(None, kind) for kind in kinds)
    return sum(max(1, -(-n // 500)) for n in (rest, len(kinds) - rest))


def sqlite_url(db: Path) -> str:
    return f"sqlite:///{db}"


class Stop(Exception):
    """What a worker killed after a few pages amounts to: nothing after them is written."""


async def test_enqueue_run_and_read_back(pool: ArqRedis, tmp_path: Path) -> None:
    db = tmp_path / "mirror.db"
    async with FakeAgency(3, conversations=4, messages=(1, 30), seed=5) as agency:
        tokens = {f.location_id: f.token for f in agency.locations.values()}
        run_id = await enqueue_locations(
            pool,
            [*agency.location_ids, agency.location_ids[0]],  # a duplicate runs once
            to=sqlite_url(db),
            base_url=agency.url,
            rate_limit=RateLimit(50, 1.0),
        )
        queued = await read_run(pool, run_id)
        assert queued is not None
        assert [s.state for s in queued.locations] == ["queued"] * 3
        assert not queued.finished
        assert queued.where == sqlite_url(db)
        assert await latest_run(pool) == run_id
        worker = await run_burst(pool, tokens)
        assert worker.jobs_complete == 3
        run = await read_run(pool)
        assert run is not None and run.finished and run.ok
        for state in run.locations:
            ids = ids_in(db, state.location_id)
            assert sorted(ids) == expected_ids(agency, state.location_id)
            assert state.messages == len(ids)
            assert state.tries == 1 and not state.fallback
            # The export route: one request a pass, nothing per conversation.
            assert agency.locations[state.location_id].stats.by_route == {"export": 2}
        assert run.messages == agency.total_messages
        assert agency.throttled == 0


async def test_a_retry_resumes_from_the_sinks_state(pool: ArqRedis, tmp_path: Path) -> None:
    db = tmp_path / "mirror.db"
    async with FakeAgency(1, conversations=8, messages=(100, 200), seed=2) as agency:
        (location_id,) = agency.location_ids
        fake = agency.locations[location_id]
        tokens = {location_id: fake.token}

        def stop_after_one_page(result: ExportResult) -> None:
            raise Stop

        # A first try that died after its first page: that page and its state committed.
        async with SQLiteSink(db) as sink, Client(fake.token, base_url=agency.url) as client:
            with pytest.raises(Stop):
                await export_into(client, location_id, sink, on_batch=stop_after_one_page)
        first = len(ids_in(db, location_id))
        assert 0 < first < fake.total_messages
        before = fake.stats.by_route["export"]
        run_id = await enqueue_locations(
            pool, [location_id], to=sqlite_url(db), base_url=agency.url
        )
        await pool.set(f"arq:retry:{job_id(run_id, location_id)}", 1)  # the next try is 2
        await run_burst(pool, tokens)
        run = await read_run(pool, run_id)
        assert run is not None and run.ok
        (state,) = run.locations
        assert state.tries == 2
        ids = ids_in(db, location_id)
        assert sorted(ids) == expected_ids(agency, location_id)
        assert state.messages == len(ids)
        # Resumed after the committed page: both tries together made the requests of
        # one export, and the retry none of the first's again.
        assert before == 1
        assert fake.stats.by_route == {"export": route_minimum(agency, location_id)}


async def test_refusals_and_missing_tokens_fail_the_location(
    pool: ArqRedis, tmp_path: Path
) -> None:
    async with FakeAgency(2, conversations=2, messages=3, seed=1) as agency:
        first, second = agency.location_ids
        # A sink that cannot open fails the location with the sink's own reason.
        nowhere = sqlite_url(tmp_path / "missing" / "mirror.db")
        run_id = await enqueue_locations(pool, [first, second], to=nowhere, base_url=agency.url)
        await run_burst(pool, {first: agency.locations[first].token})
        run = await read_run(pool, run_id)
        assert run is not None and run.finished and not run.ok
        states = {s.location_id: s for s in run.locations}
        assert states[first].state == "failed"
        assert "cannot open" in (states[first].error or "")
        assert states[second].state == "failed"
        assert "no token" in (states[second].error or "")
        # An async provider supplies the token; a database holding the location
        # exported with other filters is refused, not mixed.
        db = tmp_path / "mirror.db"
        tokens = {f.location_id: f.token for f in agency.locations.values()}

        async def provider(location_id: str) -> str:
            return tokens[location_id]

        run_id = await enqueue_locations(pool, [first], to=sqlite_url(db), base_url=agency.url)
        await run_burst(pool, provider)
        run = await read_run(pool, run_id)
        assert run is not None and run.ok
        assert sorted(ids_in(db, first)) == expected_ids(agency, first)
        run_id = await enqueue_locations(
            pool, [first], to=sqlite_url(db), base_url=agency.url, channel="SMS"
        )
        await run_burst(pool, provider)
        run = await read_run(pool, run_id)
        assert run is not None and not run.ok
        assert "other arguments" in (run.locations[0].error or "")
        assert "another database" in (run.locations[0].error or "")


def append(path: str, data: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(data)


def lines_in(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_bytes().splitlines()]


async def test_parts_under_out_dir_resume_refuse_and_replace(
    pool: ArqRedis, tmp_path: Path
) -> None:
    async with FakeAgency(2, conversations=8, messages=(100, 200), seed=2) as agency:
        first, second = agency.location_ids
        tokens = {f.location_id: f.token for f in agency.locations.values()}
        path = part_path(str(tmp_path), first)

        def stop_after_one_page(result: ExportResult) -> None:
            raise Stop

        # A first try that died after its first page, committed with its record.
        fake = agency.locations[first]
        async with JsonlSink(path, mode="new", commit_every=0) as sink:
            async with Client(fake.token, base_url=agency.url) as client:
                with pytest.raises(Stop):
                    await export_into(client, first, sink, on_batch=stop_after_one_page)
        append(path, b'{"torn')  # and a torn line after it
        append(part_path(str(tmp_path), second), b"already here\n")
        run_id = await enqueue_locations(pool, [first, second], str(tmp_path), base_url=agency.url)
        await pool.set(f"arq:retry:{job_id(run_id, first)}", 1)  # the next try is 2
        await run_burst(pool, tokens)
        run = await read_run(pool, run_id)
        assert run is not None and run.finished and not run.ok
        assert run.where == str(tmp_path)
        states = {s.location_id: s for s in run.locations}
        lines = lines_in(path)
        ids = [line["id"] for line in lines]
        assert sorted(ids) == expected_ids(agency, first)  # each once
        assert states[first].state == "done" and states[first].tries == 2
        assert states[first].messages == len(ids)
        assert fake.stats.by_route["export"] == route_minimum(agency, first)
        # A part that is there already is refused (mode "new"), then replaced ("force").
        assert states[second].state == "failed"
        assert "--resume" in (states[second].error or "")
        run_id = await enqueue_locations(
            pool, [second], str(tmp_path), base_url=agency.url, mode="force"
        )
        await run_burst(pool, tokens)
        run = await read_run(pool, run_id)
        assert run is not None and run.ok
        part = part_path(str(tmp_path), second)
        assert sorted(line["id"] for line in lines_in(part)) == expected_ids(agency, second)


async def test_a_late_first_try_resumes_what_a_later_try_wrote(
    pool: ArqRedis, tmp_path: Path
) -> None:
    # A first try whose lease ran out before it opened the part (its loop stalled)
    # starts after the second try wrote the whole part: it resumes, it does not refuse.
    async with FakeAgency(1, conversations=3, messages=(5, 20), seed=6) as agency:
        (location_id,) = agency.location_ids
        fake = agency.locations[location_id]
        tokens = {location_id: fake.token}
        run_id = await enqueue_locations(pool, [location_id], str(tmp_path), base_url=agency.url)
        await pool.set(f"arq:retry:{job_id(run_id, location_id)}", 1)  # try 2 runs first
        await run_burst(pool, tokens)
        before = fake.stats.by_route["export"]
        ctx: dict[str, Any] = {"redis": pool, "job_id": "late", "job_try": 1}
        await startup(ctx, tokens=tokens)
        state = await export_location(ctx, location_id, run_id=run_id, base_url=agency.url)
        assert state["state"] == "done", state
        assert fake.stats.by_route["export"] == before  # the sink says done: nothing read
        ids = [line["id"] for line in lines_in(part_path(str(tmp_path), location_id))]
        assert sorted(ids) == expected_ids(agency, location_id)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "exactly one of out_dir"),
        ({"out_dir": "x", "to": "sqlite:///m.db"}, "exactly one of out_dir"),
        ({"to": "mysql://db"}, "not a sink URL"),
        ({"to": "sqlite:///m.db", "channel": "Fax"}, "not a channel"),
        ({"to": "sqlite:///m.db", "since": datetime(2025, 1, 1)}, "timezone-aware"),
    ],
)
async def test_enqueue_refuses_bad_arguments_before_enqueuing(
    pool: ArqRedis, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        await enqueue_locations(pool, ["loc1"], **arguments)
    assert await latest_run(pool) is None


async def test_a_job_arq_gave_up_on_reads_as_failed(pool: ArqRedis, tmp_path: Path) -> None:
    async with FakeAgency(1, conversations=1, messages=2, seed=4) as agency:
        (location_id,) = agency.location_ids
        run_id = await enqueue_locations(pool, [location_id], str(tmp_path), base_url=agency.url)
        # Every try used up by workers that died: arq fails the job without running it.
        # The last try to report said why it was retried: that cause leads the reason.
        await pool.set(f"arq:retry:{job_id(run_id, location_id)}", 10)
        said = LocationState(
            location_id=location_id,
            state="running",
            tries=9,
            error="try 9: HTTP 500: boom; retrying",
            updated=time.time(),
        )
        key = f"ghl_async:run:{run_id}:locations"
        await pool.hset(key, location_id, msgspec.json.encode(said).decode())  # type: ignore[misc]
        await run_burst(pool, {location_id: agency.locations[location_id].token})
        quiet = await read_run(pool, run_id)  # reported just now: arq not asked yet
        assert quiet is not None and quiet.locations[0].state == "running"
        run = await read_run(pool, run_id, ask_arq_after=0)
        assert run is not None
        (state,) = run.locations
        assert state.state == "failed"
        assert state.error == "HTTP 500: boom (arq: max 10 retries exceeded)"


async def test_unknown_runs_and_settings(pool: ArqRedis) -> None:
    assert await latest_run(pool) is None
    assert await read_run(pool) is None
    assert await read_run(pool, "nope") is None
    (function,) = functions(max_tries=3)
    assert function.name == EXPORT_LOCATION
    assert function.max_tries == 3
    with pytest.raises(ValueError):
        await startup({}, tokens={}, lease=0)
    seen: list[str] = []

    async def mine(ctx: dict[str, Any]) -> None:
        seen.append("mine")

    settings = worker_settings(tokens={}, on_startup=mine, max_jobs=2)
    ctx: dict[str, Any] = {}
    await settings["on_startup"](ctx)
    assert seen == ["mine"]
    assert "ghl_async" in ctx
    assert settings["max_jobs"] == 2


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"a1": "t1", "b2": "t2"}', {"a1": "t1", "b2": "t2"}),
        ('[{"id": "a1", "token": "t1"}]', {"a1": "t1"}),
        ('{"url": "x", "locations": [{"id": "a1", "token": "t1"}, {"id": 3}]}', {"a1": "t1"}),
    ],
)
def test_read_tokens_forms(tmp_path: Path, content: str, expected: dict[str, str]) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(content)
    assert read_tokens(str(path)) == expected


def test_queue_commands_refuse_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = tmp_path / "tokens.json"
    locations = tmp_path / "locations.txt"
    redis = "redis://127.0.0.1:1/0"
    for content, message in [
        ("[1, 2]", "no location token"),
        ("not json", "not JSON"),
    ]:
        tokens.write_text(content)
        assert main(["worker", "--redis", redis, "--tokens-file", str(tokens)]) == 2
        assert message in capsys.readouterr().err
    assert main(["worker", "--redis", redis, "--tokens-file", str(tmp_path / "none")]) == 2
    assert "cannot read the tokens file" in capsys.readouterr().err
    tokens.write_text('{"a1": "secret-token"}')
    assert main(["worker", "--redis", redis, "--tokens-file", str(tokens)]) == 2
    err = capsys.readouterr().err
    assert "cannot reach Redis" in err and "secret-token" not in err
    assert main(["status", "--queue", "redis://user:pw@127.0.0.1:1/0"]) == 2
    err = capsys.readouterr().err
    assert "***@127.0.0.1:1" in err and "pw" not in err
    export = ["export", "--locations-file", str(locations), "--out", str(tmp_path / "o")]
    assert main(export) == 2
    assert "go together" in capsys.readouterr().err
    locations.write_text("# nothing\n")
    assert main([*export, "--queue", redis]) == 2
    assert "names no location" in capsys.readouterr().err
    locations.write_text("ok1\nbad id\n")
    assert main([*export, "--queue", redis]) == 2
    assert "line 2" in capsys.readouterr().err
    locations.write_text("loc1\n")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "loc1.jsonl").write_text("x\n")
    assert main([*export, "--queue", redis]) == 2
    assert "--resume" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    bad_out = ["export", "--locations-file", str(locations), "--out", str(tmp_path / "file")]
    assert main([*bad_out, "--queue", redis]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main([*export, "--queue", redis, "--resume"]) == 2
    assert "cannot reach Redis" in capsys.readouterr().err
    # What the jobs cannot honour is refused in one line, before Redis is asked.
    to = ["--to", "postgresql://user:pw-secret@127.0.0.1:1/db"]
    for flags, message in [
        (["--types", "sms"], "--types filters a conversation export"),
        ([*to, "--resume"], "--to writes to the database"),
        ([*to, "--force"], "--to writes to the database"),
        (["--since", "2025-02-01", "--until", "2025-01-01"], "is after --until"),
    ]:
        argv = [*export, "--queue", redis, *flags]
        if "--to" in flags:  # --to goes without --out
            argv = [a for a in argv if a not in ("--out", str(tmp_path / "o"))]
        assert main(argv) == 2, flags
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
        assert "pw-secret" not in err
    no_out = ["export", "--locations-file", str(locations), "--queue", redis]
    assert main([*no_out, *to, "--out", str(tmp_path / "o")]) == 2
    assert "leave out --out" in capsys.readouterr().err
    assert main([*no_out, "--to", "mysql://db"]) == 2
    assert "not a sink URL" in capsys.readouterr().err
    # Every location flag is taken; the next step is Redis (unreachable here), and
    # the sink URL's password is never shown.
    location_flags = ["--since", "2025-01-01", "--until", "2025-02-01", "--channel", "sms"]
    location_flags += ["--contact", "c1", "--email-bodies"]
    assert main([*no_out, *to, *location_flags]) == 2
    err = capsys.readouterr().err
    assert "cannot reach Redis" in err and "pw-secret" not in err


async def test_status_command(
    pool: ArqRedis,
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await _main(["status", "--queue", redis_server.url]) == 2
    assert "no run yet" in capsys.readouterr().err
    async with FakeAgency(2, conversations=2, messages=3, seed=1) as agency:
        first, second = agency.location_ids
        to = "sqlite:///" + str(tmp_path / "mirror.db")
        run_id = await enqueue_locations(pool, [first, second], to=to, base_url=agency.url)
        await run_burst(pool, {first: agency.locations[first].token})
    assert await _main(["status", "--queue", redis_server.url, "--run", run_id]) == 1
    out = capsys.readouterr().out
    assert f"run {run_id}" in out
    assert "done" in out and "failed" in out and "no token" in out
    assert "2/2 locations" in out
    # A sink URL's password shows nowhere: not in status, not in the jobs' arguments
    # (arq logs those); the jobs read the URL from the run's record.
    secret = "postgresql://user:pw-secret@127.0.0.1:1/db"
    run_id = await enqueue_locations(pool, ["loc1"], to=secret)
    assert await _main(["status", "--queue", redis_server.url, "--run", run_id]) == 0
    out = capsys.readouterr().out
    assert "user:***@127.0.0.1:1/db" in out and "pw-secret" not in out
    info = await Job(job_id(run_id, "loc1"), pool).info()
    assert info is not None and "pw-secret" not in repr((info.args, info.kwargs))


async def wait_for_a_run(pool: ArqRedis) -> None:
    # Polling Redis: the run is written by another thread's event loop.
    run = None
    while run is None:
        run = await latest_run(pool)
        await anyio.sleep(0.02)


async def _main(argv: list[str]) -> int:
    # main() runs its own event loop: give it a thread of its own.
    import anyio.to_thread

    return await anyio.to_thread.run_sync(main, argv)


def rows(db: Path, sql: str) -> list[Any]:
    with closing(sqlite3.connect(db)) as connection:
        return [row[0] for row in connection.execute(sql)]


async def test_worker_and_export_commands_honour_every_location_flag(
    pool: ArqRedis,
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with FakeAgency(3, conversations=3, messages=(5, 40), seed=8) as agency:
        tokens = tmp_path / "tokens.json"
        locations = tmp_path / "locations.txt"
        tokens.write_text(json.dumps(agency.info()))
        locations.write_text("\n".join(agency.location_ids) + "\n")
        every = [
            m for f in agency.locations.values() for c in f.conversation_ids for m in f.messages(c)
        ]
        added = sorted(m["dateAdded"] for m in every)
        since, until = added[len(added) // 4], added[3 * len(added) // 4]
        contact = next(m["contactId"] for m in every if m["messageType"] == "TYPE_EMAIL")
        worker = [
            "worker",
            "--redis",
            redis_server.url,
            "--tokens-file",
            str(tokens),
            "--burst",
            "--poll-delay",
            "0.05",
        ]
        runs = [
            (["--channel", "sms", "--since", since, "--until", until], "dates.db"),
            (["--contact", contact, "--email-bodies"], "contact.db"),
        ]
        for flags, name in runs:
            export = [
                "export",
                "--locations-file",
                str(locations),
                "--queue",
                redis_server.url,
                "--to",
                "sqlite:///" + str(tmp_path / name),
                "--base-url",
                agency.url,
                "--progress",
                *flags,
            ]
            codes: list[int] = []

            async def run(argv: list[str], codes: list[int] = codes) -> None:
                codes.append(await _main(argv))

            async with anyio.create_task_group() as group:
                group.start_soon(run, export)
                with anyio.fail_after(20):
                    await wait_for_a_run(pool)
                group.start_soon(run, worker)
            await pool.flushdb()  # the next round waits for its own run
            assert codes == [0, 0]
            err = capsys.readouterr().err
            assert "3 location job(s) enqueued" in err
            assert "3/3 locations" in err
    in_dates = sorted(
        m["id"]
        for m in every
        if channel_admits("SMS", m["messageType"]) and since <= m["dateAdded"] <= until
    )
    assert sorted(rows(tmp_path / "dates.db", "SELECT id FROM messages")) == in_dates
    of_contact = [m for m in every if m["contactId"] == contact]
    assert sorted(rows(tmp_path / "contact.db", "SELECT id FROM messages")) == sorted(
        m["id"] for m in of_contact
    )
    emails = {m["id"] for m in of_contact if m["messageType"] == "TYPE_EMAIL"}
    assert set(rows(tmp_path / "contact.db", "SELECT message_id FROM emails")) == emails


async def test_a_part_locked_by_a_live_export_is_waited_for_without_using_a_try(
    pool: ArqRedis, tmp_path: Path
) -> None:
    async with FakeAgency(1, conversations=1, messages=2, seed=6) as agency:
        (location_id,) = agency.location_ids
        await enqueue_locations(pool, [location_id], str(tmp_path), run_id="r1")
        ctx: dict[str, Any] = {"redis": pool, "job_id": "j1", "job_try": 2}
        await startup(ctx, tokens={location_id: agency.locations[location_id].token}, lease=0.3)
        with locked(part_path(str(tmp_path), location_id)):
            job = asyncio.ensure_future(
                export_location(ctx, location_id, run_id="r1", base_url=agency.url)
            )
            state = await wait_for_state(pool, "r1", "another export is writing")
            assert state.state == "running" and not job.done()
        # The lock let go: the same try goes on, no Retry (arq would count one).
        done = await asyncio.wait_for(job, 10)
        assert done["state"] == "done" and done["tries"] == 2, done
        ids = [line["id"] for line in lines_in(part_path(str(tmp_path), location_id))]
        assert sorted(ids) == expected_ids(agency, location_id)


async def test_a_try_finding_another_alive_on_the_location_waits_and_gives_its_try_back(
    pool: ArqRedis, tmp_path: Path
) -> None:
    async with FakeAgency(1, conversations=2, messages=(5, 20), seed=6) as agency:
        (location_id,) = agency.location_ids
        run_id = await enqueue_locations(pool, [location_id], str(tmp_path), run_id="r2")
        owner = f"ghl_async:run:{run_id}:owner:{location_id}"
        retries = f"arq:retry:{job_id(run_id, location_id)}"
        # Another try, alive (renewing), holds the location; arq counted this start as try 3.
        await pool.set(owner, "elsewhere:1:abcd", px=60_000)
        await pool.set(retries, 3)
        ctx: dict[str, Any] = {
            "redis": pool,
            "job_id": job_id(run_id, location_id),
            "job_try": 3,
        }
        await startup(ctx, tokens={location_id: agency.locations[location_id].token}, lease=0.3)
        job = asyncio.ensure_future(
            export_location(ctx, location_id, run_id=run_id, base_url=agency.url)
        )
        await wait_for_state(pool, run_id, "elsewhere:1 is writing")
        assert await pool.get(retries) == b"2"  # contention is no try
        assert agency.locations[location_id].stats.by_route == {}  # nothing read meanwhile
        await pool.delete(owner)  # the other try is done (or dead: its key expired)
        done = await asyncio.wait_for(job, 10)
        assert done["state"] == "done", done
        assert await pool.get(retries) == b"3"  # the location was this try's: it counts
        assert await pool.get(owner) is None  # let go at the end
        ids = [line["id"] for line in lines_in(part_path(str(tmp_path), location_id))]
        assert sorted(ids) == expected_ids(agency, location_id)


async def test_a_try_that_lost_the_location_commits_nothing_more(
    pool: ArqRedis, tmp_path: Path
) -> None:
    # A worker frozen past its lease comes back to find another try on its location.
    ride = RideOut(5)
    owner = _Owner(pool, "ghl_async:test:owner", 0.2, ride)
    assert await owner.take() == 0
    other = _Owner(pool, "ghl_async:test:owner", 0.2, ride)
    assert 0 < await other.take() <= 0.2  # held: the seconds until it frees
    db = tmp_path / "mirror.db"
    sink = _Fenced(SQLiteSink(db), owner)
    async with sink:
        await sink.commit(
            Batch(messages=[], state=ExportState(location_id="loc1", query=""))
        )  # still ours
        await anyio.sleep(0.25)  # frozen past the lease; the key expired
        assert await other.take() == 0  # and another try took it
        with pytest.raises(_HandedOver):
            await sink.commit(Batch(messages=[], state=ExportState(location_id="loc1", query="")))
    await owner.release()  # not its own any more: left alone
    assert await pool.get("ghl_async:test:owner") == other.token.encode()


async def test_a_location_failing_every_try_shows_the_http_cause(
    pool: ArqRedis, tmp_path: Path
) -> None:
    async with FakeAgency(2, conversations=1, messages=2, seed=4) as agency:
        forbidden, broken = agency.location_ids
        agency.locations[forbidden].inject("403", 100)
        agency.locations[broken].inject("server_error", 1000)
        tokens = {f.location_id: f.token for f in agency.locations.values()}
        run_id = await enqueue_locations(
            pool, agency.location_ids, str(tmp_path), base_url=agency.url
        )
        await run_burst(pool, tokens, max_tries=2)
        run = await read_run(pool, run_id)
        assert run is not None and run.finished and not run.ok
        states = {s.location_id: s for s in run.locations}
        assert states[forbidden].state == "failed" and states[forbidden].tries == 2
        assert (states[forbidden].error or "").startswith("HTTP 403"), states[forbidden]
        assert states[broken].state == "failed"
        assert (states[broken].error or "").startswith("HTTP 5"), states[broken]
        assert "retrying" not in (states[broken].error or "")


async def wait_for_state(pool: ArqRedis, run_id: str, text: str) -> LocationState:
    with anyio.fail_after(10):
        while True:
            run = await read_run(pool, run_id)
            assert run is not None
            (state,) = run.locations
            if text in (state.error or ""):
                return state
            await anyio.sleep(0.02)


@contextmanager
def locked(path: str) -> Iterator[None]:
    # What a first run still alive holds: the part file's exclusive lock.
    with open(path, "wb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lease", "0"], "--lease: must be a number of seconds above 0, got 0"),
        (["--lease", "-1"], "--lease: must be a number of seconds above 0, got -1"),
        (["--lease", "inf"], "--lease: must be a number of seconds above 0, got inf"),
        (["--poll-delay", "nan"], "--poll-delay: must be a number of seconds above 0, got nan"),
        (["--poll-delay", "soon"], "--poll-delay: 'soon' is not a number of seconds"),
        (["--ride-out", "-1"], "--ride-out: must be a number of seconds 0 or more, got -1"),
        (["--metrics-port", "70000"], "--metrics-port: must be between 0 and 65535"),
    ],
)
def test_worker_refuses_bad_numbers_in_one_line_before_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    # The tokens file is not there and Redis is not reachable: neither is looked at.
    argv = ["worker", "--redis", "redis://127.0.0.1:1/0", "--tokens-file", str(tmp_path / "t")]
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_export_queue_refuses_an_out_dir_under_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    locations = tmp_path / "locations.txt"
    locations.write_text("loc1\n")
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "x"
    argv = ["export", "--locations-file", str(locations), "--out", str(out)]
    assert main([*argv, "--queue", "redis://127.0.0.1:1/0"]) == 2
    err = capsys.readouterr().err
    assert err == f"ghl-async: cannot create --out {out}: Not a directory\n"


async def test_worker_metrics_are_scraped_over_http(pool: ArqRedis, tmp_path: Path) -> None:
    from ghl_async.export.metrics import WorkerMetrics

    async with FakeAgency(2, conversations=3, messages=(20, 60), seed=9) as agency:
        tokens = {f.location_id: f.token for f in agency.locations.values()}
        first, second = agency.location_ids
        agency.locations[second].inject("403", 100)  # fails: counted as failed
        metrics = WorkerMetrics()
        port = metrics.serve(0, addr="127.0.0.1")
        try:
            await enqueue_locations(
                pool, agency.location_ids, to=sqlite_url(tmp_path / "m.db"), base_url=agency.url
            )
            await run_burst(pool, tokens, metrics=metrics, max_tries=1)
            page = await anyio.to_thread.run_sync(scrape, port)
        finally:
            metrics.close()
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith("ghl_async_worker_")
    }
    fake = agency.locations[first]
    assert (
        values["ghl_async_worker_requests_total"]
        == sum(f.stats.by_route.get("export", 0) for f in agency.locations.values()) + 1
    )  # and the refused one
    assert values["ghl_async_worker_messages_total"] == fake.total_messages
    assert values["ghl_async_worker_throttled_total"] == 0
    assert values["ghl_async_worker_retries_total"] == 0
    assert values['ghl_async_worker_locations{state="done"}'] == 1
    assert values['ghl_async_worker_locations{state="failed"}'] == 1
    assert values['ghl_async_worker_locations{state="running"}'] == 0
    assert values["ghl_async_worker_limiter_wait_seconds_total"] > 0


def scrape(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        return str(reply.read().decode())


async def test_worker_command_serves_metrics(
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"a1": "t"}')
    argv = ["worker", "--redis", redis_server.url, "--tokens-file", str(tokens), "--burst"]
    assert await _main([*argv, "--metrics-port", "0", "--poll-delay", "0.05"]) == 0
    err = capsys.readouterr().err
    assert "ghl-async: worker metrics on http://127.0.0.1:" in err, err


async def test_a_done_location_is_never_reported_back_to_running(pool: ArqRedis) -> None:
    # A try that waited for, or lost, the location says nothing over the one that finished.
    run_id = await enqueue_locations(pool, ["loc1"], to="sqlite:///m.db", run_id="r9")
    await _write_state(pool, run_id, LocationState(location_id="loc1", state="running"))
    await _write_state(pool, run_id, LocationState(location_id="loc1", state="done", messages=3))
    late = LocationState(location_id="loc1", state="running", error="waiting: x is writing")
    await _write_state(pool, run_id, late)
    await _write_state(pool, run_id, LocationState(location_id="loc1", state="failed"))
    run = await read_run(pool, run_id)
    assert run is not None and run.ok
    assert run.locations[0].messages == 3


async def test_a_dead_workers_probe_slot_frees_within_its_lease(pool: ArqRedis) -> None:
    # No reply has announced the budget yet: one request at a time across the workers.
    # A worker killed with that request in flight never reports back: the next try's
    # request goes within the lease, not after a minute.
    ctx: dict[str, Any] = {}
    await startup(ctx, tokens={}, lease=0.5)
    dead = _limiter(pool, "loc1", None, ctx["ghl_async"])
    await dead.acquire()  # and never released
    started = anyio.current_time()
    live = _limiter(pool, "loc1", None, ctx["ghl_async"])
    ticket = await live.acquire(max_wait=5)
    assert 0.4 <= anyio.current_time() - started <= 0.5 + 0.2  # held, then freed
    await live.release(ticket, None)
