"""ghl_async.export.jobs and its commands, in process: a real redis-server, a FakeAgency, and
an arq worker run in burst mode in the test's own loop."""

from __future__ import annotations

import fcntl
import json
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.worker import Retry, Worker

from ghl_async import RateLimit
from ghl_async.cli.main import main
from ghl_async.cli.queue import read_tokens
from ghl_async.export.jobs import (
    EXPORT_LOCATION,
    _kept_messages,
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
from ghl_async.testing import FakeAgency
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


def ids_in(path: str) -> list[str]:
    return [json.loads(line)["id"] for line in Path(path).read_bytes().splitlines()]


def died_part_way(path: str) -> None:
    """What a worker killed part way leaves: half the file and a torn line, one record."""
    full = Path(path).read_bytes()
    Path(path).write_bytes(full[: len(full) // 2] + b'{"torn')
    checkpoint = Path(path + ".checkpoint").read_bytes().splitlines(keepends=True)
    Path(path + ".checkpoint").write_bytes(b"".join(checkpoint[:2]))


def write(path: str, text: str) -> None:
    Path(path).write_text(text)


def expected_ids(agency: FakeAgency, location_id: str) -> list[str]:
    fake = agency.locations[location_id]
    return sorted(m["id"] for c in fake.conversation_ids for m in fake.messages(c))


async def test_enqueue_run_and_read_back(pool: ArqRedis, tmp_path: Path) -> None:
    async with FakeAgency(3, conversations=4, messages=(1, 30), seed=5) as agency:
        tokens = {f.location_id: f.token for f in agency.locations.values()}
        run_id = await enqueue_locations(
            pool,
            [*agency.location_ids, agency.location_ids[0]],  # a duplicate runs once
            str(tmp_path),
            base_url=agency.url,
            rate_limit=RateLimit(50, 1.0),
        )
        queued = await read_run(pool, run_id)
        assert queued is not None
        assert [s.state for s in queued.locations] == ["queued"] * 3
        assert not queued.finished
        assert await latest_run(pool) == run_id
        worker = await run_burst(pool, tokens)
        assert worker.jobs_complete == 3
        run = await read_run(pool)
        assert run is not None and run.finished and run.ok
        for state in run.locations:
            path = part_path(str(tmp_path), state.location_id)
            assert sorted(ids_in(path)) == expected_ids(agency, state.location_id)
            assert state.messages == len(ids_in(path))
            assert state.conversations == 4
            assert state.tries == 1
        assert run.messages == agency.total_messages
        assert agency.throttled == 0


async def test_a_retry_resumes_from_the_checkpoint(pool: ArqRedis, tmp_path: Path) -> None:
    async with FakeAgency(1, conversations=6, messages=(20, 60), seed=2) as agency:
        (location_id,) = agency.location_ids
        tokens = {location_id: agency.locations[location_id].token}
        run_id = await enqueue_locations(pool, [location_id], str(tmp_path), base_url=agency.url)
        await run_burst(pool, tokens)
        path = part_path(str(tmp_path), location_id)
        assert _kept_messages(path) == len(ids_in(path))
        died_part_way(path)
        second = await enqueue_locations(
            pool, [location_id], str(tmp_path), base_url=agency.url, run_id=run_id + "-b"
        )
        await pool.set(f"arq:retry:{job_id(second, location_id)}", 1)  # the next try is 2
        await run_burst(pool, tokens)
        run = await read_run(pool, second)
        assert run is not None and run.ok
        (state,) = run.locations
        assert state.tries == 2
        assert sorted(ids_in(path)) == expected_ids(agency, location_id)
        assert state.messages == len(ids_in(path))


async def test_refusals_and_missing_tokens_fail_the_location(
    pool: ArqRedis, tmp_path: Path
) -> None:
    async with FakeAgency(2, conversations=2, messages=3, seed=1) as agency:
        first, second = agency.location_ids
        write(part_path(str(tmp_path), first), "already here\n")
        run_id = await enqueue_locations(pool, [first, second], str(tmp_path), base_url=agency.url)
        await run_burst(pool, {first: agency.locations[first].token})
        run = await read_run(pool, run_id)
        assert run is not None and run.finished and not run.ok
        states = {s.location_id: s for s in run.locations}
        assert states[first].state == "failed"
        assert "--resume" in (states[first].error or "")
        assert states[second].state == "failed"
        assert "no token" in (states[second].error or "")
        # --force replaces the stray file; an async provider supplies the token.
        tokens = {f.location_id: f.token for f in agency.locations.values()}

        async def provider(location_id: str) -> str:
            return tokens[location_id]

        run_id = await enqueue_locations(
            pool, [first], str(tmp_path), base_url=agency.url, mode="force"
        )
        await run_burst(pool, provider)
        run = await read_run(pool, run_id)
        assert run is not None and run.ok
        assert sorted(ids_in(part_path(str(tmp_path), first))) == expected_ids(agency, first)


async def test_a_job_arq_gave_up_on_reads_as_failed(pool: ArqRedis, tmp_path: Path) -> None:
    async with FakeAgency(1, conversations=1, messages=2, seed=4) as agency:
        (location_id,) = agency.location_ids
        run_id = await enqueue_locations(pool, [location_id], str(tmp_path), base_url=agency.url)
        # Every try used up by workers that died: arq fails the job without running it.
        await pool.set(f"arq:retry:{job_id(run_id, location_id)}", 10)
        await run_burst(pool, {location_id: agency.locations[location_id].token})
        quiet = await read_run(pool, run_id)  # reported just now: arq not asked yet
        assert quiet is not None and quiet.locations[0].state == "queued"
        run = await read_run(pool, run_id, ask_arq_after=0)
        assert run is not None
        (state,) = run.locations
        assert state.state == "failed"
        assert "retries exceeded" in (state.error or "")


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
    # Flags the jobs cannot honour are refused, not silently ignored.
    for flags in (["--since", "2025-01-01"], ["--channel", "sms"], ["--email-bodies"]):
        assert main([*export, "--queue", redis, "--resume", *flags]) == 2
        err = capsys.readouterr().err
        assert f"{flags[0]} cannot go with --queue yet" in err and err.count("\n") == 1


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
        run_id = await enqueue_locations(pool, [first, second], str(tmp_path), base_url=agency.url)
        await run_burst(pool, {first: agency.locations[first].token})
    assert await _main(["status", "--queue", redis_server.url, "--run", run_id]) == 1
    out = capsys.readouterr().out
    assert f"run {run_id}" in out
    assert "done" in out and "failed" in out and "no token" in out
    assert "2/2 locations" in out


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


async def test_worker_and_export_commands(
    pool: ArqRedis,
    redis_server: RedisServer,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with FakeAgency(3, conversations=3, messages=(1, 20), seed=8) as agency:
        tokens = tmp_path / "tokens.json"
        locations = tmp_path / "locations.txt"
        write(str(tokens), json.dumps(agency.info()))
        write(str(locations), "\n".join(agency.location_ids) + "\n")
        out = tmp_path / "out"
        export = [
            "export",
            "--locations-file",
            str(locations),
            "--queue",
            redis_server.url,
            "--out",
            str(out),
            "--base-url",
            agency.url,
            "--progress",
        ]
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
        codes: list[int] = []

        async def run(argv: list[str]) -> None:
            codes.append(await _main(argv))

        async with anyio.create_task_group() as group:
            group.start_soon(run, export)
            with anyio.fail_after(20):
                await wait_for_a_run(pool)
            group.start_soon(run, worker)
        assert codes == [0, 0]
        err = capsys.readouterr().err
        assert "3 location job(s) enqueued" in err
        assert "3/3 locations" in err
        for location_id in agency.location_ids:
            assert sorted(ids_in(part_path(str(out), location_id))) == expected_ids(
                agency, location_id
            )


async def test_a_run_locked_out_by_a_live_one_retries_after_a_lease(
    pool: ArqRedis, tmp_path: Path
) -> None:
    async with FakeAgency(1, conversations=1, messages=2, seed=6) as agency:
        (location_id,) = agency.location_ids
        ctx: dict[str, Any] = {"redis": pool, "job_id": "j1", "job_try": 2}
        await startup(ctx, tokens={location_id: agency.locations[location_id].token}, lease=3)
        with locked(part_path(str(tmp_path), location_id)):
            with pytest.raises(Retry) as caught:
                await export_location(
                    ctx, location_id, str(tmp_path), run_id="r1", base_url=agency.url
                )
        assert caught.value.defer_score == 3000
        # redis-py types an async reply as ``Awaitable[str | None] | str | None``; the
        # pool awaits and, without decode_responses, answers bytes.
        run_state = await cast(
            "Awaitable[bytes | None]", pool.hget("ghl_async:run:r1:locations", location_id)
        )
        assert run_state is not None
        assert b"another export is writing" in run_state


@contextmanager
def locked(path: str) -> Iterator[None]:
    # What a first run still alive holds: the part file's exclusive lock.
    with open(path, "wb") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield
