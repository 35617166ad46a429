"""The location-wide export's decisions, pure: query parsing, channels, cursors, paging.

The live endpoint (``GET /conversations/messages/export``) is cursor-paged over one
location's messages. The fake keeps every message of the location in a :class:`MessageIndex`
sorted by the requested date field and answers a page by bisecting to the cursor, so a
page of 500 out of 200,000 messages costs a page's work, not a location's.
"""

from __future__ import annotations

import base64
import binascii
import bisect
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

import msgspec

__all__ = [
    "CHANNELS",
    "EMAIL_KINDS",
    "ExportQuery",
    "MessageIndex",
    "QueryError",
    "Record",
    "channel_admits",
    "decode_cursor",
    "encode_cursor",
    "iso_millis",
    "parse_export_query",
    "parse_instant",
]

# The channel filter's values and the message types each one selects. Email is apart from
# the rest because of the endpoint's quirk: without ``channel`` it returns every message
# that is NOT an email, so a complete export is two passes (no channel, then Email).
CHANNELS: dict[str, frozenset[str]] = {
    "Call": frozenset(
        {
            "TYPE_CALL",
            "TYPE_CAMPAIGN_CALL",
            "TYPE_CAMPAIGN_MANUAL_CALL",
            "TYPE_IVR_CALL",
            "TYPE_CUSTOM_CALL",
            "TYPE_CAMPAIGN_VOICEMAIL",
        }
    ),
    "SMS": frozenset(
        {
            "TYPE_SMS",
            "TYPE_CAMPAIGN_SMS",
            "TYPE_CAMPAIGN_MANUAL_SMS",
            "TYPE_CUSTOM_SMS",
            "TYPE_CUSTOM_PROVIDER_SMS",
            "TYPE_SMS_REVIEW_REQUEST",
            "TYPE_SMS_NO_SHOW_REQUEST",
            "TYPE_SMS_REACTION",
        }
    ),
    "Email": frozenset(
        {"TYPE_EMAIL", "TYPE_CAMPAIGN_EMAIL", "TYPE_CUSTOM_EMAIL", "TYPE_CUSTOM_PROVIDER_EMAIL"}
    ),
    "WhatsApp": frozenset({"TYPE_WHATSAPP", "TYPE_ACTIVITY_WHATSAPP"}),
    "Instagram": frozenset({"TYPE_INSTAGRAM", "TYPE_INSTAGRAM_COMMENT"}),
    "Facebook": frozenset({"TYPE_FACEBOOK", "TYPE_FACEBOOK_COMMENT", "TYPE_CAMPAIGN_FACEBOOK"}),
}
EMAIL_KINDS = CHANNELS["Email"]
SORT_FIELDS = ("createdAt", "updatedAt")
SORT_ORDERS = ("asc", "desc")
LIMIT_MIN, LIMIT_MAX, LIMIT_DEFAULT = 10, 500, 100
_TOP = chr(0x10FFFF)  # sorts after every id: the upper sentinel of a key range


class QueryError(Exception):
    """A request the live service refuses: ``status`` 400 or 422 and its message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def channel_admits(channel: str | None, kind: str) -> bool:
    """Whether a message of ``kind`` (a ``TYPE_*`` name) is in the ``channel`` pass."""
    if channel is None:
        return kind not in EMAIL_KINDS
    return kind in CHANNELS[channel]


def parse_instant(text: str) -> int | None:
    """Milliseconds since the epoch from ISO 8601 (naive means UTC) or epoch milliseconds.

    The live service does not document the format; the fake is lenient and takes both.
    """
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return round(stamp.timestamp() * 1000)


def iso_millis(millis: int) -> str:
    """``2025-03-27T18:13:49.000Z``: the service's date format."""
    stamp = datetime.fromtimestamp(millis / 1000, tz=timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}Z"


class _Cursor(msgspec.Struct, array_like=True):
    sort_by: str
    order: str
    key: int
    id: str


_CURSOR_DECODER = msgspec.json.Decoder(_Cursor)


def encode_cursor(sort_by: str, order: str, key: int, message_id: str) -> str:
    """An opaque cursor: where the last page ended, in which ordering."""
    raw = msgspec.json.encode(_Cursor(sort_by, order, key, message_id))
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(text: str) -> tuple[str, str, int, str] | None:
    """The cursor's ``(sortBy, sortOrder, key, id)``, or ``None`` when it is not one."""
    try:
        cursor = _CURSOR_DECODER.decode(base64.urlsafe_b64decode(text.encode()))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        return None
    return cursor.sort_by, cursor.order, cursor.key, cursor.id


@dataclass(frozen=True, slots=True)
class ExportQuery:
    """One export request, checked."""

    limit: int = LIMIT_DEFAULT
    sort_by: str = "createdAt"
    order: str = "desc"
    after: tuple[int, str] | None = None
    conversation_id: str | None = None
    contact_id: str | None = None
    channel: str | None = None
    start: int | None = None
    end: int | None = None


