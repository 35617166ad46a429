"""What a long-running mirror meets, into every sink: the same hostile server, each case.

Each case runs against FakeHighLevel over a real socket with one of its hostile knobs,
into SQLite, PostgreSQL (a real server from the fixtures) and JSON Lines (a file for an
export, numbered files for a sync), and checks what a user checks: every message, once,
at its latest version.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ghl_async import Client, RetryPolicy
from ghl_async.export import JsonlSink, NumberedFiles, Sink, sink_for, sync_location
from ghl_async.export.pipeline import ExportResult, export_location
from ghl_async.testing import FakeHighLevel

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(max_attempts=3, backoff_base=0.001, backoff_cap=0.01)
KINDS = ["sqlite", "postgres", "files"]


class Mirror:
    """One sink of one kind in ``tmp_path``, and what it holds (id -> status)."""

    def __init__(self, kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
        self.kind = kind
        self.tmp_path = tmp_path
        self.dsn = request.getfixturevalue("postgres_dsn") if kind == "postgres" else ""

    def sink(self, *, sync: bool) -> Sink:
        if self.kind == "sqlite":
            return sink_for(f"sqlite:///{self.tmp_path / 'mirror.db'}")
        if self.kind == "postgres":
            return sink_for(self.dsn)
        if sync:
            return NumberedFiles(str(self.tmp_path / "warehouse"))
        return JsonlSink(str(self.tmp_path / "messages.jsonl"))

    async def held(self) -> tuple[dict[str, str], int]:
        """(id -> status at its latest version, rows or lines written)."""
        if self.kind == "sqlite":
            with closing(sqlite3.connect(self.tmp_path / "mirror.db")) as db:
                rows = dict(db.execute("SELECT id, status FROM messages").fetchall())
            return rows, len(rows)
        if self.kind == "postgres":
            connection = await asyncpg.connect(self.dsn)
            try:
                found = await connection.fetch("SELECT id, status FROM messages")
            finally:
                await connection.close()
            rows = {r["id"]: r["status"] for r in found}
            return rows, len(rows)
        return self._files()

    def _files(self) -> tuple[dict[str, str], int]:
        paths = sorted((self.tmp_path / "warehouse").glob("messages-*.jsonl")) or [
            self.tmp_path / "messages.jsonl"
        ]
        held: dict[str, str] = {}
        lines = 0
        for path in paths:  # in number order: a later line is a later version
            for line in path.read_text().splitlines():
                row: dict[str, Any] = json.loads(line)
                held[row["id"]] = row.get("status") or ""
                lines += 1
        return held, lines


@pytest.fixture(params=KINDS)
def mirror(request: pytest.FixtureRequest, tmp_path: Path) -> Mirror:
    return Mirror(str(request.param), tmp_path, request)


def latest(fake: FakeHighLevel) -> dict[str, str]:
    return {
        m["id"]: m.get("status") or "" for c in fake.conversation_ids for m in fake.messages(c)
    }


@asynccontextmanager
async def served(**options: Any) -> AsyncIterator[tuple[FakeHighLevel, Client]]:
    async with FakeHighLevel(**options) as fake:
        async with Client(fake.token, base_url=fake.url, retry=FAST) as client:
            yield fake, client


async def export_into(
    mirror: Mirror,
    client: Client,
    fake: FakeHighLevel,
    on_batch: Callable[[ExportResult], None] | None = None,
) -> ExportResult:
    async with mirror.sink(sync=False) as sink:
        return await export_location(client, fake.location_id, sink, on_batch=on_batch)


async def sync_into(mirror: Mirror, client: Client, fake: FakeHighLevel) -> ExportResult:
    async with mirror.sink(sync=True) as sink:
        return await sync_location(client, fake.location_id, sink)


async def assert_exactly_once(mirror: Mirror, fake: FakeHighLevel) -> None:
    held, written = await mirror.held()
    assert held == latest(fake)
    assert written == len(held)  # not a line or row twice


# -- an export that always finishes -------------------------------------------------------


async def test_an_expired_cursor_restarts_at_the_position(mirror: Mirror) -> None:
    async with served(conversations=20, messages=(50, 300), seed=111) as (fake, client):
        refused: list[int] = []

        def pause_too_long(result: ExportResult) -> None:
            if result.pages == 2 and not refused:
                refused.append(1)
                fake.inject("422", route="export")  # "Invalid cursor"

        result = await export_into(mirror, client, fake, pause_too_long)
        assert refused and result.state is not None and result.state.done
        await assert_exactly_once(mirror, fake)


async def test_pages_that_overlap(mirror: Mirror) -> None:
    async with served(conversations=20, messages=(50, 300), seed=112) as (fake, client):
        fake.export_overlap = 2
        await export_into(mirror, client, fake)
        await assert_exactly_once(mirror, fake)


async def test_the_route_gone_part_way(mirror: Mirror) -> None:
    async with served(conversations=20, messages=(50, 300), seed=113) as (fake, client):

        def plan_change(result: ExportResult) -> None:
            if result.pages == 2:
                fake.inject("404", 100, route="export")

        result = await export_into(mirror, client, fake, plan_change)
        assert result.fallback
        await assert_exactly_once(mirror, fake)


# -- a sync that never misses a change ----------------------------------------------------


async def test_a_sync_under_skew_future_dates_and_same_second_edits(mirror: Mirror) -> None:
    async with served(conversations=8, messages=(5, 60), seed=114) as (fake, client):
        conversation = fake.conversation_ids[0]
        now = datetime.now(timezone.utc).replace(microsecond=0)
        fake.add_message(conversation, when=now + timedelta(days=3650))  # years ahead
        first = await sync_into(mirror, client, fake)
        assert first.state is not None
        mark = first.state.marks["rest"]
        assert mark <= datetime.now(timezone.utc)
        # Made visible now, dated before the mark (skew, a late commit): within lookback.
        fake.add_message(fake.conversation_ids[1], when=mark - timedelta(seconds=30))
        # Edited twice in the same millisecond, a run between the two edits.
        target = fake.messages(conversation)[1]["id"]
        fake.update_message(target, when=now + timedelta(seconds=1), status="sent")
        await sync_into(mirror, client, fake)
        fake.update_message(target, when=now + timedelta(seconds=1), status="read")
        await sync_into(mirror, client, fake)
        held, _ = await mirror.held()
        assert held == latest(fake)
        assert held[target] == "read"


async def test_a_sync_whose_cursor_expired_between_two_pages(mirror: Mirror) -> None:
    async with served(conversations=20, messages=(50, 300), seed=115) as (fake, client):
        async with mirror.sink(sync=True) as sink:

            def pause_too_long(result: ExportResult) -> None:
                if result.pages == 2:
                    fake.inject("422", route="export")

            await sync_location(client, fake.location_id, sink, on_batch=pause_too_long)
        await assert_exactly_once(mirror, fake)


async def test_one_bad_email_body_never_stops_the_export(mirror: Mirror) -> None:
    async with served(conversations=10, messages=(5, 40), seed=116) as (fake, client):
        flaky, broken = fake.email_ids[:2]
        fake.inject("500", email_id=flaky)  # fails on its page, comes at the run's end
        fake.inject("404", 10, email_id=broken)  # never comes this run
        async with mirror.sink(sync=False) as sink:
            result = await export_location(client, fake.location_id, sink, email_bodies=True)
        assert result.state is not None and result.state.done
        assert set(result.failed_emails) == {broken}
        held, written = await mirror.held()
        assert held == latest(fake)
        # A database upserts the message fetched again with its bodies; a file gets it
        # again as a later line (load with an upsert by id: the later line wins).
        owners = {
            m["id"]
            for c in fake.conversation_ids
            for m in fake.messages(c)
            if {flaky, broken} & set((m.get("meta") or {}).get("email", {}).get("messageIds", []))
        }
        assert written == len(held) + (len(owners) if mirror.kind == "files" else 0)
