"""SQLiteSink throughput: messages a second upserted in batches of 500 (one export page).

``python -m benchmarks.sink_sqlite`` (``--smoke``: a small run). Messages are the fake
server's seeded ones (live quirks, ``meta``, attachments, emails' message ids), decoded
by the real decoder, each with a ``dateUpdated``. Each commit carries the state after
its batch, as the export pipeline sends it. Measured: a first insert into a new file,
its second half alone (the rate as the file grows), a re-upsert of the same versions
(every row rewritten), a re-upsert of older versions (every row skipped by the date
rule); all of it again under ``synchronous=NORMAL`` for the cost of FULL's fsync per
commit. The floor to hold: 50,000 messages a second.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Literal

import msgspec

from ghl_async.export.sink import Batch, ExportState
from ghl_async.export.sqlite import SQLiteSink
from ghl_async.models import Message, decode_page
from ghl_async.testing import make_conversations

from ._report import Section

PAGE = 500
FLOOR = 50_000
LOCATION = "ve9EPM428h8vShlRW1KT"


def messages(count: int, seed: int = 11) -> list[Message]:
    """``count`` realistic messages, every one with a ``dateUpdated``."""
    wire: list[dict[str, object]] = []
    for conversation in make_conversations(count // 100 + 1, seed=seed, messages=100).values():
        for message in conversation:
            message.setdefault("dateUpdated", message["dateAdded"])
            wire.append(message)
    body = msgspec.json.encode({"messages": {"messages": wire[:count]}})
    return decode_page(body).messages


def batches(items: list[Message], *, older: bool = False) -> list[Batch]:
    """Pages of 500 with the state after each (``older``: every date a day earlier)."""
    if older:
        items = [
            msgspec.structs.replace(
                m, date_updated=None if m.date_updated is None else m.date_updated - timedelta(1)
            )
            for m in items
        ]
    out = []
    for start in range(0, len(items), PAGE):
        page = items[start : start + PAGE]
        state = ExportState(
            location_id=LOCATION,
            query="since=;until=;channel=;contact=;bodies=0",
            cursor=f"updatedAt:{start + len(page)}",
            high_water=max(m.date_updated for m in page if m.date_updated is not None),
            messages=start + len(page),
        )
        out.append(Batch(messages=page, state=state))
    return out


async def _commit_all(sink: SQLiteSink, work: list[Batch]) -> list[float]:
    """Seconds each commit took."""
    seconds = []
    for batch in work:
        started = time.perf_counter()
        await sink.commit(batch)
        seconds.append(time.perf_counter() - started)
    return seconds


async def _measure(
    count: int, rounds: int, synchronous: Literal["FULL", "NORMAL"]
) -> dict[str, list[float]]:
    items = messages(count)
    fresh, stale = batches(items), batches(items, older=True)
    half = len(fresh) // 2
    cases = ("insert", "insert, second half", "re-upsert, same versions", "re-upsert, older")
    rates: dict[str, list[float]] = {case: [] for case in cases}
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as folder:
            async with SQLiteSink(Path(folder) / "bench.db", synchronous=synchronous) as sink:
                seconds = await _commit_all(sink, fresh)
                rates["insert"].append(count / sum(seconds))
                later = sum(len(b.messages) for b in fresh[half:])
                rates["insert, second half"].append(later / sum(seconds[half:]))
                rates["re-upsert, same versions"].append(
                    count / sum(await _commit_all(sink, fresh))
                )
                rates["re-upsert, older"].append(count / sum(await _commit_all(sink, stale)))
    return rates


def _rows_only(count: int) -> float:
    """Messages a second turned into rows alone (no SQL), for where the time goes."""
    sink = SQLiteSink("unused.db")
    work = batches(messages(count))
    started = time.perf_counter()
    for batch in work:
        sink._message_rows(batch)
    return count / (time.perf_counter() - started)


def run(smoke: bool) -> Section:
    """The table; ``smoke``: 20,000 messages once instead of 200,000 three times."""
    count, rounds = (20_000, 1) if smoke else (200_000, 3)
    section = Section(
        title="SQLite sink",
        what=f"{count:,} messages upserted in batches of {PAGE} (a page, with its state, "
        f"one transaction each) into a new file, then the same versions again, then older "
        f"versions (skipped by the date rule); median of {rounds} run(s). The second half "
        f"of the insert shows the rate as the file grows. Floor: {FLOOR:,} messages/s.",
        columns=["synchronous", "case", "messages/s", "µs per batch of 500", "floor"],
    )
    for mode in ("FULL", "NORMAL"):
        rates = asyncio.run(_measure(count, rounds, mode))
        for case, values in rates.items():
            rate = statistics.median(values)
            verdict = "ok" if rate >= FLOOR else "UNDER"
            section.rows.append([mode, case, rate, PAGE / rate * 1e6, verdict])
    rows_rate = _rows_only(count)
    section.notes.append(
        f"Rows built alone (Message fields to tuples, dates, JSON; no SQL): {rows_rate:,.0f} "
        "messages/s."
    )
    section.notes.append(
        "FULL (the default) syncs the WAL at every commit: a returned commit survives a "
        "power cut; NORMAL only a killed process."
    )
    return section


if __name__ == "__main__":
    import sys

    print(run("--smoke" in sys.argv).markdown())
