"""The mirror's tables, as every database sink lays them out: columns, types and rows.

A SQL user reads them without our docs: ``messages`` has the columns of
:data:`ghl_async.records.COLUMNS` plus ``date_updated`` and the whole ``meta``; ``emails``
holds email bodies keyed by email id; ``export_state`` is where each location's export
stands, committed with the rows; ``email_failures`` the email bodies a run could not
fetch (retried by the next run); ``schema_version`` holds :data:`SCHEMA_VERSION`. A sink
that finds another version refuses in one line (:class:`~ghl_async.errors.SinkError`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NamedTuple

import msgspec

from ghl_async._http.emails import EmailFailure
from ghl_async.export.sink import ExportState
from ghl_async.models import EmailMessage, Message
from ghl_async.records import COLUMNS, Item, to_records

__all__ = [
    "EMAIL_COLUMNS",
    "EMAIL_FAILURE_COLUMNS",
    "MESSAGE_COLUMNS",
    "STATE_COLUMNS",
    "SCHEMA_VERSION",
    "Column",
    "email_failure_row",
    "email_row",
    "is_json",
    "message_rows",
    "state_of",
    "state_values",
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

#: ``email_failures``: an email body that could not be fetched, a row per email id, until
#: a later run fetches it (its row then goes, in the commit that writes the body).
EMAIL_FAILURE_COLUMNS: Final[tuple[Column, ...]] = (
    Column("email_id", "TEXT PRIMARY KEY", "text PRIMARY KEY", "the email id"),
    Column("message_id", "TEXT", "text", "the email message (row of messages) it belongs to"),
    Column("reason", "TEXT", "text", "what went wrong, in one line"),
    Column("status", "INTEGER", "integer", "the HTTP status, if a reply came"),
    Column("retry", "INTEGER", "boolean NOT NULL", "false: asking again cannot help"),
    Column("failed_at", "TEXT", "timestamptz NOT NULL", "when it last failed"),
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
    Column(
        "marks",
        "TEXT",
        "jsonb NOT NULL",
        "sync runs: each pass's high-water mark (never past the run's start)",
    ),
    Column("pass_start", "TEXT", "timestamptz", "sync runs: the startDate of the pass under way"),
    Column("run_started", "TEXT", "timestamptz", "sync runs: when the run under way started"),
    Column(
        "recent",
        "TEXT",
        "jsonb NOT NULL",
        "message id to [date, digest] of versions a pass may read again, per pass",
    ),
    Column(
        "retry_emails",
        "TEXT",
        "jsonb NOT NULL",
        "message id to the email ids whose bodies the next run fetches again",
    ),
    Column("position", "TEXT", "timestamptz", "the oldest dateAdded committed in this pass"),
    Column("pass_until", "TEXT", "timestamptz", "the endDate of a pass asked again"),
    Column("updated_at", "TEXT", "timestamptz NOT NULL", "when this row was committed"),
)

#: ``export_state`` columns holding JSON; the others are text, dates, booleans, numbers.
STATE_JSON: Final = frozenset({"conversations", "marks", "recent", "retry_emails"})
#: ``export_state`` columns holding a date.
STATE_DATES: Final = frozenset(
    {"high_water", "pass_start", "run_started", "position", "pass_until"}
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


def email_failure_row(message_id: str, failure: EmailFailure) -> dict[str, Any]:
    """The ``email_failures`` row of one failure, keyed as :data:`EMAIL_FAILURE_COLUMNS`
    (``failed_at`` is the commit's to set).
    """
    return {
        "email_id": failure.email_id,
        "message_id": message_id,
        "reason": failure.reason,
        "status": failure.status,
        "retry": failure.retry,
    }


def is_json(column: str) -> bool:
    """Whether a sink stores ``column`` as JSON (a list or an object)."""
    return column in _JSON_COLUMNS


_STATE_FIELDS: Final = {f.name: f.encode_name for f in msgspec.structs.fields(ExportState)}


def state_values(state: ExportState) -> dict[str, Any]:
    """The ``export_state`` row of ``state``, keyed by :data:`STATE_COLUMNS` (less
    ``updated_at``), in order: dates as ``datetime``, JSON columns as Python values
    (dates inside them as ISO text), booleans as ``bool``.
    """
    values = msgspec.to_builtins(state)
    return {
        column.name: (
            values[_STATE_FIELDS[column.name]]
            if column.name in STATE_JSON
            else getattr(state, column.name)
        )
        for column in STATE_COLUMNS[:-1]
    }


def state_of(values: Mapping[str, Any]) -> ExportState:
    """The :class:`ExportState` an ``export_state`` row holds, however a sink stored it:
    JSON columns as text or Python values, dates as ``datetime`` or ISO text, booleans
    as ``bool`` or 0/1.

    Raises:
        msgspec.ValidationError, msgspec.DecodeError: a column holds what the state
            cannot (a row edited by hand to a wrong type); the sink says which row.
    """
    fields: dict[str, Any] = {}
    for column in STATE_COLUMNS[:-1]:
        value = values[column.name]
        if column.name in STATE_JSON and isinstance(value, (str, bytes)):
            value = msgspec.json.decode(value)
        if value is None and column.name in STATE_JSON:
            continue  # the field's default
        if column.name in ("done", "fallback") and value in (0, 1):
            value = bool(value)
        fields[_STATE_FIELDS[column.name]] = value
    return msgspec.convert(fields, type=ExportState)
