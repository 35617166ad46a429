"""One location's messages into a sink, resumably and exactly once: the export pipeline.

:func:`export_location` reads a whole location through the location export route (up to
500 messages a request, both passes) and commits every page to a :class:`~.sink.Sink`
together with the state after it, so a run killed at any instant resumes where the sink
says and every message lands once, at its latest version. Where the route is refused
(the token's scope or the plan lacks it) the same call falls back to listing the
location's conversations and paging each one; the sink's state says which path a run
took, and a resumed run stays on it.

The CLI (``ghl-async export --location``, ``ghl-async sync``), :class:`~ghl_async.Locations`
and the arq jobs are meant to call this one function (see the open pipeline issue for the
wiring still to do).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

import msgspec

from ghl_async import errors
from ghl_async._http.emails import EmailFailure, MessageWithEmails, attach_emails
from ghl_async._http.export_route import LocationPage
from ghl_async._params import check_channel, check_since, updated_at
from ghl_async._validation import check_id
from ghl_async.client import Client
from ghl_async.export.sink import Batch, ExportState, Sink
from ghl_async.models import EmailMessage, Message

__all__ = ["CHANNEL_TYPES", "ExportResult", "export_location", "query_of"]

#: The messages endpoint's ``type`` filter for each channel of the export route: what
#: the fallback asks for when an export is filtered on a channel.
CHANNEL_TYPES: Final[Mapping[str, str]] = {
    "Call": "TYPE_CALL",
    "SMS": "TYPE_SMS",
    "Email": "TYPE_EMAIL",
    "WhatsApp": "TYPE_WHATSAPP,TYPE_ACTIVITY_WHATSAPP",
    "Instagram": "TYPE_INSTAGRAM",
    "Facebook": "TYPE_FACEBOOK",
}


@dataclass
class ExportResult:
    """What one :func:`export_location` run did.

    ``messages``: rows committed by this run (a message edited twice counts twice);
    ``pages``: batches committed; ``resumed``: the run went on from a committed state;
    ``fallback``: it paged conversation by conversation; ``state``: the sink's state
    at the end (``state.done`` once the whole location is in); ``failed_emails``: the
    email bodies still missing at the end, by email id (the message is in the sink all
    the same; those worth asking again are in ``state.retry_emails``, fetched again by
    the next run).
    """

    messages: int = 0
    pages: int = 0
    emails: int = 0
    resumed: bool = False
    fallback: bool = False
    state: ExportState | None = None
    failed_emails: dict[str, EmailFailure] = field(default_factory=dict)


def query_of(
    *,
    since: datetime | None,
    until: datetime | None,
    channel: str | None,
    contact_id: str | None,
    email_bodies: bool,
    incremental: bool = False,
) -> str:
    """The fingerprint of what an export asks, stored with its state (stable text).

    ``incremental``: a sync (:func:`~ghl_async.export.sync_location`), not a one-off
    export; the two never share a location's state.
    """
    asked: dict[str, object] = {
        "since": since.isoformat() if since is not None else None,
        "until": until.isoformat() if until is not None else None,
        "channel": channel,
        "contact": contact_id,
        "emailBodies": email_bodies,
    }
    if incremental:
        asked["sync"] = True
    return msgspec.json.encode(asked).decode()


async def export_location(
    client: Client,
    location_id: str,
    sink: Sink,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    channel: str | None = None,
    contact_id: str | None = None,
    email_bodies: bool = False,
    resume: bool = True,
    on_batch: Callable[[ExportResult], None] | None = None,
) -> ExportResult:
    """Copy every message of ``location_id`` into ``sink``, page by page, exactly once.

    The sink must be open (``async with sink:``). Each page is committed with the state
    after it; with ``resume=True`` (the default) a run goes on from the state the sink
    holds for the location, so running the same call again after a crash, a Ctrl-C or a
    lost connection finishes the job without a message lost or written twice. A state
    left by different arguments (dates, channel, contact, email bodies) is refused:
    pass ``resume=False`` to start again from the first page (rows already in the sink
    stay; they are upserted by id).

    ``since``/``until`` (timezone-aware, inclusive) bound ``createdAt``; ``channel``
    and ``contact_id`` filter as :meth:`Client.iter_location_pages`;
    ``email_bodies=True`` fetches each email's body into the sink's ``emails`` table.
    ``on_batch`` is called after every commit with the totals so far.

    Raises:
        TypeError, ValueError: a bad argument, or a state of another query; before any
            request.
        ghl_async.errors.SinkError: the sink could not write; what it committed stands.
        ghl_async.errors.GHLError: the server refused for good (what the client raises).
    """
    check_id(location_id, "location_id")
    if not isinstance(sink, Sink):
        raise TypeError(f"sink must be a ghl_async.export Sink, not {type(sink).__name__}")
    if since is not None:
        since = check_since(since, "since")
    if until is not None:
        until = check_since(until, "until")
    if channel is not None:
        channel = check_channel(channel)
    if since is not None and until is not None and since > until:
        raise ValueError(f"since ({since.isoformat()}) is after until ({until.isoformat()})")
    query = query_of(
        since=since, until=until, channel=channel, contact_id=contact_id, email_bodies=email_bodies
    )
    state = await sink.load(location_id) if resume else None
    result = ExportResult(resumed=state is not None)
    if state is not None and state.query != query:
        raise ValueError(
            f"location {location_id} was exported into this sink with other arguments "
            f"({state.query}); pass resume=False to start again"
        )
    if state is None:
        state = ExportState(location_id=location_id, query=query)
    result.state = state
    if state.done:  # a finished export: only the email bodies still worth asking again
        await retry_emails(client, sink, state, result, on_batch)
        return result
    if not state.fallback:
        try:
            await _by_route(
                client,
                sink,
                state,
                result,
                since,
                until,
                channel,
                contact_id,
                email_bodies,
                on_batch,
            )
            return result
        except (
            errors.LocationExportUnavailable,
            errors.NotFoundError,
            errors.PermissionDeniedError,
        ):
            # Refused at once (the token's scope, the plan) or part way (a plan change):
            # the fallback reads the location again conversation by conversation; what
            # the route committed stays, and a row read again is upserted, not doubled.
            state = msgspec.structs.replace(
                result.state or state,
                fallback=True,
                cursor=None,
                position=None,
                pass_until=None,
                recent={},
            )
    result.fallback = True
    await _by_conversation(
        client, sink, state, result, since, until, channel, contact_id, email_bodies, on_batch
    )
    return result


def emails_of(messages: list[Message]) -> list[tuple[str, EmailMessage]]:
    """Each email body among ``messages``, paired with its email message's id."""
    return [
        (message.id, email)
        for message in messages
        if isinstance(message, MessageWithEmails)
        for email in message.emails
    ]


