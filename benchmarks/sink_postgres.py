"""PostgresSink's commit rate: messages upserted per second, in batches of 500.

``python -m benchmarks.sink_postgres`` starts a throwaway PostgreSQL (the tests'
``PostgresServer``: fsync and synchronous_commit on) and times ``PostgresSink.commit``
end to end, from ``Message`` objects to a committed transaction, two ways of merging the
messages:

- ``copy``: binary ``COPY`` into a temporary table, then one ``INSERT ... SELECT ... ON
  CONFLICT (id) DO UPDATE`` (what the sink does);
- ``executemany``: asyncpg's ``executemany`` of the one-row ``INSERT ... ON CONFLICT``.

Each is timed on new ids (inserts) and on the same ids again with a newer
``date_updated`` (updates), in a fresh database. The floor is 30,000 messages/s.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg

from ghl_async.export.postgres import _UPSERT_SQL, PostgresSink
from ghl_async.export.sink import Batch, ExportState
from ghl_async.models import EmailMeta, Message, MessageMeta
from tests.support.postgres_server import PostgresServer

from ._report import Section

BATCH = 500
FLOOR = 30_000
START = datetime(2025, 1, 1, tzinfo=timezone.utc)


class ExecutemanySink(PostgresSink):
    """The sink with its messages merged by executemany of the one-row upsert."""

    async def _upsert_messages(
        self, connection: asyncpg.Connection, records: list[tuple[Any, ...]]
    ) -> None:
        await connection.executemany(_UPSERT_SQL, records, timeout=self._timeout)


def message(i: int, version: int, rng: random.Random) -> Message:
    """A realistic message: an SMS, a call or an email, with a body of 20-300 chars."""
    kind = i % 3
    meta = None
    if kind == 1:
        meta = MessageMeta(call_duration=rng.randrange(600), call_status="completed")
    elif kind == 2:
        meta = MessageMeta(email=EmailMeta(message_ids=[f"em{i}"]))
    added = START + timedelta(seconds=i)
    return Message(
        id=f"msg{i:09d}",
        type=(2, 1, 3)[kind],
        message_type=("TYPE_SMS", "TYPE_CALL", "TYPE_EMAIL")[kind],
        conversation_id=f"conv{i // 20:07d}",
        location_id="loc1",
        contact_id=f"contact{i // 20:07d}",
        date_added=added,
        date_updated=added + timedelta(minutes=version),
        direction="inbound" if i % 2 else "outbound",
        status="delivered",
        content_type="text/plain",
        body="x" * rng.randrange(20, 300),
        attachments=(f"https://example.com/a/{i}.png",) if i % 10 == 0 else (),
        meta=meta,
        source="app",
    )


def batches(count: int, version: int) -> list[Batch]:
    rng = random.Random(version)
    out = []
    for b in range(count):
        messages = [message(b * BATCH + j, version, rng) for j in range(BATCH)]
        state = ExportState(location_id="loc1", query="q", cursor=f"{version}:{b}", messages=b)
        out.append(Batch(messages=messages, state=state))
    return out


async def rate(sink_class: type[PostgresSink], dsn: str, count: int) -> dict[str, float]:
    """Messages/s inserting new ids, then updating them: messages over time in commit."""
    result = {}
    async with sink_class(dsn) as sink:
        for label, version in (("insert", 0), ("update", 1)):
            work = batches(count, version)  # built before the clock starts
            seconds = 0.0
            for batch in work:
                started = time.perf_counter()
                await sink.commit(batch)
                seconds += time.perf_counter() - started
            result[label] = BATCH * count / seconds
    return result


def measure(batches: int, rounds: int) -> dict[str, list[dict[str, float]]]:
    """Every round of both methods, interleaved, each in a fresh database."""
    results: dict[str, list[dict[str, float]]] = {"copy": [], "executemany": []}
    with PostgresServer() as server:
        for _ in range(rounds):  # interleaved: a slow moment of the machine hits both
            for name, sink_class in (("copy", PostgresSink), ("executemany", ExecutemanySink)):
                dsn = server.create_database()
                results[name].append(asyncio.run(rate(sink_class, dsn, batches)))
                server.drop_database(dsn)
    return results


def run(smoke: bool) -> Section:
    """The table for ``python -m benchmarks``; ``smoke``: 4 batches once."""
    batches, rounds = (4, 1) if smoke else (40, 3)
    results = measure(batches, rounds)
    section = Section(
        "PostgreSQL sink: messages committed per second",
        f"PostgresSink.commit end to end (Message objects to a committed transaction, "
        f"fsync on), batches of {BATCH}, {batches} batches, best of {rounds} interleaved "
        f"rounds; the floor is {FLOOR:,} messages/s.",
        ["merge", "insert msg/s", "update msg/s"],
    )
    for name, runs in results.items():
        section.rows.append(
            [
                name + (" (the sink's)" if name == "copy" else ""),
                f"{max(r['insert'] for r in runs):,.0f}",
                f"{max(r['update'] for r in runs):,.0f}",
            ]
        )
    return section


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sink_postgres")
    parser.add_argument("--batches", type=int, default=40, help="batches of 500 per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each method")
    args = parser.parse_args()
    results = measure(args.batches, args.rounds)
    print(f"PostgresSink.commit, batches of {BATCH}, {args.batches} batches x {args.rounds}")
    print("| method | insert msg/s | update msg/s |")
    print("| --- | ---: | ---: |")
    worst = float("inf")
    for name, runs in results.items():
        insert = max(run["insert"] for run in runs)  # best round: the least disturbed
        update = max(run["update"] for run in runs)
        print(f"| {name} | {insert:,.0f} | {update:,.0f} |")
        if name == "copy":
            worst = min(insert, update)
    print(f"floor {FLOOR:,} msg/s: {'met' if worst >= FLOOR else 'MISSED'} by the sink (copy)")
    return 0 if worst >= FLOOR else 1


if __name__ == "__main__":
    raise SystemExit(main())
