"""``ghl-async sync`` and the numbered files sink, against FakeHighLevel over a socket."""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from ghl_async import Client, RetryPolicy, errors
from ghl_async.export.incremental import sync_location
from ghl_async.export.numbered import RUN_FILE, STATE_FILE, NumberedFiles
from ghl_async.testing import FakeHighLevel
from tests.support.cli import run_cli
from tests.support.helpers import ServerFactory

pytestmark = pytest.mark.anyio


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def numbered(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("messages-*.jsonl"))


async def sync_into(client: Client, fake: FakeHighLevel, directory: Path) -> NumberedFiles:
    sink = NumberedFiles(str(directory))
    async with sink:
        await sync_location(client, fake.location_id, sink)
    return sink


async def test_a_file_per_run_with_something_new_each_immutable(
    server: ServerFactory, tmp_path: Path
) -> None:
    async with server(conversations=15, messages=(0, 60), seed=61) as fake:
        out = tmp_path / "sync"
        async with Client(fake.token, base_url=fake.url) as client:
            first = await sync_into(client, fake, out)
            assert first.last_file == str(out / "messages-000001.jsonl")
            ids = [r["id"] for r in rows(out / "messages-000001.jsonl")]
            assert len(ids) == len(set(ids)) == fake.total_messages
            frozen = (out / "messages-000001.jsonl").read_bytes()

            # Nothing new: no file, a request per pass (the lookback read again).
            before = fake.stats.requests
            for _ in range(2):
                idle = await sync_into(client, fake, out)
                assert idle.last_file is None
            assert fake.stats.requests - before == 4
            assert numbered(out) == ["messages-000001.jsonl"]

            added = fake.add_message(fake.conversation_ids[0])
            email = fake.add_message(fake.conversation_ids[1], messageType="TYPE_EMAIL", type=3)
            edited = fake.messages(fake.conversation_ids[2])[-1]["id"]
            fake.update_message(edited, status="read")
            await sync_into(client, fake, out)
            got = {r["id"]: r for r in rows(out / "messages-000002.jsonl")}
            assert set(got) == {added["id"], email["id"], edited}
            assert got[edited]["status"] == "read"

            # An edit of a message just delivered comes again; nothing else does.
            fake.update_message(added["id"], status="read")
            await sync_into(client, fake, out)
            assert [r["id"] for r in rows(out / "messages-000003.jsonl")] == [added["id"]]
        assert (out / "messages-000001.jsonl").read_bytes() == frozen
        assert not (out / RUN_FILE).exists()


async def test_a_failed_run_goes_on_and_takes_the_next_number(
    server: ServerFactory, tmp_path: Path
) -> None:
    async with server(conversations=6, messages=(5, 30), seed=62) as fake:
        out = tmp_path / "sync"
        once = RetryPolicy(max_attempts=1)
        async with Client(fake.token, base_url=fake.url, retry=once) as client:
            await sync_into(client, fake, out)
            added = fake.add_message(fake.conversation_ids[0])["id"]
            fake.inject("500", count=1, route="export")
            with pytest.raises(errors.ServerError):
                await sync_into(client, fake, out)
            assert numbered(out) == ["messages-000001.jsonl"]
            await sync_into(client, fake, out)
        assert [r["id"] for r in rows(out / "messages-000002.jsonl")] == [added]


async def test_a_crash_between_the_state_and_the_rename_is_finished_on_open(
    server: ServerFactory, tmp_path: Path
) -> None:
    async with server(conversations=4, messages=(5, 30), seed=64) as fake:
        out = tmp_path / "sync"
        async with Client(fake.token, base_url=fake.url) as client:
            await sync_into(client, fake, out)
            # As if killed after sync-state.json names file 1 and before the rename.
            os.replace(out / "messages-000001.jsonl", out / RUN_FILE)
            (out / (RUN_FILE + ".checkpoint")).write_text("stale\n")
            again = await sync_into(client, fake, out)
        assert numbered(out) == ["messages-000001.jsonl"]
        assert len(rows(out / "messages-000001.jsonl")) == fake.total_messages
        assert again.last_file is None  # nothing new: the finished run was not repeated
        assert not (out / RUN_FILE).exists()
        assert not (out / (RUN_FILE + ".checkpoint")).exists()


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (None, "holds numbered files but no sync-state.json"),
        ("{not json", "is not a state this ghl-async wrote"),
        (
            '{"format":"ghl-async-sync/2","run":-2,"file":null,'
            '"state":{"locationId":"L","query":"q"}}',
            "is not a state this ghl-async wrote",
        ),
        (
            '{"format":"ghl-async-sync/2","run":1,"file":"messages-000001.jsonl",'
            '"state":{"locationId":"L","query":"q","highWater":"2025-01-01T00:00:00"}}',
            "is not a state this ghl-async wrote",
        ),
        ('{"format": "ghl-async-sync/1", "location": "L"}', "written by ghl-async 0.1"),
    ],
)
async def test_a_missing_edited_or_old_state_is_refused_in_one_line(
    tmp_path: Path, state: str | None, message: str
) -> None:
    out = tmp_path / "sync"
    out.mkdir()
    (out / "messages-000001.jsonl").write_text('{"id":"a"}\n')
    if state is not None:
        (out / STATE_FILE).write_text(state)
    with pytest.raises(errors.SinkError, match=message) as raised:
        async with NumberedFiles(str(out)):
            pass
    assert "\n" not in str(raised.value)
    assert numbered(out) == ["messages-000001.jsonl"]


