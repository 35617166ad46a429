"""``ghl-async sync`` killed at twenty instants, into each sink, while the location changes."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ghl_async import RateLimit
from ghl_async.testing import FakeHighLevel, Faults
from tests.support.cli import cli_process

pytestmark = pytest.mark.anyio

ROOMY = RateLimit(10_000, 1.0)


def latest(fake: FakeHighLevel) -> dict[str, str]:
    """Each message id and its status: the version a mirror must hold."""
    return {m["id"]: m.get("status", "") for c in fake.conversation_ids for m in fake.messages(c)}


def read_files(target: Path) -> tuple[dict[str, str], int | None, int, bool]:
    """:func:`read_mirror` of numbered files: loaded in number order, upserted by id."""
    held: dict[str, str] = {}
    lines = 0
    versions: set[str] = set()  # a version (the whole line) is written once
    for path in sorted(target.glob("messages-*.jsonl")):  # in number order
        for line in path.read_text().splitlines():
            assert line not in versions, f"a version twice, again in {path.name}"
            versions.add(line)
            row: dict[str, Any] = json.loads(line)
            held[row["id"]] = row.get("status", "")
            lines += 1
    state = json.loads((target / "sync-state.json").read_text())["state"]
    return held, lines, int(state["messages"]), bool(state.get("done"))


async def read_mirror(kind: str, target: str) -> tuple[dict[str, str], int | None, int, bool]:
    """(id -> status, lines in the files, the state's count of versions, done)."""
    if kind == "files":
        return read_files(Path(target))
    if kind == "sqlite":
        with closing(sqlite3.connect(target.removeprefix("sqlite:///"))) as db:
            rows = dict(db.execute("SELECT id, status FROM messages").fetchall())
            done, messages = db.execute("SELECT done, messages FROM export_state").fetchone()
        return rows, None, int(messages), bool(done)
    connection = await asyncpg.connect(target)
    try:
        rows = {
            r["id"]: r["status"] for r in await connection.fetch("SELECT id, status FROM messages")
        }
        record = await connection.fetchrow("SELECT done, messages FROM export_state")
        assert record is not None
        return rows, None, int(record["messages"]), bool(record["done"])
    finally:
        await connection.close()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "postgres", "files"])
async def test_sync_killed_at_twenty_instants_holds_every_message_at_its_latest_version(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "sqlite":
        target, where = f"sqlite:///{tmp_path / 'mirror.db'}", ("--to",)
    elif kind == "postgres":
        target, where = request.getfixturevalue("postgres_dsn"), ("--to",)
    else:
        target, where = str(tmp_path / "warehouse"), ("--out",)
    rng = random.Random(2027)
    faults = Faults(latency=0.1)  # a page takes a while: kills land mid-run
    async with FakeHighLevel(
        conversations=60, messages=(50, 300), seed=43, faults=faults, rate_limit=ROOMY
    ) as fake:
        argv = ("sync", "--location", fake.location_id, *where, target, "--base-url", fake.url)
        env = {"GHL_TOKEN": fake.token}
        killed = finished = 0
        while killed < 20:
            # The location changes between runs: new messages, edits of old ones.
            for _ in range(rng.randint(0, 3)):
                conversation = rng.choice(fake.conversation_ids)
                if rng.random() < 0.5:
                    fake.add_message(conversation)
                else:
                    edited = rng.choice(fake.messages(conversation))["id"]
                    fake.update_message(edited, status=f"read-{killed}")
            process = await cli_process(*argv, env=env)
            await asyncio.sleep(rng.uniform(0.05, 0.9))  # some while still starting up
            if process.returncode is not None:
                finished += 1
                continue
            process.kill()
            await process.communicate()
            killed += 1
        last = await cli_process(*argv, env=env)
        _, err = await last.communicate()
        assert last.returncode == 0, err.decode()
        want = latest(fake)
    held, lines, versions, done = await read_mirror(kind, target)
    assert done and finished + killed >= 20
    assert held == want  # every message, each at its latest version
    # The state is never ahead of the data, nor behind it: every version it counts is
    # in the mirror once (for files: exactly the lines the numbered files hold).
    assert versions >= len(want)
    if lines is not None:
        assert lines == versions
