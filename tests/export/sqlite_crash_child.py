"""The crash test's child: commits deterministic batches into a SQLiteSink until killed.

``python -m tests.export.sqlite_crash_child DB``: opens the sink, resumes after the state
it finds (``cursor`` is the number of batches committed), prints ``ready N`` and commits
batch ``N``, ``N + 1``, ... for ever. The parent SIGKILLs it and checks the file against
:func:`expected` (tests/export/test_sqlite_sink.py).

Batch ``k`` writes ``NEW`` new messages and rewrites ``AGAIN`` of batch ``k - 3``'s at a
later ``date_updated``, so a batch both inserts and updates; ``body`` names the batch that
wrote each version.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone

import anyio

from ghl_async.export.sink import Batch, ExportState
from ghl_async.export.sqlite import SQLiteSink
from ghl_async.models import Message

LOCATION = "crashLocation0000001"
QUERY = "crash-test"
NEW = 40
AGAIN = 10
_EPOCH = datetime(2025, 6, 1, tzinfo=timezone.utc)


def batch_messages(k: int) -> list[Message]:
    """The messages of batch ``k``: its new ones, then rewrites of batch ``k - 3``'s."""
    when = _EPOCH + timedelta(seconds=k)
    fresh = [f"k{k:06d}-{j:02d}" for j in range(NEW)]
    again = [f"k{k - 3:06d}-{j:02d}" for j in range(AGAIN)] if k >= 3 else []
    return [
        Message(
            id=message_id,
            conversation_id=f"conv{k % 7}",
            location_id=LOCATION,
            message_type="TYPE_SMS",
            type=2,
            date_added=_EPOCH,
            date_updated=when,
            body=f"v{k}",
        )
        for message_id in fresh + again
    ]


def state_after(k: int) -> ExportState:
    """The state committed with batch ``k``: ``k + 1`` batches done."""
    written = (k + 1) * NEW + AGAIN * max(0, k - 2)  # the lengths of batches 0..k
    return ExportState(
        location_id=LOCATION,
        query=QUERY,
        cursor=str(k + 1),
        high_water=_EPOCH + timedelta(seconds=k),
        messages=written,
    )


def expected(batches: int) -> dict[str, str]:
    """Each message id the first ``batches`` batches wrote, with the body it must hold."""
    rows: dict[str, str] = {}
    for k in range(batches):
        for message in batch_messages(k):
            rows[message.id] = f"v{k}"
    return rows


async def main(path: str) -> None:
    """Resume from the committed state and commit batches until killed."""
    async with SQLiteSink(path) as sink:
        state = await sink.load(LOCATION)
        k = 0 if state is None or state.cursor is None else int(state.cursor)
        print(f"ready {k}", flush=True)
        while True:
            await sink.commit(Batch(messages=batch_messages(k), state=state_after(k)))
            k += 1


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