def _choice(query: Mapping[str, str], name: str, allowed: tuple[str, ...], default: str) -> str:
    value = query.get(name, default)
    if value not in allowed:
        raise QueryError(422, f"{name} must be one of the following values: {', '.join(allowed)}")
    return value


def parse_export_query(query: Mapping[str, str]) -> ExportQuery:
    """Check the query as the live service's validator would; raise :class:`QueryError`."""
    raw_limit = query.get("limit", str(LIMIT_DEFAULT))
    try:
        limit = int(raw_limit)
    except ValueError:
        raise QueryError(
            422, "limit must be a number conforming to the specified constraints"
        ) from None
    if limit < LIMIT_MIN:
        raise QueryError(422, f"limit must not be less than {LIMIT_MIN}")
    if limit > LIMIT_MAX:
        raise QueryError(422, f"limit must not be greater than {LIMIT_MAX}")
    sort_by = _choice(query, "sortBy", SORT_FIELDS, "createdAt")
    order = _choice(query, "sortOrder", SORT_ORDERS, "desc")
    channel = query.get("channel")
    if channel is not None and channel not in CHANNELS:
        raise QueryError(
            422, f"channel must be one of the following values: {', '.join(CHANNELS)}"
        )
    bounds: dict[str, int | None] = {}
    for name in ("startDate", "endDate"):
        text = query.get(name)
        bounds[name] = None if text is None else parse_instant(text)
        if text is not None and bounds[name] is None:
            raise QueryError(422, f"{name} must be a valid ISO 8601 date string")
    after: tuple[int, str] | None = None
    if "cursor" in query:
        cursor = decode_cursor(query["cursor"])
        if cursor is None or cursor[:2] != (sort_by, order):
            # A cursor only means something in the ordering that made it.
            raise QueryError(400, "Invalid cursor")
        after = cursor[2:]
    return ExportQuery(
        limit=limit,
        sort_by=sort_by,
        order=order,
        after=after,
        conversation_id=query.get("conversationId"),
        contact_id=query.get("contactId"),
        channel=channel,
        start=bounds["startDate"],
        end=bounds["endDate"],
    )


@dataclass(slots=True)
class Record:
    """One stored message as the export sees it; ``encoded`` is its JSON, ready to serve."""

    id: str
    conversation_id: str
    contact_id: str
    kind: str
    created: int
    updated: int
    encoded: bytes


class MessageIndex:
    """Every message of the location, kept sorted by created and by updated time."""

    def __init__(self) -> None:
        self.records: dict[str, Record] = {}
        self._sorted: dict[str, list[tuple[int, str]]] = {}
        self._totals: dict[tuple[object, ...], int] = {}

    def put(self, record: Record) -> None:
        """Add or replace a record (sorted views and totals are rebuilt on next use)."""
        self.records[record.id] = record
        self._sorted.clear()
        self._totals.clear()

    def _keys(self, sort_by: str) -> list[tuple[int, str]]:
        keys = self._sorted.get(sort_by)
        if keys is None:
            created = sort_by == "createdAt"
            keys = sorted(
                ((r.created if created else r.updated), r.id) for r in self.records.values()
            )
            self._sorted[sort_by] = keys
        return keys

    def _matches(self, query: ExportQuery, record: Record) -> bool:
        return (
            channel_admits(query.channel, record.kind)
            and (query.conversation_id is None or record.conversation_id == query.conversation_id)
            and (query.contact_id is None or record.contact_id == query.contact_id)
        )

    def page(self, query: ExportQuery) -> tuple[list[Record], str | None, int]:
        """The page's records, the next cursor (``None`` at the end) and the match total.

        ``startDate``/``endDate`` bound the field the page is sorted by (both inclusive),
        so ``sortBy=updatedAt`` with a ``startDate`` finds what was edited since then.
        """
        keys = self._keys(query.sort_by)
        low = 0 if query.start is None else bisect.bisect_left(keys, (query.start, ""))
        high = len(keys) if query.end is None else bisect.bisect_right(keys, (query.end, _TOP))
        total_key: tuple[object, ...] = (
            query.sort_by,
            query.channel,
            query.conversation_id,
            query.contact_id,
        )
        total_key = (*total_key, query.start, query.end)
        total = self._totals.get(total_key)
        if total is None:
            records = self.records
            total = sum(self._matches(query, records[i]) for _, i in keys[low:high])
            self._totals[total_key] = total
        if query.order == "asc":
            if query.after is not None:
                low = max(low, bisect.bisect_right(keys, query.after))
            positions = range(low, high)
        else:
            if query.after is not None:
                high = min(high, bisect.bisect_left(keys, query.after))
            positions = range(high - 1, low - 1, -1)
        chosen: list[Record] = []
        for position in positions:
            record = self.records[keys[position][1]]
            if not self._matches(query, record):
                continue
            if len(chosen) == query.limit:
                last = chosen[-1]
                key = last.created if query.sort_by == "createdAt" else last.updated
                return chosen, encode_cursor(query.sort_by, query.order, key, last.id), total
            chosen.append(record)
        return chosen, None, total
