"""Flat rows for notebooks: messages in, dicts with real datetimes out.

::

    import pandas as pd
    from ghl_async import to_records

    pairs = [pair async for pair in client.fan_out(ids)]
    df = pd.DataFrame(to_records(pairs))      # or polars.DataFrame(to_records(pairs))

``msgspec.to_builtins(message)`` is the wire form (camelCase, nested ``meta``, dates as
strings); :func:`to_records` is the table form: one level, snake_case, ``date_added`` a
timezone-aware ``datetime``, the ``meta`` values lifted into their own columns.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, Final, TypeAlias

import msgspec

from ghl_async.errors import GHLError
from ghl_async.models import Message, MessagesPage

__all__ = ["COLUMNS", "Record", "to_records"]

Record: TypeAlias = "dict[str, Any]"
"""One row of :func:`to_records`: column name to value."""

Item: TypeAlias = "Message | MessagesPage | tuple[str, Message | MessagesPage]"
"""What :func:`to_records` takes: a message, a page, or a pair with its conversation id."""

COLUMNS: Final[dict[str, str]] = {
    "id": "the message id (str)",
    "conversation_id": "the conversation it was fetched from, else the message's own (str)",
    "location_id": "the sub-account (str or None)",
    "contact_id": "the contact (str or None)",
    "date_added": "when it was sent: a timezone-aware datetime (UTC) or None",
    "direction": '"inbound", "outbound", or what the server sent (str or None)',
    "status": "delivery status as sent (str or None)",
    "message_type": 'e.g. "TYPE_SMS"; compare with MessageType (str or None)',
    "type": "HighLevel's numeric type code (int, float or None)",
    "body": "the text (str or None)",
    "content_type": 'e.g. "text/plain" (str or None)',
    "attachments": "attachment URLs (list of str, maybe empty)",
    "source": '"workflow", "api", "app", ... as sent (str or None)',
    "user_id": "the user who sent it (str or None)",
    "alt_id": "the provider's id for it (str or None)",
    "conversation_provider_id": "custom conversation provider (str or None)",
    "chat_widget_id": "chat widget (str or None)",
    "call_duration": "call length in seconds (int or None)",
    "call_status": "call outcome (str or None)",
    "email_message_ids": "for emails, the ids of the thread's messages (list of str)",
    "unparsed": "values that could not take their type, as JSON text, or None",
}
"""Every column of a :func:`to_records` row, in order, with what it holds."""


def to_records(items: Iterable[Item]) -> list[Record]:
    """Flat rows, one per message, ready for ``pandas.DataFrame`` or ``polars.DataFrame``.

    Args:
        items: messages, pages, or ``(conversation_id, message_or_page)`` pairs as
            :meth:`Client.fan_out` and :meth:`Client.fan_out_pages` yield, in any mix.

    Returns:
        One dict per message with the keys of :data:`COLUMNS`, in that order (an empty
        list for no messages). ``date_added`` stays a ``datetime``; lists are copies.

    Raises:
        TypeError: an item is an error (``fan_out(..., return_exceptions=True)``: keep
            the errors apart first) or not a message at all.
    """
    rows: list[Record] = []
    for item in items:
        conversation_id: str | None = None
        if isinstance(item, tuple):
            conversation_id, item = item
        if isinstance(item, Message):
            rows.append(_row(item, conversation_id))
        elif isinstance(item, MessagesPage):
            rows.extend(_row(message, conversation_id) for message in item.messages)
        elif isinstance(item, GHLError):
            raise TypeError(
                f"conversation {conversation_id!r} failed ({type(item).__name__}: {item}); "
                "keep the errors apart before to_records"
            )
        else:
            raise TypeError(f"to_records takes messages or pages, not {type(item).__name__}")
    return rows


def _in_utc(when: datetime) -> datetime | None:
    """``when`` in UTC, as COLUMNS promises (one zone: pandas makes it datetime64)."""
    if when.tzinfo is None or when.utcoffset() is None:
        return when.replace(tzinfo=timezone.utc)  # the wire's dates always carry a zone
    try:
        return when.astimezone(timezone.utc)
    except OverflowError:  # year 1 at +01:00: no instant UTC can name
        return None


def _row(message: Message, conversation_id: str | None) -> Record:
    meta = message.meta
    email = meta.email if meta is not None else None
    unparsed = message.unparsed
    date_added: datetime | None = message.date_added
    if date_added is not None and date_added.tzinfo is not timezone.utc:
        date_added = _in_utc(date_added)
    return {
        "id": message.id,
        "conversation_id": conversation_id or message.conversation_id,
        "location_id": message.location_id,
        "contact_id": message.contact_id,
        "date_added": date_added,
        "direction": message.direction,
        "status": message.status,
        "message_type": message.message_type,
        "type": message.type,
        "body": message.body,
        "content_type": message.content_type,
        "attachments": list(message.attachments),
        "source": message.source,
        "user_id": message.user_id,
        "alt_id": message.alt_id,
        "conversation_provider_id": message.conversation_provider_id,
        "chat_widget_id": message.chat_widget_id,
        "call_duration": meta.call_duration if meta is not None else None,
        "call_status": meta.call_status if meta is not None else None,
        "email_message_ids": list(email.message_ids) if email is not None else [],
        # JSON text, not a dict: a column of differently shaped dicts trips polars.
        "unparsed": msgspec.json.encode(dict(unparsed)).decode() if unparsed else None,
    }