def failures_of(messages: list[Message]) -> list[tuple[str, EmailFailure]]:
    """Each email body among ``messages`` that could not be fetched, with its message id."""
    return [
        (message.id, failure)
        for message in messages
        if isinstance(message, MessageWithEmails)
        for failure in message.email_failures
    ]


def page_batch(
    messages: list[Message], state: ExportState, conversation_ids: list[str | None] | None = None
) -> Batch:
    """The batch of a page: its messages, their email bodies and failures, the state."""
    return Batch(
        messages=messages,
        conversation_ids=conversation_ids or [],
        emails=emails_of(messages),
        email_failures=failures_of(messages),
        state=state,
    )


def email_retries(retry: dict[str, list[str]], messages: list[Message]) -> dict[str, list[str]]:
    """``retry_emails`` once ``messages`` are written: each email message's entry is its
    failures worth asking again, or none (pure; ``retry`` is not changed).
    """
    changed: dict[str, list[str]] | None = None
    for message in messages:
        if not isinstance(message, MessageWithEmails):
            continue
        again = [f.email_id for f in message.email_failures if f.retry]
        if again or message.id in retry:
            changed = dict(retry) if changed is None else changed
            if again:
                changed[message.id] = again
            else:
                changed.pop(message.id, None)
    return retry if changed is None else changed


def _advanced(state: ExportState, messages: list[Message]) -> ExportState:
    """The state after ``messages`` are written: counts, high-water mark, retries."""
    high = state.high_water
    for message in messages:
        when = updated_at(message)
        if when is not None and (high is None or when > high):
            high = when
    return msgspec.structs.replace(
        state,
        messages=state.messages + len(messages),
        high_water=high,
        retry_emails=email_retries(state.retry_emails, messages),
    )


