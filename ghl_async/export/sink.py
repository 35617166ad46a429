"""Where an export writes: the sink contract, and the state a sink commits with its rows.

A sink keeps a location's messages and, in the same commit, where the export stands
(:class:`ExportState`). Whatever instant a run is killed at, the state a sink holds
never covers a row it does not hold, so the next run resumes from that state and every
message lands exactly once, at its latest version (rows are upserted by message id; an
older version never replaces a newer one).

The pipeline (:mod:`ghl_async.export.pipeline`) is the only caller: it opens the sink,
asks :meth:`Sink.load` where the location stands, then hands it one :class:`Batch`
after another (a page of messages, the emails of that page, and the state after it).
"""

from __future__ import annotations

from datetime import datetime
from types import TracebackType
from typing import Annotated, Protocol, TypeAlias, runtime_checkable

import msgspec

from ghl_async._http.emails import EmailFailure
from ghl_async.models import EmailMessage, Message

__all__ = ["Batch", "ExportState", "Instant", "Sink"]

#: A timezone-aware ``datetime``: a state naming a naive one (a hand-edited row or
#: file) is refused when it is read, not trusted.
Instant: TypeAlias = Annotated[datetime, msgspec.Meta(tz=True)]


class ExportState(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Where one location's export stands, as the sink last committed it.

    ``query`` names what was asked (dates, channels, contact, email bodies): a resumed
    run must ask the same, or start again. ``cursor`` is the export route's resume token
    (it names its pass; ``None`` before the first page). ``done``: every page was
    written. ``high_water``: the latest ``dateUpdated`` (else ``dateAdded``) written so
    far, for incremental runs. ``fallback``: the route was refused and the run pages
    conversation by conversation; ``conversations`` then holds each conversation's
    last written message id (``None``: finished).

    Incremental runs (:func:`~ghl_async.export.sync_location`) also keep: ``marks``,
    each pass's high-water mark, never past the run's start or the server's clock;
    ``pass_start``, the ``startDate`` of the pass under way (its cursor belongs to that
    query); ``run_started``, when the run under way began (``None`` between runs);
    ``recent``, pass by pass, the ``(dateUpdated, digest)`` of each message id's version
    within the lookback window, so a version read again is not written again.

    ``retry_emails``: message id to the email ids whose bodies failed in a way worth
    asking again (a 404, a 500 after retries); the run's end, and the next run, fetch
    the message and those bodies again.

    An export whose cursor the server refused goes on from ``position``, the
    ``dateAdded`` of the oldest message committed in the pass under way (the ids at it
    in ``recent["position"]``), asking that pass again up to ``pass_until``.
    """

    location_id: str
    query: str
    cursor: str | None = None
    done: bool = False
    high_water: Instant | None = None
    fallback: bool = False
    conversations: dict[str, str | None] = {}
    messages: int = 0
    marks: dict[str, Instant] = {}
    pass_start: Instant | None = None
    run_started: Instant | None = None
    recent: dict[str, dict[str, tuple[Instant, str]]] = {}
    retry_emails: dict[str, list[str]] = {}
    position: Instant | None = None
    pass_until: Instant | None = None


class Batch(msgspec.Struct, frozen=True, kw_only=True):
    """What a sink commits at once: messages, the emails among them, and the state after.

    ``conversation_ids`` gives, message by message, the conversation it was read from
    (``None``: the message's own ``conversationId``); empty means ``None`` for all.
    ``emails`` pairs each fetched email body with the id of its email message;
    ``email_failures`` each body that could not be fetched (a sink records it until a
    later batch brings that email).
    """

    messages: list[Message]
    conversation_ids: list[str | None] = []
    emails: list[tuple[str, EmailMessage]] = []
    email_failures: list[tuple[str, EmailFailure]] = []
    state: ExportState


@runtime_checkable
class Sink(Protocol):
    """What the export pipeline needs of a place to keep a location's messages.

    Used as ``async with sink: ...``. :meth:`commit` writes a batch's rows (upserted by
    id, the newer ``dateUpdated`` winning) and its state in one transaction: after a
    crash at any instant the sink holds either both or neither.
    """

    async def __aenter__(self) -> Sink: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def load(self, location_id: str) -> ExportState | None:
        """The state last committed for ``location_id`` (``None``: never exported)."""
        ...

    async def commit(self, batch: Batch) -> None:
        """Write ``batch``'s rows and its state atomically.

        Raises:
            ghl_async.errors.SinkError: the sink could not write (disk full, database
                gone, a schema of another version); nothing of the batch is kept.
        """
        ...
