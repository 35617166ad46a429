"""The mirror's tables, as every database sink lays them out: columns, types and rows.

A SQL user reads them without our docs: ``messages`` has the columns of
:data:`ghl_async.records.COLUMNS` plus ``date_updated`` and the whole ``meta``; ``emails``
holds email bodies keyed by email id; ``export_state`` is where each location's export
stands, committed with the rows; ``schema_version`` holds :data:`SCHEMA_VERSION`. A sink
that finds another version refuses in one line (:class:`~ghl_async.errors.SinkError`).
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

import msgspec

from ghl_async.models import EmailMessage, Message
from ghl_async.records import COLUMNS, Item, to_records

__all__ = [
    "EMAIL_COLUMNS",
    "MESSAGE_COLUMNS",
    "STATE_COLUMNS",
    "SCHEMA_VERSION",
    "Column",
    "email_row",
    "is_json",
    "message_rows",
]

#: The layout's version; a database of another version is refused, never altered.
SCHEMA_VERSION: Final = 1


class Column(NamedTuple):
    """One column: its name, its SQLite type, its PostgreSQL type, what it holds."""

    name: str
    sqlite: str
    postgres: str
    doc: str


_TYPES: Final[dict[str, tuple[str, str]]] = {
    "id": ("TEXT PRIMARY KEY", "text PRIMARY KEY"),
    "date_added": ("TEXT", "timestamptz"),  # SQLite: ISO 8601 in UTC, sorts as time
    "type": ("REAL", "double precision"),
    "attachments": ("TEXT", "jsonb"),  # SQLite: JSON text
    "call_duration": ("INTEGER", "integer"),
    "email_message_ids": ("TEXT", "jsonb"),
    "unparsed": ("TEXT", "jsonb"),
}

#: ``messages``: a row per message id, at its latest version.
MESSAGE_COLUMNS: Final[tuple[Column, ...]] = (
    *(Column(name, *_TYPES.get(name, ("TEXT", "text")), doc) for name, doc in COLUMNS.items()),
    Column("date_updated", "TEXT", "timestamptz", "last change on the server, else None"),
    Column("meta", "TEXT", "jsonb", "the message's whole meta object as sent (JSON)"),
)

#: ``emails``: a row per email id (``GET /conversations/messages/email/{id}``).
EMAIL_COLUMNS: Final[tuple[Column, ...]] = (
    Column("id", "TEXT PRIMARY KEY", "text PRIMARY KEY", "the email id"),
    Column("message_id", "TEXT", "text", "the email message (row of messages) it belongs to"),
    Column("thread_id", "TEXT", "text", "the thread"),
    Column("conversation_id", "TEXT", "text", "the conversation"),
    Column("date_added", "TEXT", "timestamptz", "when it was sent"),
    Column("subject", "TEXT", "text", "the subject"),
    Column("body", "TEXT", "text", "the body (HTML or text as sent)"),
    Column("from_", "TEXT", "text", "the sender"),
    Column("to", "TEXT", "jsonb", "recipients (JSON list)"),
    Column("cc", "TEXT", "jsonb", "copies (JSON list)"),
    Column("direction", "TEXT", "text", '"inbound", "outbound", or as sent'),
    Column("status", "TEXT", "text", "delivery status as sent"),
    Column("content_type", "TEXT", "text", 'e.g. "text/html"'),
)

#: ``export_state``: a row per location, rewritten by every commit, one readable column
#: per field of :class:`~ghl_async.export.sink.ExportState` (every sink alike). A sink's
#: ``load`` reads the state back from these columns: a SQL user may edit them
#: (``cursor = NULL`` and ``done = false`` run the export again from its first page).
STATE_COLUMNS: Final[tuple[Column, ...]] = (
    Column("location_id", "TEXT PRIMARY KEY", "text PRIMARY KEY", "the location"),
    Column("query", "TEXT", "text NOT NULL", "what the export asked (dates, channel, ...)"),
    Column("cursor", "TEXT", "text", "the export route's resume token (NULL: no page yet)"),
    Column("done", "INTEGER", "boolean NOT NULL", "true once every page was written"),
    Column("high_water", "TEXT", "timestamptz", "latest dateUpdated (else dateAdded) written"),
    Column("fallback", "INTEGER", "boolean NOT NULL", "true: paged conversation by conversation"),
    Column(
        "conversations",
        "TEXT",
        "jsonb NOT NULL",
        "fallback runs: conversation id to its last written message id (null: finished)",
    ),
    Column("messages", "INTEGER", "bigint NOT NULL", "messages written so far"),
    Column("updated_at", "TEXT", "timestamptz NOT NULL", "when this row was committed"),
)

_JSON_COLUMNS: Final = frozenset({"attachments", "email_message_ids", "meta", "to", "cc"})


def message_rows(
    messages: list[Message], conversation_ids: list[str | None] | None = None
) -> list[dict[str, Any]]:
    """One dict per message with the keys of :data:`MESSAGE_COLUMNS`, in order.

    Dates stay timezone-aware ``datetime`` objects (a sink stores them its own way);
    lists and ``meta`` are Python values (a sink encodes them as JSON); ``unparsed`` is
    JSON text already, as in :func:`~ghl_async.records.to_records`.
    """
    ids = conversation_ids or [None] * len(messages)
    items: list[Item] = [m if c is None else (c, m) for c, m in zip(ids, messages, strict=True)]
    rows = to_records(items)
    for row, message in zip(rows, messages, strict=True):
        row["date_updated"] = message.date_updated
        row["meta"] = msgspec.to_builtins(message.meta) if message.meta is not None else None
    return rows


def email_row(email: EmailMessage, message_id: str | None) -> dict[str, Any]:
    """The ``emails`` row of one email, keyed as :data:`EMAIL_COLUMNS`."""
    return {
        "id": email.id,
        "message_id": message_id,
        "thread_id": email.thread_id,
        "conversation_id": email.conversation_id,
        "date_added": email.date_added,
        "subject": email.subject,
        "body": email.body,
        "from_": email.from_,
        "to": list(email.to),
        "cc": list(email.cc),
        "direction": email.direction,
        "status": email.status,
        "content_type": email.content_type,
    }


def is_json(column: str) -> bool:
    """Whether a sink stores ``column`` as JSON (a list or an object)."""
    return column in _JSON_COLUMNS
