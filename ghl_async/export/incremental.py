"""A location kept in sync: each run reads what changed since the run before, into a sink.

**The contract.** After a call of :func:`sync_location` that started at ``T``, the sink
holds, at its latest version, every message change the server made visible before ``T``,
provided the server made it visible within ``lookback`` of the ``dateUpdated`` it
carries (a clock a little behind, a late commit on the server). A call that finds a run
killed part way finishes that run, then makes one of its own: the killed run started
before ``T``, and a pass it had already read misses what changed since.

**How.** The export route, sorted by ``updatedAt`` oldest first, in two passes (every
message but emails, then the emails: separate queries, so each has its own mark). Each
pass starts at its high-water mark minus the lookback. The mark is the newest
``dateUpdated`` read, but never past the run's start or the server's own clock (its
``Date`` header): one message dated ten years ahead cannot hide every later change. A
version read again (the lookback window, a page overlapping the one before, a message
dated in the future and so read by every run) is known by its id, its ``dateUpdated``
and a digest of its content, kept for the versions within the window
(:attr:`ExportState.recent`), and is not written again; an edit that keeps the same
``dateUpdated`` has another digest, and is written.

Every page is committed with the state after it (cursor, marks, recent versions), so a
run killed at any instant goes on from its cursor. A cursor the server no longer accepts
(400 or 422 after a long pause) restarts that pass from its committed mark, the versions
read twice dropped by their digests.

The rules are pure functions (:func:`window_start`, :func:`next_mark`, :func:`unseen`,
:func:`pruned`); :func:`sync_location` is their one caller with I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from contextlib import aclosing
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Final

import msgspec

from ghl_async import errors
from ghl_async._http.export_route import LocationExport, LocationPage
from ghl_async._params import export_params, updated_at
from ghl_async._validation import check_id
from ghl_async.client import Client
from ghl_async.export.pipeline import (
    ExportResult,
    commit_batch,
    email_retries,
    page_batch,
    query_of,
    retry_emails,
)
from ghl_async.export.sink import Batch, ExportState, Sink
from ghl_async.models import Message

__all__ = [
    "LOOKBACK",
    "PASSES",
    "next_mark",
    "pruned",
    "sync_location",
    "unseen",
    "window_start",
]

#: How far before its mark each pass reads again, by default.
LOOKBACK: Final = timedelta(minutes=5)

#: The passes of a sync, in order: the name kept in the state, and the export's channel.
PASSES: Final[tuple[tuple[str, str | None], ...]] = (("rest", None), ("email", "Email"))

Versions = dict[str, tuple[datetime, str]]

_encode = msgspec.json.Encoder().encode


def window_start(mark: datetime | None, lookback: timedelta) -> datetime | None:
    """Where a pass starts reading: its mark less the lookback (``None``: the beginning)."""
    if mark is None:
        return None
    try:
        return mark - lookback
    except OverflowError:  # a mark within the lookback of year 1
        return None


def next_mark(
    mark: datetime | None, messages: list[Message], ceiling: datetime
) -> datetime | None:
    """The mark after reading ``messages``: the newest ``dateUpdated`` (else
    ``dateAdded``) among them and the mark, each taken at most at ``ceiling``.
    """
    newest = mark
    for message in messages:
        when = updated_at(message)
        if when is None:
            continue
        when = min(when, ceiling)
        if newest is None or when > newest:
            newest = when
    return newest


def digest(message: Message) -> str:
    """A short digest of a message's whole content as decoded (its version)."""
    return hashlib.blake2b(_encode(message), digest_size=10).hexdigest()


def unseen(
    messages: list[Message], recent: Mapping[str, tuple[datetime, str]], undated: datetime
) -> tuple[list[Message], Versions]:
    """The messages whose version is not in ``recent``, and ``recent`` with theirs added.

    A version is the id and the digest of the content (which holds ``dateUpdated``); a
    message that comes twice in ``messages`` is kept once. A message with no date is
    recorded at ``undated`` (the run's start).
    """
    fresh: list[Message] = []
    versions: Versions = dict(recent)
    for message in messages:
        version = digest(message)
        known = versions.get(message.id)
        if known is not None and known[1] == version:
            continue
        versions[message.id] = (updated_at(message) or undated, version)
        fresh.append(message)
    return fresh, versions


