"""An agency's fan-out: many locations' messages read into one stream.

The producers run in one task of their own (tracked by the pool), never inside the
consumer's async generator: :func:`ghl_async._http.fanout.deliver` runs them and hands their
items over, as for a fan-out of conversations, whose rules this follows:
``locations_at_once`` location loops each take the next location and read it, sending
its pages straight into the one bounded stream the consumer reads. A location is read
one of two ways (:data:`LocationWork` says which):

- conversation by conversation (pairs the caller named): the location's own workers, in
  a task group of that location, each take the next conversation and send its pages;
- whole (:data:`WholeLocation`): one call reads the location and sends its pages
  itself (the pool runs the export pipeline there, with its fallback).

A location therefore costs its workers and a task group (or one call), not a fan-out of
its own (a task, a stream and a task group more) relaying into an outer one.

Errors are as in a fan-out of conversations, per location: a conversation's
:class:`~ghl_async.errors.GHLError` is its item with ``return_exceptions=True``; an
error that fails the whole location (a refused token, a spent day, its search failing)
stops that location's workers and is its item ``(location_id, conversation_id or None,
error)``, the other locations going on (a whole location's read has no conversation
items: any :class:`~ghl_async.errors.GHLError` it raises is the location's); without
``return_exceptions`` either stops everything and is raised. Any other exception (a bad
id, a token source raising) stops everything and is raised as itself.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from functools import partial

import anyio

from ghl_async import errors
from ghl_async._http.fanout import Ids, IdSource, Sink, Workers
from ghl_async.models import MessagesPage

__all__ = ["AgencyItem", "AgencyRun", "LocationWork", "PageSource", "Put", "WholeLocation"]

#: ``(location_id, conversation_id or None, page or error)``.
AgencyItem = tuple[str, str | None, MessagesPage | errors.GHLError]
#: One conversation's pages (an async generator, closed when the fan-out stops).
PageSource = Callable[[str], AsyncGenerator[MessagesPage, None]]
#: Sends one item into the fan-out's stream (waiting for room).
Put = Callable[[AgencyItem], Awaitable[None]]
#: A whole location's read: called with :data:`Put`, it sends the location's items and
#: returns once they are all sent; the :class:`~ghl_async.errors.GHLError` it raises
#: fails the location.
WholeLocation = Callable[[Put], Awaitable[None]]
#: A location's work: its id -> (its conversation ids, where a conversation's pages come
#: from), or a :data:`WholeLocation`. Called in the location's loop: what it raises
#: stops the fan-out.
LocationWork = Callable[[str], tuple[IdSource, PageSource] | WholeLocation]


class AgencyRun(Workers[AgencyItem]):
    """The producer side of one agency fan-out."""

    __slots__ = ("locations", "locations_at_once", "return_exceptions", "work", "workers")

    def __init__(
        self,
        locations: IdSource,
        work: LocationWork,
        *,
        workers: int,
        locations_at_once: int,
        return_exceptions: bool,
        send: Sink[AgencyItem],
    ) -> None:
        super().__init__(send)
        self.locations = Ids(locations)
        self.work = work
        self.workers = workers
        self.locations_at_once = locations_at_once
        self.return_exceptions = return_exceptions

    async def run(self) -> None:
        """Run every location's workers until the ids run out or the stream is closed."""
        await self._start(self.locations_at_once, self._location_loop)

    async def _location_loop(self, scope: anyio.CancelScope) -> None:
        while (location_id := await self.locations.next()) is not None:
            error = await self._location(location_id, scope)
            if error is None:
                continue
            if self.return_exceptions:
                await self._put((location_id, error.conversation_id, error))
                continue
            self._stop(error, scope)
            return

    async def _location(
        self, location_id: str, scope: anyio.CancelScope
    ) -> errors.GHLError | None:
        """Read one location; the error that stopped the location, if any."""
        work = self.work(location_id)
        if not isinstance(work, tuple):
            try:
                await work(self._put)
            except errors.GHLError as exc:
                return exc
            return None
        conversation_ids, pages = work
        location = _Location(location_id, Ids(conversation_ids), pages)
        async with anyio.create_task_group() as tg:
            worker = partial(self._worker, location, tg.cancel_scope)
            for _ in range(self.workers):
                # What a worker raises, other than its location's errors, stops them all.
                tg.start_soon(self._guarded, worker, scope)
        return location.error

    async def _worker(self, location: _Location, location_scope: anyio.CancelScope) -> None:
        try:
            while (conversation_id := await location.ids.next()) is not None:
                head = (location.id, conversation_id)
                error = await self._send_pages(head, conversation_id, location.pages)
                if error is None:
                    continue
                if self.return_exceptions and not error.stops_fan_out:
                    await self._put((location.id, conversation_id, error))
                    continue
                # A refused token or a spent day fails every conversation of the location.
                location.stop(error, location_scope)
                return
        except errors.GHLError as exc:
            # The location's conversation source failed (its search): the location stops.
            location.stop(exc, location_scope)


class _Location:
    """One location's share of the run: its conversation ids, pages, and what stopped it."""

    __slots__ = ("error", "id", "ids", "pages")

    def __init__(
        self,
        location_id: str,
        ids: Ids,
        pages: PageSource,
    ) -> None:
        self.id = location_id
        self.ids = ids
        self.pages = pages
        self.error: errors.GHLError | None = None

    def stop(self, error: errors.GHLError, scope: anyio.CancelScope) -> None:
        if self.error is None:
            self.error = error
        scope.cancel()