async def commit_batch(
    sink: Sink,
    result: ExportResult,
    batch: Batch,
    on_batch: Callable[[ExportResult], None] | None,
    *,
    page: bool = True,
) -> None:
    """Commit ``batch`` and count it (``page=False``: a closing state with no page)."""
    await sink.commit(batch)
    result.state = batch.state
    result.messages += len(batch.messages)
    result.emails += len(batch.emails)
    result.pages += page
    failed = result.failed_emails
    for _, email in batch.emails:
        failed.pop(email.id, None)
    for _, failure in batch.email_failures:
        failed[failure.email_id] = failure
    if on_batch is not None:
        on_batch(result)


async def retry_emails(
    client: Client,
    sink: Sink,
    state: ExportState,
    result: ExportResult,
    on_batch: Callable[[ExportResult], None] | None,
) -> ExportState:
    """Fetch again each message whose email bodies failed in a way worth asking again,
    with its bodies, and commit it: once per run, at its end. What fails again stays
    in ``state.retry_emails`` for the next run; a message gone (404) is let go.
    """
    pending = list(state.retry_emails)
    for start in range(0, len(pending), _RETRY_CHUNK):
        chunk = pending[start : start + _RETRY_CHUNK]
        fetched = await asyncio.gather(*(_message_or_none(client, m) for m in chunk))
        found = [m for m in fetched if isinstance(m, Message)]
        messages = await attach_emails(found, client.get_email)
        gone = [m for m, got in zip(chunk, fetched, strict=True) if got is False]
        retry = {k: v for k, v in state.retry_emails.items() if k not in gone}
        state = _advanced(msgspec.structs.replace(state, retry_emails=retry), messages)
        await commit_batch(sink, result, page_batch(messages, state), on_batch, page=False)
    return state


_RETRY_CHUNK: Final = 100


async def _message_or_none(client: Client, message_id: str) -> Message | Literal[False] | None:
    """The message (``None``: not this time; ``False``: gone for good)."""
    try:
        return await client.get_message(message_id)
    except errors.NotFoundError:
        return False
    except errors.GHLError as exc:
        if exc.stops_fan_out:
            raise
        return None


async def _by_route(
    client: Client,
    sink: Sink,
    state: ExportState,
    result: ExportResult,
    since: datetime | None,
    until: datetime | None,
    channel: str | None,
    contact_id: str | None,
    email_bodies: bool,
    on_batch: Callable[[ExportResult], None] | None,
) -> None:
    """The export route, page by page; a refused cursor restarts its pass where it was.

    Pages come newest first. ``state.position`` is the ``dateAdded`` of the oldest
    message committed in the pass under way, and ``state.recent["position"]`` the ids
    at it. When the server refuses a cursor (400 or 422: it expired during a pause, or
    the server forgot it), the pass is asked again with ``endDate`` at that position
    (kept in ``state.pass_until`` for a resume), and the ids already written at the
    position are dropped: nothing is lost and nothing is written twice.
    """
    restarted = False
    previous: frozenset[str] = frozenset()  # the ids of the page before: pages may overlap
    while True:
        read = 0
        bounded = state.pass_until is not None
        try:
            pages = client.iter_location_pages(
                state.location_id,
                channel=channel,
                contact_id=contact_id,
                since=since,
                until=state.pass_until or until,
                cursor=state.cursor,
                email_bodies=email_bodies,
            )
            async with aclosing(pages):
                async for page in pages:
                    read += 1
                    state, previous = await _route_page(
                        sink, result, state, page, previous, channel is not None, on_batch
                    )
                    del page  # not kept while the next one is asked for
                    if bounded and state.pass_until is None:
                        break  # the bounded pass is over: the next asks without the bound
            if bounded and not state.done:
                continue
            break
        except errors.BadRequestError:
            if not _server_cursor(state.cursor, channel) or (restarted and read == 0):
                raise  # no cursor to blame, or refused again from the position itself
            restarted = True
            state = _restart_pass(state, channel, until)
    state = await retry_emails(client, sink, state, result, on_batch)
    if not state.done:  # no page at all, or the last one still had a resume token
        state = msgspec.structs.replace(state, cursor=None, done=True)
        await commit_batch(sink, result, Batch(messages=[], state=state), on_batch, page=False)


_POSITION: Final = "position"


def _server_cursor(cursor: str | None, channel: str | None) -> str | None:
    """The server's own cursor within a resume token (``None``: the start of a pass)."""
    if cursor is None or channel is not None:
        return cursor
    return cursor.partition(":")[2] or None