def pruned(recent: Versions, start: datetime | None) -> Versions:
    """The versions a pass starting at ``start`` can still read again."""
    if start is None:
        return recent
    return {key: value for key, value in recent.items() if value[0] >= start}


def _ceiling(started: datetime, client: Client) -> datetime:
    server = client.stats.server_time()
    return started if server is None else min(started, server)


def _pass_export(
    location_id: str,
    channel: str | None,
    start: datetime | None,
    cursor: str | None,
    email_bodies: bool,
) -> LocationExport:
    """The export of one pass, from ``start`` (its ``startDate``), at the server's ``cursor``."""
    query = dict(
        export_params(location_id, channel=channel, since=start, sort_by="updatedAt", order="asc")
    )
    export = LocationExport.of(query, email_bodies=email_bodies)
    # This pass only: the first pass of an unfiltered export leaves emails to the second.
    return replace(export, passes=export.passes[:1], start=cursor)


async def sync_location(
    client: Client,
    location_id: str,
    sink: Sink,
    *,
    email_bodies: bool = False,
    lookback: timedelta = LOOKBACK,
    on_batch: Callable[[ExportResult], None] | None = None,
) -> ExportResult:
    """One sync run: every message of ``location_id`` the first time, then what changed.

    The sink must be open (``async with sink:``). Run it again whenever you want the
    sink brought up to date (every few minutes, say); a run that was killed is finished
    where the sink says, then a new run follows. The module's docstring states the
    guarantee. ``lookback`` (at least zero) is how far before its mark each pass reads
    again: as long as the worst delay between a change's ``dateUpdated`` and its
    appearing on the server.

    ``ExportResult.messages`` counts the versions written by this call (a message
    changed twice since the last run is written once, at its latest version).

    Raises:
        TypeError, ValueError: a bad argument, or a sink holding a full export of the
            location (not a sync) or a sync with other ``email_bodies``.
        ghl_async.errors.LocationExportUnavailable: the token or plan lacks the export
            route, which a sync needs.
        ghl_async.errors.SinkError: the sink could not write; what it committed stands.
        ghl_async.errors.GHLError: the server refused for good.
    """
    check_id(location_id, "location_id")
    if not isinstance(sink, Sink):
        raise TypeError(f"sink must be a ghl_async.export Sink, not {type(sink).__name__}")
    if not isinstance(lookback, timedelta) or lookback < timedelta(0):
        raise ValueError(f"lookback must be a timedelta of zero or more, not {lookback!r}")
    query = query_of(
        since=None,
        until=None,
        channel=None,
        contact_id=None,
        email_bodies=email_bodies,
        incremental=True,
    )
    state = await sink.load(location_id)
    if state is not None and state.query != query:
        raise ValueError(
            f"location {location_id} was exported into this sink with other arguments "
            f"({state.query}); sync into another sink"
        )
    if state is None:
        state = ExportState(location_id=location_id, query=query)
    result = ExportResult(resumed=state.run_started is not None, state=state)
    run = _Run(client, sink, result, email_bodies, lookback, on_batch)
    if result.resumed:
        # Finish the run a killed call began. It started before this call, and a pass it
        # had read already misses what changed since: a run of this call's own follows.
        await run.passes(state)
        assert result.state is not None
        state = result.state
    await run.passes(_new_run(state, lookback))
    return result


def _new_run(state: ExportState, lookback: timedelta) -> ExportState:
    """A run starting now: each pass from its mark less the lookback."""
    first = PASSES[0][0]
    return msgspec.structs.replace(
        state,
        done=False,
        run_started=datetime.now(timezone.utc),
        cursor=f"{first}:",
        pass_start=window_start(state.marks.get(first), lookback),
    )


