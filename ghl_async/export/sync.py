"""``ghl-async sync``: a location's messages, incrementally, into numbered files.

Layout of ``--out DIR`` (made for loading into a warehouse)::

    DIR/messages-000001.jsonl   the first run: every message
    DIR/messages-000002.jsonl   a later run: only messages new or changed since run 1
    DIR/sync-state.json         where each pass stopped (the high-water marks)

Each file is complete and immutable once it appears (written as ``.part``, fsynced,
renamed); load files in number order and upsert by ``id`` (a changed message comes
again, whole, with a later ``dateUpdated``). A run with nothing new writes nothing and
leaves the state alone.

How a run finds what changed: the location export sorted by ``updatedAt``, oldest
first, from the previous run's high-water mark (``startDate``), one mark per pass
(every message but emails, then emails: the passes are separate queries, and one
pass's newer mark must not hide the other's). The mark is inclusive (a message edited
in the same millisecond as the mark is not lost); the ids already delivered at the
mark are in the state and dropped, so two runs in a row with nothing new cost one
request per pass. Oldest first means a message written during a run is still met by
that run's cursor or starts the next run.

A crash or ``kill -9`` leaves a ``.part`` and the old state: the next run does that
run again, under the same number.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import IO

import msgspec

from ghl_async._http.export_route import LocationExport
from ghl_async._params import export_params, updated_at
from ghl_async.client import Client
from ghl_async.export.files import message_line
from ghl_async.models import Message

__all__ = ["STATE_FILE", "SyncRefused", "SyncState", "SyncSummary", "run_sync", "wanted"]

STATE_FORMAT = "ghl-async-sync/1"
STATE_FILE = "sync-state.json"
_PASSES = (("rest", None), ("email", "Email"))


class SyncRefused(Exception):
    """The sync will not start (a bad directory, another sync running, a foreign state)."""


class PassMark(msgspec.Struct, rename="camel", kw_only=True):
    """Where a pass stopped: the newest ``dateUpdated`` delivered, and the ids at it."""

    mark: datetime | None = None
    ids: list[str] = []


class SyncState(msgspec.Struct, rename="camel", kw_only=True):
    """``sync-state.json``: what the runs so far delivered."""

    format: str = STATE_FORMAT
    location: str = ""
    base_url: str = ""
    runs: int = 0
    passes: dict[str, PassMark] = {}


@dataclass
class SyncSummary:
    """What one run did."""

    run: int
    messages: int
    requests: int
    file: str | None  # None: nothing new, nothing written


def wanted(message: Message, mark: PassMark) -> bool:
    """Whether a message is new or changed since ``mark`` (pure; the boundary rule).

    At or after the mark, except the ids already delivered at it; a message with no
    date at all is always delivered.
    """
    when = updated_at(message)
    if when is None or mark.mark is None:
        return True
    if when > mark.mark:
        return True
    return when == mark.mark and message.id not in mark.ids


def advance(mark: PassMark, message: Message) -> PassMark:
    """The mark after delivering ``message`` (pure)."""
    when = updated_at(message)
    if when is None:
        return mark
    if mark.mark is None or when > mark.mark:
        return PassMark(mark=when, ids=[message.id])
    if when == mark.mark and message.id not in mark.ids:
        return PassMark(mark=mark.mark, ids=[*mark.ids, message.id])
    return mark


_state_decoder = msgspec.json.Decoder(SyncState)


def _load_state(path: str, location: str, base_url: str) -> SyncState:
    try:
        with open(path, "rb") as handle:
            state = _state_decoder.decode(handle.read())
    except FileNotFoundError:
        return SyncState(location=location, base_url=base_url)
    except (OSError, msgspec.DecodeError) as exc:
        raise SyncRefused(f"cannot read {path}: {exc}") from None
    if state.format != STATE_FORMAT:
        raise SyncRefused(f"{path} is from another ghl-async ({state.format})")
    if state.location != location or state.base_url != base_url:
        raise SyncRefused(
            f"{path} belongs to location {state.location} at {state.base_url}; "
            "use another --out directory"
        )
    return state


def _replace(path: str, data: bytes, fsync: Callable[[int], None]) -> None:
    """Write ``path`` whole or not at all: a temporary file, fsynced, renamed."""
    temporary = path + ".tmp"
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        fsync(handle.fileno())
    os.replace(temporary, path)


def _lock(directory: str) -> IO[bytes]:
    handle = open(os.path.join(directory, ".lock"), "ab")  # noqa: SIM115 - held for the run
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise SyncRefused(f"another sync is writing {directory}") from None
        raise  # pragma: no cover - flock fails otherwise only on odd filesystems
    return handle


async def run_sync(
    client: Client,
    location_id: str,
    directory: str,
    *,
    email_bodies: bool = False,
    fsync: Callable[[int], None] = os.fsync,
) -> SyncSummary:
    """One sync run: everything the first time, then what is new or changed.

    Raises:
        SyncRefused: before any request, when the directory cannot be used.
        OSError: writing failed (nothing of this run is kept; run again).
        ghl_async.errors.GHLError: what the server said, e.g.
            :class:`~ghl_async.errors.LocationExportUnavailable` (sync needs the export).
    """
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise SyncRefused(f"cannot use {directory}: {exc.strerror}") from None
    lock = _lock(directory)
    requests_before = client.stats.requests
    try:
        state_path = os.path.join(directory, STATE_FILE)
        state = _load_state(state_path, location_id, client._base_url)
        run = state.runs + 1
        final = os.path.join(directory, f"messages-{run:06d}.jsonl")
        part = final + ".part"
        count = 0
        marks = dict(state.passes)
        with open(part, "wb") as out:  # noqa: ASYNC230 - a local file, page by page, as _export
            for name, channel in _PASSES:
                mark = marks.get(name, PassMark())
                query = export_params(
                    location_id,
                    channel=channel,
                    since=mark.mark,
                    sort_by="updatedAt",
                    order="asc",
                )
                export = LocationExport.of(query, email_bodies=email_bodies)
                # This pass only (the first pass, unfiltered, drops stray emails).
                pages = client._iter_location(replace(export, passes=export.passes[:1]))
                seen = mark
                async with contextlib.aclosing(pages):
                    async for page in pages:
                        fresh = [m for m in page.messages if wanted(m, seen)]
                        out.write(
                            b"".join(message_line(m.conversation_id or "", m) for m in fresh)
                        )
                        count += len(fresh)
                        for message in fresh:
                            mark = advance(mark, message)
                marks[name] = mark
            if count:
                out.flush()
                fsync(out.fileno())
        if not count:
            os.remove(part)
            return SyncSummary(run, 0, client.stats.requests - requests_before, None)
        os.replace(part, final)
        state.runs, state.passes = run, marks
        _replace(state_path, msgspec.json.encode(state) + b"\n", fsync)
        return SyncSummary(run, count, client.stats.requests - requests_before, final)
    finally:
        lock.close()