def _restart_pass(state: ExportState, channel: str | None, until: datetime | None) -> ExportState:
    """The state that asks the pass under way again, ending at its committed position."""
    bound = state.position
    if bound is not None and until is not None:
        bound = min(bound, until)
    start = None if channel is not None or state.cursor is None else state.cursor.partition(":")[0]
    return msgspec.structs.replace(
        state, cursor=None if start is None else f"{start}:", pass_until=bound
    )


def _continues(page: LocationPage, filtered: bool) -> bool:
    """Whether the pass of ``page`` goes on after it (its resume token stays in the pass)."""
    if page.resume is None:
        return False
    if filtered:
        return True  # one pass: the token is the server's cursor
    name, _, cursor = page.resume.partition(":")
    return cursor != "" and name == ("email" if page.channel == "Email" else "rest")


async def _route_page(
    sink: Sink,
    result: ExportResult,
    state: ExportState,
    page: LocationPage,
    previous: frozenset[str],
    filtered: bool,
    on_batch: Callable[[ExportResult], None] | None,
) -> tuple[ExportState, frozenset[str]]:
    """Commit one page of the export route with the state after it; return the state
    and the page's ids. A message the page before held (pages that overlap) or written
    at the position a restarted pass starts from is not written again.
    """
    at_position = state.recent.get(_POSITION, {})
    messages = page.messages
    if at_position or previous:
        messages = [m for m in messages if m.id not in at_position and m.id not in previous]
    position, boundary = state.position, dict(at_position)
    for message in messages:
        added = message.date_added
        if added is None:
            continue
        if position is None or added < position:
            position, boundary = added, {}
        if added == position:
            boundary[message.id] = (added, "")
    same_pass = _continues(page, filtered)
    recent = dict(state.recent)
    if same_pass:
        recent[_POSITION] = boundary
    else:  # the pass is over: the next starts with no position
        recent.pop(_POSITION, None)
        position = None
    state = msgspec.structs.replace(
        _advanced(state, messages),
        cursor=page.resume,
        done=page.resume is None,
        position=position,
        pass_until=state.pass_until if same_pass else None,
        recent=recent,
    )
    await commit_batch(sink, result, page_batch(messages, state), on_batch)
    return state, frozenset(m.id for m in page.messages)


async def _by_conversation(
    client: Client,
    sink: Sink,
    state: ExportState,
    result: ExportResult,
    since: datetime | None,
    until: datetime | None,
    channel: str | None,
    contact_id: str | None,
    email_bodies: bool,
    on_batch: Callable[[ExportResult], None] | None,
) -> None:
    """The fallback: list the location's conversations, then page each one.

    ``state.conversations`` maps each conversation met to ``None`` once all its pages
    are committed, else to the last message id committed. A resumed run skips the
    finished ones and reads the others again from their newest message: rows are
    upserted by id, so a page read twice lands once. ``channel`` becomes the messages
    endpoint's type filter (:data:`CHANNEL_TYPES`); ``until``, which that endpoint
    cannot ask, is applied to each page (a conversation's pages come newest first, so
    the pages after ``until`` are still read, and dropped).
    """
    done = {cid for cid, cursor in state.conversations.items() if cursor is None}
    conversations = (
        client.iter_conversations(state.location_id, contactId=contact_id)
        if contact_id
        else client.iter_conversations(state.location_id)
    )
    ids = [c.id async for c in conversations if c.id not in done]
    progress = dict(state.conversations)
    types = CHANNEL_TYPES[channel] if channel is not None else None
    pages = client.fan_out_pages(ids, types, since=since, email_bodies=email_bodies)
    async with aclosing(pages):
        async for conversation_id, page in pages:
            progress[conversation_id] = (
                page.last_message_id if page.next_page and page.last_message_id else None
            )
            messages = page.messages
            if until is not None:
                messages = [m for m in messages if m.date_added is None or m.date_added <= until]
            state = msgspec.structs.replace(
                _advanced(state, messages), conversations=dict(progress)
            )
            batch = page_batch(messages, state, [conversation_id] * len(messages))
            await commit_batch(sink, result, batch, on_batch)
            del page, batch, messages  # not kept while the next page is asked for
    state = await retry_emails(client, sink, state, result, on_batch)
    state = msgspec.structs.replace(state, done=True)
    await commit_batch(sink, result, Batch(messages=[], state=state), on_batch, page=False)