async def test_another_locations_directory_is_refused(
    server: ServerFactory, tmp_path: Path
) -> None:
    async with server(conversations=2, messages=5, seed=65) as fake:
        out = tmp_path / "sync"
        async with Client(fake.token, base_url=fake.url) as client:
            await sync_into(client, fake, out)
            sink = NumberedFiles(str(out))
            async with sink:
                with pytest.raises(errors.SinkError, match="holds the sync of location"):
                    await sink.load("AnotherLocation00001")


async def test_two_syncs_never_write_one_directory(tmp_path: Path) -> None:
    async with NumberedFiles(str(tmp_path / "d")):
        with pytest.raises(errors.SinkError, match="another sync is writing"):
            async with NumberedFiles(str(tmp_path / "d")):
                pass


async def test_sync_command_into_sqlite_by_default_and_into_files(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    async with server(conversations=8, messages=(0, 30), seed=63) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        base = ("sync", "--location", fake.location_id, "--base-url", fake.url)
        assert await run_cli(*base) == 0
        assert f"{fake.total_messages} new or changed messages" in capsys.readouterr().err
        with closing(sqlite3.connect(tmp_path / "messages.db")) as db:
            assert db.execute("SELECT count(*) FROM messages").fetchone() == (fake.total_messages,)
        assert await run_cli(*base, "--lookback", "10m") == 0
        assert "nothing new" in capsys.readouterr().err

        assert await run_cli(*base, "--out", "files") == 0
        assert "messages-000001.jsonl" in capsys.readouterr().err
        # One line and exit 2 for what cannot be: both sinks, a bad duration.
        assert await run_cli(*base, "--out", "x", "--to", "sqlite:///y.db") == 2
        assert await run_cli(*base, "--lookback", "soon") == 2
        assert "is not a duration" in capsys.readouterr().err
    async with server(conversations=2, export_refusal=403) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        argv = ("sync", "--location", fake.location_id, "--out", str(tmp_path / "x"))
        assert await run_cli(*argv, "--base-url", fake.url) == 2
        assert "sync needs the location export" in capsys.readouterr().err


def test_lookback_durations() -> None:
    from ghl_async.cli.sync import duration_arg

    assert duration_arg("300") == timedelta(seconds=300)
    assert duration_arg("5m") == timedelta(minutes=5)
    assert duration_arg("1.5h") == timedelta(minutes=90)
    assert duration_arg("250ms") == timedelta(milliseconds=250)


async def test_sync_command_says_which_email_bodies_failed_and_exits_1(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with server(conversations=4, messages=(5, 30), seed=66) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        broken = fake.email_ids[0]
        fake.inject("503", 20, email_id=broken)  # down through the run and its retries
        argv = ("sync", "--location", fake.location_id, "--to", f"sqlite:///{tmp_path / 'm.db'}")
        assert await run_cli(*argv, "--email-bodies", "--base-url", fake.url) == 1
        (line,) = [x for x in capsys.readouterr().err.splitlines() if x]
        assert f"1 email bodies could not be fetched (first {broken}: " in line
        assert "1 will be fetched again by the next run" in line
        with closing(sqlite3.connect(tmp_path / "m.db")) as db:
            assert db.execute("SELECT count(*) FROM messages").fetchone() == (fake.total_messages,)
            assert db.execute("SELECT email_id FROM email_failures").fetchall() == [(broken,)]


@pytest.mark.parametrize(
    ("state", "says"),
    [
        (None, "holds numbered files but no sync-state.json"),
        ('{"format":"ghl-async-sync/2","run":1,"file":null,"state":{"locationId":"L"', "is not a"),
    ],
)
async def test_sync_command_refuses_a_missing_or_edited_state_in_one_line_exit_2(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    state: str | None,
    says: str,
) -> None:
    out = tmp_path / "warehouse"
    out.mkdir()
    (out / "messages-000001.jsonl").write_text('{"id":"a"}\n')
    if state is not None:
        (out / "sync-state.json").write_text(state)
    async with server(conversations=2, messages=5, seed=67) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        argv = ("sync", "--location", fake.location_id, "--out", str(out), "--base-url", fake.url)
        assert await run_cli(*argv) == 2
        requests = fake.stats.by_route["export"]
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x]
    assert f"cannot sync into {out}" in line and says in line
    assert requests <= 1  # only the access check before any file: nothing was read
    # Nothing written or changed (the directory's lock file aside).
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == sorted(
        ["messages-000001.jsonl", *(["sync-state.json"] if state is not None else [])]
    )
