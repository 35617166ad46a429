"""Paging decisions, pure: "request params + page -> next request params or None".

One function per endpoint, no I/O, so one generic loop can serve them all::

    params = first
    seen = set()
    while params is not None:
        page = decode(await get(url, params))
        yield page
        params = next_params(params, page)
        cursor = cursor_of(params) if params is not None else None
        if cursor in seen: raise PaginationError(...)   # the one repeat guard
        seen.add(cursor)

Also here: the incremental-sync cut (:func:`cut_since`, :func:`cut_conversations_since`,
:func:`high_water`), the export's date format (:func:`format_export_date`) and its
checked parameters (:func:`export_params`).

Incremental sync boundary (one rule for messages and conversations): an item dated
exactly at ``since`` is **kept** (``date >= since``). HighLevel's dates are at best
millisecond (often whole-second) precise, so two messages can share a timestamp; with
a strict "newer than" rule, one arriving after a run with the same timestamp as that
run's newest would never be delivered. Keeping the boundary re-delivers the items at
the high-water mark itself: :func:`high_water` returns their ids, and passing them back
as ``seen`` drops exactly those, so each item is delivered once.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Final, TypeVar

from ghl_async._validation import check_id, check_int
from ghl_async.models import Conversation, ConversationsPage, ExportPage, Message, MessagesPage

__all__ = [
    "CHANNELS",
    "check_channel",
    "CURSOR_PARAMS",
    "EXPORT_PAGE_MAX",
    "EXPORT_PAGE_MIN",
    "check_cursor",
    "check_since",
    "cursor_of",
    "cut_conversations_since",
    "cut_since",
    "export_params",
    "format_export_date",
    "high_water",
    "next_export_params",
    "next_messages_params",
    "next_search_params",
    "updated_at",
]

Params = dict[str, str]

# The export's channel filter, as the API spells it; input is matched case-insensitively.
CHANNELS: Final = ("Call", "SMS", "Email", "WhatsApp", "Instagram", "Facebook")
_CHANNELS: Final = {name.lower(): name for name in CHANNELS}
_SORT_FIELDS: Final = {"createdat": "createdAt", "updatedat": "updatedAt"}
_ORDERS: Final = ("asc", "desc")
EXPORT_PAGE_MIN, EXPORT_PAGE_MAX = 10, 500
_SEARCH_DEFAULT_LIMIT: Final = 20  # the search's default page size, per its schema
_MAX_CURSOR: Final = 4096

# The query parameter that carries each endpoint's cursor, in the order cursor_of looks.
CURSOR_PARAMS: Final = ("lastMessageId", "startAfterDate", "cursor")


# -- next request ----------------------------------------------------------------------


def next_messages_params(params: Mapping[str, str], page: MessagesPage) -> Params | None:
    """The next ``GET /conversations/{id}/messages`` request after ``page``, or ``None``.

    ``None`` when ``page.is_last`` (``nextPage`` false, or an empty page). Otherwise
    ``lastMessageId`` is the server's ``lastMessageId``, or the id of the page's last
    message when the server left it out.
    """
    if page.is_last:
        return None
    return {**params, "lastMessageId": page.last_message_id or page.messages[-1].id}


def next_search_params(
    params: Mapping[str, str], page: ConversationsPage | Sequence[Conversation]
) -> Params | None:
    """The next ``GET /conversations/search`` request after ``page``, or ``None``.

    ``None`` on a short page (fewer conversations than ``limit``, 20 when absent), or
    when the last conversation carries neither a ``sort`` value nor a
    ``lastMessageDate`` (there is nothing to continue from). Otherwise
    ``startAfterDate`` is the first ``sort`` value of the last conversation (the
    search's own cursor), else its ``lastMessageDate``; a whole number is sent without
    a fraction (``1600854``, not ``1600854.0``).
    """
    conversations = page.conversations if isinstance(page, ConversationsPage) else page
    try:
        limit = int(params.get("limit", _SEARCH_DEFAULT_LIMIT))
    except ValueError:
        limit = _SEARCH_DEFAULT_LIMIT
    if not conversations or len(conversations) < limit:
        return None
    last = conversations[-1]
    value: object = last.sort[0] if last.sort else last.last_message_date
    cursor = _sort_value(value)
    if cursor is None:
        return None
    return {**params, "startAfterDate": cursor}


def _sort_value(value: object) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value)
    return text or None


def next_export_params(params: Mapping[str, str], page: ExportPage) -> Params | None:
    """The next ``GET /conversations/messages/export`` request after ``page``, or ``None``.

    ``None`` when ``page.is_last`` (``nextCursor`` null or empty, or an empty page);
    otherwise the same request with ``cursor`` set to ``nextCursor``.
    """
    if page.is_last or page.next_cursor is None:
        return None
    return {**params, "cursor": page.next_cursor}


def cursor_of(params: Mapping[str, str] | None) -> str | None:
    """The one value a repeat guard watches in a request: its cursor, or ``None``.

    ``lastMessageId`` (messages), ``startAfterDate`` (search) or ``cursor`` (export),
    whichever the request carries (each endpoint's requests carry only their own).
    A loop that sees the same cursor twice for one listing must raise
    :class:`ghl_async.errors.PaginationError`: the server would make it go round for
    ever, whichever endpoint it is.
    """
    if params is None:
        return None
    for name in CURSOR_PARAMS:
        value = params.get(name)
        if value is not None:
            return value
    return None


# -- incremental sync ---------------------------------------------------------------

_T = TypeVar("_T", Message, Conversation)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _aware(when: datetime, what: str) -> datetime:
    if not isinstance(when, datetime):
        raise TypeError(f"{what} must be a datetime, not {type(when).__name__}")
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(
            f"{what} must be timezone-aware (datetime(..., tzinfo=timezone.utc)): "
            "a naive datetime would be read in an unknown zone"
        )
    try:
        # In UTC: instants compare as instants (two wall times of one zone across a DST
        # fold compare by the wall clock otherwise), and print the same everywhere.
        return when.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(
            f"{what} ({when.isoformat()}) is outside the dates UTC can hold (years 1 to 9999)"
        ) from None


def check_since(when: datetime, what: str = "since") -> datetime:
    """``when`` in UTC, if it is a timezone-aware datetime.

    Raises:
        TypeError: not a datetime.
        ValueError: naive (its zone is unknown), or outside what UTC can hold (year 1
            at +01:00).
    """
    return _aware(when, what)


def _cut(
    items: Sequence[_T], keys: Iterable[datetime | None], since: datetime, seen: Collection[str]
) -> tuple[list[_T], bool]:
    kept: list[_T] = []
    for item, key in zip(items, keys, strict=True):
        if key is None:
            kept.append(item)  # undated: keep it, and it says nothing about where we are
        elif key < since:
            return kept, True
        elif key > since or item.id not in seen:
            kept.append(item)
        # else: at the mark and delivered by the previous run
    return kept, False


def cut_since(
    messages: Sequence[Message], since: datetime, *, seen: Collection[str] = ()
) -> tuple[list[Message], bool]:
    """Keep the messages (newest first) dated at or after ``since``: ``(kept, reached)``.

    ``reached`` is True once a message older than ``since`` is met: that message and all
    after it are left out and paging can stop. A message dated exactly ``since`` is
    kept unless its id is in ``seen`` (the ids :func:`high_water` returned last run).
    A message with no date is kept and does not stop the cut.

    Raises:
        ValueError: ``since`` is naive.
    """
    bound = _aware(since, "since")
    return _cut(messages, (m.date_added for m in messages), bound, seen)


def cut_conversations_since(
    conversations: Sequence[Conversation], since: datetime, *, seen: Collection[str] = ()
) -> tuple[list[Conversation], bool]:
    """:func:`cut_since` for conversations (newest last message first), by
    ``last_message_date`` (epoch milliseconds), same boundary rule.

    Raises:
        ValueError: ``since`` is naive.
    """
    bound = _aware(since, "since")
    keys = (_from_millis(c.last_message_date) for c in conversations)
    return _cut(conversations, keys, bound, seen)


def _from_millis(millis: int | None) -> datetime | None:
    if millis is None:
        return None
    try:
        return _EPOCH + timedelta(milliseconds=millis)
    except OverflowError:
        return None  # out of datetime's range: no usable date


def updated_at(message: Message) -> datetime | None:
    """When a message last changed: ``date_updated``, else ``date_added``."""
    return message.date_updated or message.date_added


def high_water(
    messages: Iterable[Message], key: Callable[[Message], datetime | None] | None = None
) -> tuple[datetime | None, frozenset[str]]:
    """The newest ``date_added`` among ``messages`` and the ids of the messages at it.

    Pass them to the next run's :func:`cut_since` (``since=mark, seen=ids``): messages
    at the mark that were already delivered are dropped, later ones with the same
    timestamp are not. ``(None, frozenset())`` when no message has a date. ``key``
    picks another date (:func:`updated_at` for a sync sorted by ``updatedAt``).
    """
    mark: datetime | None = None
    ids: set[str] = set()
    for message in messages:
        when = message.date_added if key is None else key(message)
        if when is None:
            continue
        if mark is None or when > mark:
            mark, ids = when, {message.id}
        elif when == mark:
            ids.add(message.id)
    return mark, frozenset(ids)


# -- the location export's parameters -----------------------------------------------


def format_export_date(when: datetime) -> str:
    """``startDate``/``endDate`` text: ISO 8601 in UTC with milliseconds and ``Z``.

    ``2024-03-27T18:13:49.123Z``: the form the API's own dates take (the parameter's
    format is not documented). Microseconds are cut to the millisecond below.

    Raises:
        TypeError: not a datetime.
        ValueError: a naive datetime (its zone is unknown; pass ``tzinfo=timezone.utc``).
    """
    utc = _aware(when, "the date")
    # Not strftime: its %Y writes year 5 as "5" on some platforms, not "0005".
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T{utc.hour:02d}:{utc.minute:02d}:"
        f"{utc.second:02d}.{utc.microsecond // 1000:03d}Z"
    )


def check_cursor(value: object, what: str = "cursor") -> str:
    """Return ``value`` if it can be an opaque cursor: a non-empty str, printable, short.

    Cursors are base64 (``=``, ``+``, ``/`` allowed), so :func:`check_id` is too strict.
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value or len(value) > _MAX_CURSOR or not value.isprintable() or value != value.strip():
        raise ValueError(f"{what} must be a non-empty printable str of at most {_MAX_CURSOR}")
    return value


def _choice(value: object, what: str, allowed: Mapping[str, str]) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    found = allowed.get(value.strip().lower())
    if found is None:
        raise ValueError(f"{what} must be one of {', '.join(allowed.values())}, got {value!r}")
    return found


def check_channel(channel: object) -> str:
    """``channel`` as the API spells it (matched without regard to case or spaces).

    Raises:
        TypeError, ValueError: not one of :data:`CHANNELS`.
    """
    return _choice(channel, "channel", _CHANNELS)


def export_params(
    location_id: str,
    *,
    channel: str | None = None,
    contact_id: str | None = None,
    conversation_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    sort_by: str = "createdAt",
    order: str = "desc",
    page_size: int = EXPORT_PAGE_MAX,
    cursor: str | None = None,
) -> Params:
    """The checked query of a first ``GET /conversations/messages/export`` request.

    ``channel`` (one of :data:`CHANNELS`), ``sort_by`` and ``order`` are matched without
    regard to case and sent as the API spells them. ``since``/``until`` become
    ``startDate``/``endDate`` (:func:`format_export_date`), bounding the ``sort_by``
    field. Without ``channel`` the API returns every message except emails: a complete
    export is a second pass with ``channel="Email"``.

    Raises:
        TypeError, ValueError: a bad argument, before any request.
    """
    params: Params = {
        "locationId": check_id(location_id, "location_id"),
        "limit": str(check_int(page_size, "page_size", EXPORT_PAGE_MIN, EXPORT_PAGE_MAX)),
        "sortBy": _choice(sort_by, "sort_by", _SORT_FIELDS),
        "sortOrder": _choice(order, "order", {o: o for o in _ORDERS}),
    }
    if channel is not None:
        params["channel"] = _choice(channel, "channel", _CHANNELS)
    if contact_id is not None:
        params["contactId"] = check_id(contact_id, "contact_id")
    if conversation_id is not None:
        params["conversationId"] = check_id(conversation_id, "conversation_id")
    if since is not None:
        since = _aware(since, "since")
        params["startDate"] = format_export_date(since)
    if until is not None:
        until = _aware(until, "until")
        params["endDate"] = format_export_date(until)
    if since is not None and until is not None and since > until:
        raise ValueError(f"since ({since.isoformat()}) is after until ({until.isoformat()})")
    if cursor is not None:
        params["cursor"] = check_cursor(cursor)
    return params
