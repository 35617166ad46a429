"""``ghl-async export --location ID --to URL``: a location mirrored into a database."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from contextlib import closing
from pathlib import Path

import asyncpg
import pytest

from ghl_async import RateLimit
from ghl_async.testing import FakeHighLevel, Faults
from tests.support.cli import cli_process, run_cli
from tests.support.helpers import ServerFactory

pytestmark = pytest.mark.anyio

ROOMY = RateLimit(10_000, 1.0)


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


async def test_a_location_into_sqlite_then_again_does_nothing(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database = tmp_path / "mirror.db"
    async with server(conversations=8, messages=(0, 120), seed=40) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        argv = (
            "export", "--location", fake.location_id, "--to", f"sqlite:///{database}",
            "--base-url", fake.url,
        )  # fmt: skip
        assert await run_cli(*argv) == 0
        first = one_line(capsys.readouterr().err)
        assert await run_cli(*argv) == 0
        second = one_line(capsys.readouterr().err)
        want = {m["id"] for c in fake.conversation_ids for m in fake.messages(c)}
    assert f"export: {len(want)} messages into" in first
    assert "already holds the whole location" in second
    with closing(sqlite3.connect(database)) as db:
        assert {row[0] for row in db.execute("SELECT id FROM messages")} == want


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["abc", "--to", "sqlite:///m.db"], "use it with --location"),
        (["--location", "L1", "--to", "sqlite:///m.db", "--out", "x.jsonl"], "leave out --out"),
        (["--location", "L1", "--to", "sqlite:///m.db", "--resume"], "leave out --out"),
        (["--location", "L1", "--to", "mysql://u:hunter2@h/db"], "is not a sink URL"),
        (["--location", "L1", "--to", "sqlite:///"], "names no database file"),
    ],
)
async def test_a_to_that_cannot_work_is_one_line_and_exit_2(
    extra: list[str],
    says: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("GHL_TOKEN", "t")
    monkeypatch.chdir(tmp_path)
    assert await run_cli("export", *extra) == 2
    err = one_line(capsys.readouterr().err)
    assert says in err and "hunter2" not in err
    assert not (tmp_path / "m.db").exists()


async def test_an_unwritable_database_is_one_line_and_exit_3(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    not_a_database = tmp_path / "m.db"
    not_a_database.write_bytes(b"this is not a SQLite file" * 100)
    async with server(conversations=2, messages=10, seed=41) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        code = await run_cli(
            "export", "--location", fake.location_id, "--to", f"sqlite:///{not_a_database}",
            "--base-url", fake.url,
        )  # fmt: skip
    assert code == 3
    assert "cannot write" in one_line(capsys.readouterr().err)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_killed_at_twenty_instants_the_mirror_still_holds_every_message_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = (
        f"sqlite:///{tmp_path / 'mirror.db'}"
        if kind == "sqlite"
        else request.getfixturevalue("postgres_dsn")
    )
    rng = random.Random(2026)
    faults = Faults(latency=0.1)  # a page takes a while: kills land mid-run
    async with FakeHighLevel(
        conversations=80, messages=(100, 400), seed=42, faults=faults, rate_limit=ROOMY
    ) as fake:
        argv = ("export", "--location", fake.location_id, "--to", url, "--base-url", fake.url)
        env = {"GHL_TOKEN": fake.token}
        killed = 0
        for _ in range(40):  # until 20 runs were killed, or one ran to the end
            process = await cli_process(*argv, env=env)
            await asyncio.sleep(rng.uniform(0.1, 0.8))  # some while still starting up
            if process.returncode is not None:
                break
            process.kill()
            await process.communicate()
            killed += 1
            if killed == 20:
                break
        last = await cli_process(*argv, env=env)
        _, err = await last.communicate()
        assert last.returncode == 0, err.decode()
        want = {m["id"] for c in fake.conversation_ids for m in fake.messages(c)}
    assert killed == 20
    rows, state = await _read_mirror(kind, url, tmp_path)
    assert sorted(rows) == sorted(want)
    # Not a page written twice nor skipped: the committed count is the location's.
    done, messages = state
    assert done and messages == len(want)


async def _read_mirror(kind: str, url: str, tmp_path: Path) -> tuple[list[str], tuple[bool, int]]:
    if kind == "sqlite":
        with closing(sqlite3.connect(tmp_path / "mirror.db")) as db:
            rows = [row[0] for row in db.execute("SELECT id FROM messages")]
            done, messages = db.execute("SELECT done, messages FROM export_state").fetchone()
        return rows, (bool(done), int(messages))
    connection = await asyncpg.connect(url)
    try:
        rows = [row[0] for row in await connection.fetch("SELECT id FROM messages")]
        record = await connection.fetchrow("SELECT done, messages FROM export_state")
        assert record is not None
        return rows, (bool(record["done"]), int(record["messages"]))
    finally:
        await connection.close()