class _Run:
    """One sync run's passes, committing page by page."""

    def __init__(
        self,
        client: Client,
        sink: Sink,
        result: ExportResult,
        email_bodies: bool,
        lookback: timedelta,
        on_batch: Callable[[ExportResult], None] | None,
    ) -> None:
        self.client = client
        self.sink = sink
        self.result = result
        self.email_bodies = email_bodies
        self.lookback = lookback
        self.on_batch = on_batch

    async def passes(self, state: ExportState) -> None:
        names = [name for name, _ in PASSES]
        assert state.run_started is not None
        if state.cursor is not None:  # None: every pass was read, only the close is left
            current, _, cursor = state.cursor.partition(":")
            for name, channel in PASSES[names.index(current) :]:
                if name != current:
                    cursor = ""  # a pass begun here; its start was committed with the last
                state = await self._pass(state, name, channel, cursor or None)
        state = await retry_emails(self.client, self.sink, state, self.result, self.on_batch)
        state = msgspec.structs.replace(
            state, cursor=None, done=True, run_started=None, pass_start=None
        )
        await self._commit(Batch(messages=[], state=state), page=False)

    def _after(self, state: ExportState, name: str) -> ExportState:
        """The state once pass ``name`` is read: at the start of the next pass, if any."""
        names = [n for n, _ in PASSES]
        index = names.index(name) + 1
        if index == len(PASSES):
            return msgspec.structs.replace(state, cursor=None, pass_start=None)
        following = names[index]
        return msgspec.structs.replace(
            state,
            cursor=f"{following}:",
            pass_start=window_start(state.marks.get(following), self.lookback),
        )

    async def _pass(
        self, state: ExportState, name: str, channel: str | None, cursor: str | None
    ) -> ExportState:
        """Read one pass to its end, restarting it from its mark if the cursor is refused."""
        restarted_at: datetime | None = None
        restarted = False
        while True:
            read = 0
            try:
                export = _pass_export(
                    state.location_id, channel, state.pass_start, cursor, self.email_bodies
                )
                pages = self.client._iter_location(export)
                async with aclosing(pages):
                    async for page in pages:
                        read += 1
                        state = await self._page(state, name, page)
                if read == 0:  # no page at all: the pass is over all the same
                    state = self._after(state, name)
                return state
            except errors.BadRequestError:
                if cursor is None and read == 0:
                    raise  # the first request of the pass, with no cursor: not a cursor
                start = state.marks.get(name, state.pass_start)
                if restarted and read == 0 and start == restarted_at:
                    raise  # started again from the mark and refused again: give up
                # The cursor expired or was refused: start the pass again from the
                # committed mark; what is read twice is dropped by its digest.
                restarted, restarted_at, cursor = True, start, None
                state = msgspec.structs.replace(state, cursor=f"{name}:", pass_start=start)

    async def _page(self, state: ExportState, name: str, page: LocationPage) -> ExportState:
        assert state.run_started is not None
        ceiling = _ceiling(state.run_started, self.client)
        recent = state.recent.get(name, {})
        fresh, recent = unseen(page.messages, recent, state.run_started)
        mark = next_mark(state.marks.get(name), page.messages, ceiling)
        marks = dict(state.marks)
        if mark is not None:
            marks[name] = mark
        versions = dict(state.recent)
        versions[name] = pruned(recent, window_start(mark, self.lookback))
        high = next_mark(state.high_water, fresh, datetime.max.replace(tzinfo=timezone.utc))
        state = msgspec.structs.replace(
            state,
            cursor=f"{name}:{page.next_cursor}",
            marks=marks,
            recent=versions,
            high_water=high,
            messages=state.messages + len(fresh),
            retry_emails=email_retries(state.retry_emails, fresh),
        )
        if not page.next_cursor:
            state = self._after(state, name)
        await self._commit(page_batch(fresh, state))
        return state

    async def _commit(self, batch: Batch, *, page: bool = True) -> None:
        await commit_batch(
            self.sink, batch=batch, result=self.result, on_batch=self.on_batch, page=page
        )
