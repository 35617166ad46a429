"""The embedded default sink: a location mirror in one SQLite file, state committed with rows.

::

    from ghl_async.export import export_location
    from ghl_async.export.sqlite import SQLiteSink

    async with SQLiteSink("messages.db") as sink:
        await export_location(client, location_id, sink)

The file holds the tables of :mod:`ghl_async.export.schema` (``messages``, ``emails``,
``export_state``, ``schema_version``), created on first open and readable with nothing
but ``sqlite3``: dates are ISO 8601 text in UTC with a fixed width
(``2025-06-01T12:00:00.000000Z``), so they sort as time and SQLite's date functions
read them; lists and ``meta`` are JSON text (``json_extract`` reads them).

Every :meth:`SQLiteSink.commit` is one ``BEGIN IMMEDIATE ... COMMIT``: the batch's
messages (upserted by id, an older ``date_updated`` never replacing a newer one), its
emails and the location's ``export_state`` row land together or not at all. The
database runs in WAL mode with ``synchronous=FULL``; see :class:`SQLiteSink` for why.
"""

from __future__ import annotations

import math
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from operator import itemgetter
from types import TracebackType
from typing import Any, Final, Literal, TypeVar

import anyio
import anyio.to_thread
import msgspec

from ghl_async import errors
from ghl_async.export.schema import (
    EMAIL_COLUMNS,
    EMAIL_FAILURE_COLUMNS,
    MESSAGE_COLUMNS,
    SCHEMA_VERSION,
    STATE_COLUMNS,
    STATE_DATES,
    STATE_JSON,
    Column,
    email_failure_row,
    email_row,
    is_json,
    message_rows,
    state_of,
    state_values,
)
from ghl_async.export.sink import Batch, ExportState
from ghl_async.models import Message

__all__ = ["SQLiteSink", "iso_utc"]

_T = TypeVar("_T")

_TABLES: Final[dict[str, tuple[Column, ...]]] = {
    "messages": MESSAGE_COLUMNS,
    "emails": EMAIL_COLUMNS,
    "email_failures": EMAIL_FAILURE_COLUMNS,
    "export_state": STATE_COLUMNS,
}
_SYNCHRONOUS: Final = ("FULL", "NORMAL")
_INT64: Final = 2**63 - 1
_CACHE_KIB: Final = -16_384  # negative: KiB, so 16 MiB whatever the page size
_CHECKPOINT_PAGES: Final = 10_000
_DECODE: Final = msgspec.json.Decoder().decode
# UPSERT (ON CONFLICT ... DO UPDATE) arrived in SQLite 3.24.0.
_MIN_SQLITE: Final = (3, 24, 0)


def _quote(name: str) -> str:
    # "to", "from_", "type": quote every identifier, some are keywords.
    return '"' + name.replace('"', '""') + '"'


def _create(table: str, columns: Sequence[Column]) -> str:
    body = ", ".join(f"{_quote(c.name)} {c.sqlite}" for c in columns)
    return f"CREATE TABLE {_quote(table)} ({body})"


def _upsert(table: str, columns: Sequence[Column], where: str = "") -> str:
    names = [_quote(c.name) for c in columns]
    key = names[0]
    sets = ", ".join(f"{n} = excluded.{n}" for n in names[1:])
    marks = ", ".join("?" * len(names))
    return (
        f"INSERT INTO {_quote(table)} ({', '.join(names)}) VALUES ({marks}) "
        f"ON CONFLICT({key}) DO UPDATE SET {sets}{where}"
    )


# Built once: the statements, and which positions of a row need converting.
_MESSAGES_SQL: Final = _upsert(
    "messages",
    MESSAGE_COLUMNS,
    # Newer or equal wins; an older version never replaces a newer one. A version
    # without date_updated cannot be ordered, so it is taken as the latest (the export
    # reads in order): NULL on either side lets the incoming row win.
    " WHERE excluded.date_updated IS NULL OR messages.date_updated IS NULL"
    " OR excluded.date_updated >= messages.date_updated",
)
_EMAILS_SQL: Final = _upsert("emails", EMAIL_COLUMNS)
_FAILURES_SQL: Final = _upsert("email_failures", EMAIL_FAILURE_COLUMNS)
_FETCHED_SQL: Final = "DELETE FROM email_failures WHERE email_id = ?"
_STATE_SQL: Final = _upsert("export_state", STATE_COLUMNS)
_STATE_NAMES: Final = tuple(c.name for c in STATE_COLUMNS[:-1])
_LOAD_SQL: Final = (
    f"SELECT {', '.join(_quote(c.name) for c in STATE_COLUMNS[:-1])}"
    " FROM export_state WHERE location_id = ?"
)
_MESSAGE_FIELDS: Final = itemgetter(*(c.name for c in MESSAGE_COLUMNS))
_EMAIL_FIELDS: Final = itemgetter(*(c.name for c in EMAIL_COLUMNS))


def _positions(columns: Sequence[Column], test: Callable[[Column], bool]) -> tuple[int, ...]:
    return tuple(i for i, c in enumerate(columns) if test(c))


_MESSAGE_DATES: Final = _positions(MESSAGE_COLUMNS, lambda c: c.postgres == "timestamptz")
_MESSAGE_JSON: Final = _positions(MESSAGE_COLUMNS, lambda c: is_json(c.name))
_MESSAGE_NUMBERS: Final = _positions(MESSAGE_COLUMNS, lambda c: c.sqlite in ("INTEGER", "REAL"))
_EMAIL_DATES: Final = _positions(EMAIL_COLUMNS, lambda c: c.postgres == "timestamptz")
_EMAIL_JSON: Final = _positions(EMAIL_COLUMNS, lambda c: is_json(c.name))


def iso_utc(when: datetime) -> str:
    """``when`` as the sink stores it: ISO 8601 in UTC, microseconds, ``Z``, fixed width.

    ``'2025-06-01T12:00:00.000000Z'``: the text sorts as the time it names and SQLite's
    date functions read it. A naive ``datetime`` is taken as UTC (as the models do).
    """
    if when.tzinfo is not None and when.tzinfo is not timezone.utc:
        when = when.astimezone(timezone.utc)
    # isoformat pads the year to 4 digits; [:26] drops any "+00:00".
    return when.isoformat(timespec="microseconds")[:26] + "Z"


def _bindable(value: Any) -> Any:
    # A number past SQLite's 64-bit integers would fail the whole batch; the column
    # keeps it as REAL instead (``meta`` and ``unparsed`` keep the exact value).
    if type(value) is int and not -_INT64 - 1 <= value <= _INT64:
        return float(value)
    return value


# The layout _fast_row writes; when schema.py's columns differ, rows go the generic way.
_FAST_LAYOUT: Final = (
    "id", "conversation_id", "location_id", "contact_id", "date_added", "direction",
    "status", "message_type", "type", "body", "content_type", "attachments", "source",
    "user_id", "alt_id", "conversation_provider_id", "chat_widget_id", "call_duration",
    "call_status", "email_message_ids", "unparsed", "date_updated", "meta",
)  # fmt: skip
_FAST_ROWS: Final = tuple(c.name for c in MESSAGE_COLUMNS) == _FAST_LAYOUT and all(
    is_json(name) == (name in ("attachments", "email_message_ids", "meta"))
    and (name in ("date_added", "date_updated")) == (MESSAGE_COLUMNS[i].postgres == "timestamptz")
    for i, name in enumerate(_FAST_LAYOUT)
)


def _utc_texts(whens: list[datetime | None], encode: Callable[[Any], bytes]) -> list[Any]:
    """:func:`iso_utc` of each date (``None`` stays ``None``), a whole batch at once.

    msgspec writes a list of dates in one call; a date in ``timezone.utc`` comes out as
    ``...SS.ffffffZ`` (27 characters) or, with no microseconds, ``...SSZ`` (20). Any
    other (another offset, a naive date) goes through :func:`iso_utc`.
    """
    texts: list[Any] = _DECODE(encode(whens))
    utc = timezone.utc
    for i, when in enumerate(whens):
        if when is not None and (when.tzinfo is not utc or len(texts[i]) != 27):
            text = texts[i]
            texts[i] = (
                text[:19] + ".000000Z" if when.tzinfo is utc and len(text) == 20 else iso_utc(when)
            )
    return texts


def _fast_row(
    message: Message,
    conversation_id: str | None,
    added: str | None,
    updated: str | None,
    encode: Callable[[Any], bytes],
) -> tuple[Any, ...]:
    """The stored row of ``message``, straight from its fields (the hot path).

    The same values as :func:`~ghl_async.export.schema.message_rows` converted for
    SQLite (a test holds them equal), without the dict in between: about three times
    faster, and the mirror's floor is 50,000 messages a second. ``added`` and
    ``updated`` are its dates already as text (:func:`_utc_texts`).
    """
    meta = message.meta
    duration: int | float | None = None
    status: str | None = None
    meta_json: str | None = None
    email_ids = "[]"
    if meta is not None:
        duration = _bindable(meta.call_duration)
        status = meta.call_status
        email = meta.email
        if email is not None and email.message_ids:
            email_ids = encode(email.message_ids).decode()
        meta_json = encode(meta).decode()
    kind = message.type
    if type(kind) is int and not -_INT64 - 1 <= kind <= _INT64:
        kind = float(kind)
    unparsed = message.unparsed
    return (
        message.id,
        conversation_id or message.conversation_id,
        message.location_id,
        message.contact_id,
        added,
        message.direction,
        message.status,
        message.message_type,
        kind,
        message.body,
        message.content_type,
        encode(message.attachments).decode() if message.attachments else "[]",
        message.source,
        message.user_id,
        message.alt_id,
        message.conversation_provider_id,
        message.chat_widget_id,
        duration,
        status,
        email_ids,
        encode(dict(unparsed)).decode() if unparsed else None,
        updated,
        meta_json,
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


class SQLiteSink:
    """A :class:`~ghl_async.export.sink.Sink` keeping a location mirror in a SQLite file.

    ``async with SQLiteSink(path) as sink:`` opens (or creates) the file;
    :meth:`load` and :meth:`commit` follow the :class:`~ghl_async.export.sink.Sink`
    contract. Several locations can share one file (a row of ``export_state`` each),
    and several processes can write it in turn: each commit takes SQLite's write lock,
    waiting up to ``busy_timeout`` seconds for another writer to finish.

    Durability: the database runs in WAL mode, readers never blocking the writer.
    ``synchronous="FULL"`` (the default) syncs the WAL at every commit, so a commit that
    returned survives ``kill -9`` *and* a power cut. ``"NORMAL"`` syncs only at
    checkpoints: still safe against a killed process, and state and rows still commit
    together, but a power cut may roll the file back by a few commits (the next run then
    fetches those pages again). FULL costs one fsync per batch, small beside a page's
    request (see ``python -m benchmarks.sink_sqlite``), so it is the default.

    Args:
        path: the database file (created if missing; its directory must exist). Not
            touched until ``async with``.
        busy_timeout: seconds to wait for another writer before a commit fails.
        synchronous: ``"FULL"`` (durable at every commit) or ``"NORMAL"``.

    Raises:
        TypeError: ``path`` is not a ``str`` or ``os.PathLike[str]``, or another
            argument has the wrong type.
        ValueError: an empty path, ``":memory:"``, a NUL byte in it, a negative or
            non-finite ``busy_timeout``, an unknown ``synchronous``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
    ) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
        name = os.fspath(path)
        if not isinstance(name, str):
            raise TypeError(f"path must name a file as str, not {type(name).__name__}")
        if not name or name == ":memory:" or "\x00" in name:
            raise ValueError(f"path must name a database file, not {name!r}")
        if isinstance(busy_timeout, bool) or not isinstance(busy_timeout, (int, float)):
            raise TypeError(f"busy_timeout must be a number, not {type(busy_timeout).__name__}")
        if not math.isfinite(busy_timeout) or busy_timeout < 0:
            raise ValueError(f"busy_timeout must be finite and >= 0, not {busy_timeout!r}")
        if synchronous not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', not {synchronous!r}")
        self._path = name
        self._busy_timeout = float(busy_timeout)
        self._synchronous = synchronous
        self._connection: sqlite3.Connection | None = None
        self._entered = False
        self._broken: str | None = None
        # One encoder for every JSON column and state.
        self._encoder = msgspec.json.Encoder()
        self._lock: anyio.Lock | None = None

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    def __repr__(self) -> str:
        return f"SQLiteSink({self._path!r})"

    # -- the thread bridge ----------------------------------------------------------

    # sqlite3 blocks, so every call runs in a worker thread (anyio.to_thread.run_sync),
    # never on the event loop. The sink owns ONE connection: SQLite has one writer per
    # file anyway, one connection keeps the transaction and the prepared-statement cache
    # in one place, and the lock below hands it to one thread at a time (hence
    # check_same_thread=False). A thread call is not abandoned on cancellation: a
    # cancelled commit still finishes (committed or rolled back) before the cancellation
    # is delivered, so the connection never holds a half-done transaction. No aiosqlite
    # dependency is needed for that.
    async def _run(self, func: Callable[..., _T], *args: Any) -> _T:
        if self._lock is None:
            raise RuntimeError("use the sink as 'async with SQLiteSink(path) as sink:'")
        async with self._lock:
            return await anyio.to_thread.run_sync(func, *args)

    def _error(self, doing: str, exc: BaseException) -> errors.SinkError:
        detail = str(exc) or type(exc).__name__
        return errors.SinkError(_one_line(f"SQLite {self._path}: {doing}: {detail}"))

    # -- opening --------------------------------------------------------------------

    async def __aenter__(self) -> SQLiteSink:
        """Open the file, check or create the tables; :class:`SinkError` if it cannot."""
        if self._entered:
            raise RuntimeError("a SQLiteSink can be entered once")
        self._entered = True
        self._lock = anyio.Lock()
        try:
            await self._run(self._open)
        except BaseException:
            # Cancelled while the thread still opened it: close what it opened.
            await self._close()
            self._lock = None
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the connection (what was committed stays; nothing else was written)."""
        await self._close()
        self._lock = None

    async def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            # Shielded: a cancelled task still closes the file (the last connection to
            # close checkpoints the WAL into the database and removes it).
            with anyio.CancelScope(shield=True):
                await self._run(connection.close)

    def _open(self) -> None:
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise errors.SinkError(
                f"SQLite {sqlite3.sqlite_version} is too old for the mirror (needs 3.24.0+)"
            )
        try:
            connection = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout,
                isolation_level=None,  # autocommit: transactions are ours (BEGIN IMMEDIATE)
                check_same_thread=False,
                cached_statements=16,
            )
        except sqlite3.Error as exc:
            raise self._error("cannot open", exc) from exc
        try:
            self._prepare(connection)
        except BaseException:
            connection.close()
            raise
        self._connection = connection

    def _prepare(self, connection: sqlite3.Connection) -> None:
        try:
            connection.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            found = self._version(connection)  # before any change: a foreign file stays as is
            mode = self._switch_to_wal(connection)
            if str(mode).lower() != "wal":
                raise errors.SinkError(
                    f"SQLite {self._path}: cannot use WAL mode (journal_mode is {mode})"
                )
            connection.execute(f"PRAGMA synchronous = {self._synchronous}")
            # Upserts by a random id touch index pages all over the file; measured at
            # 250,000 rows (benchmarks/sink_sqlite.py), a 16 MiB page cache and a
            # checkpoint every ~40 MB of WAL (pages rewritten by many commits are copied
            # once) write about 1.4x faster than SQLite's 2 MiB and ~4 MB. Both are
            # per connection: the file is not changed by them.
            connection.execute(f"PRAGMA cache_size = {_CACHE_KIB}")
            connection.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_PAGES}")
            if found is None:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    if self._version(connection) is None:  # another process may have won
                        for table, columns in _TABLES.items():
                            connection.execute(_create(table, columns))
                        connection.execute(
                            "CREATE TABLE schema_version (version INTEGER NOT NULL)"
                        )
                        connection.execute(
                            "INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,)
                        )
                    connection.execute("COMMIT")
                except BaseException:
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                    raise
            self._check_columns(connection)
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc):
                raise errors.SinkError(
                    _one_line(f"{self._path} is not a SQLite database ({exc})")
                ) from exc
            raise self._error("cannot open", exc) from exc
        except sqlite3.Error as exc:
            raise self._error("cannot open", exc) from exc

    def _switch_to_wal(self, connection: sqlite3.Connection) -> object:
        """Put the file in WAL mode; the journal mode it is in after.

        Connections switching a new file at once (workers opening one mirror) can be
        refused at once, "database is locked": SQLite does not wait on its busy handler
        there, since two waiting for each other would never finish. So the switch is
        tried again, a little later each time, until ``busy_timeout`` has passed.
        """
        deadline = time.monotonic() + self._busy_timeout
        pause = 0.001
        while True:
            try:
                return connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(2 * pause, 0.05)

    def _version(self, connection: sqlite3.Connection) -> int | None:
        """The file's schema version, ``None`` for a file without the mirror's tables."""
        tables = {
            row[0]
            for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if "schema_version" not in tables:
            ours = sorted(tables & _TABLES.keys())
            if ours:
                raise errors.SinkError(
                    f"{self._path} has table(s) {', '.join(ours)} but no schema_version:"
                    " not a ghl-async mirror (left unchanged)"
                )
            return None
        rows = connection.execute("SELECT version FROM schema_version").fetchall()
        if len(rows) != 1:
            raise errors.SinkError(
                f"{self._path} has {len(rows)} schema_version rows, expected 1 (left unchanged)"
            )
        found = rows[0][0]
        if found != SCHEMA_VERSION:
            raise errors.SinkError(
                f"{self._path} holds mirror schema version {found!r}, this ghl-async writes"
                f" version {SCHEMA_VERSION}: use another file (this one was left unchanged)"
            )
        return SCHEMA_VERSION

    def _check_columns(self, connection: sqlite3.Connection) -> None:
        for table, columns in _TABLES.items():
            have = [row[1] for row in connection.execute(f"PRAGMA table_info({_quote(table)})")]
            want = [c.name for c in columns]
            if have != want:
                raise errors.SinkError(
                    f"{self._path}: table {table} has columns {have}, expected {want}"
                    f" by schema version {SCHEMA_VERSION} (left unchanged)"
                )

    # -- the contract ---------------------------------------------------------------

    async def load(self, location_id: str) -> ExportState | None:
        """The state last committed for ``location_id`` (``None``: never exported).

        Raises:
            TypeError: ``location_id`` is not a ``str``.
            ghl_async.errors.SinkError: the file could not be read.
        """
        if not isinstance(location_id, str):
            raise TypeError(f"location_id must be a str, not {type(location_id).__name__}")
        row = await self._run(self._load, location_id)
        if row is None:
            return None
        try:
            # convert, not the constructor: a column edited to a wrong type is refused.
            return state_of(dict(zip(_STATE_NAMES, row, strict=True)))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise self._error(f"export_state of {location_id} is unreadable", exc) from exc

    def _load(self, location_id: str) -> tuple[Any, ...] | None:
        connection = self._live()
        try:
            row: tuple[Any, ...] | None = connection.execute(_LOAD_SQL, (location_id,)).fetchone()
        except sqlite3.Error as exc:
            raise self._error("cannot read export_state", exc) from exc
        return row

    async def commit(self, batch: Batch) -> None:
        """Write ``batch``'s messages, emails and state in one transaction.

        Messages are upserted by id: a version whose ``date_updated`` is older than the
        stored one is skipped; a newer or equal one, or one where either side has no
        ``date_updated``, replaces it. Emails are upserted by email id, the state by
        location.

        Raises:
            TypeError: ``batch`` is not a :class:`~ghl_async.export.sink.Batch`.
            ValueError: ``conversation_ids`` is neither empty nor one per message.
            ghl_async.errors.SinkError: SQLite could not write (a full disk, the lock
                held past ``busy_timeout``, a read-only file, a constraint); the
                transaction was rolled back, nothing of the batch is kept and the
                state committed before stands.
        """
        if not isinstance(batch, Batch):
            raise TypeError(f"commit takes a Batch, not {type(batch).__name__}")
        if batch.conversation_ids and len(batch.conversation_ids) != len(batch.messages):
            raise ValueError(
                f"batch has {len(batch.conversation_ids)} conversation ids"
                f" for {len(batch.messages)} messages"
            )
        await self._run(self._commit, batch)

    # -- commit, in the worker thread ----------------------------------------------

    def _live(self) -> sqlite3.Connection:
        if self._broken is not None:
            raise errors.SinkError(self._broken)
        if self._connection is None:
            raise RuntimeError("the sink is closed: use 'async with SQLiteSink(path) as sink:'")
        return self._connection

    def _json(self, value: Any) -> str | None:
        return None if value is None else self._encoder.encode(value).decode()

    def _message_rows(self, batch: Batch) -> list[tuple[Any, ...]]:
        ids = batch.conversation_ids or [None] * len(batch.messages)
        if not _FAST_ROWS:
            return self._generic_rows(batch)
        messages, encode = batch.messages, self._encoder.encode
        whens: list[datetime | None] = [m.date_added for m in messages]
        whens += [m.date_updated for m in messages]
        texts = _utc_texts(whens, encode)
        count = len(messages)
        return [
            _fast_row(m, c, texts[i], texts[count + i], encode)
            for i, (m, c) in enumerate(zip(messages, ids, strict=True))
        ]

    def _generic_rows(self, batch: Batch) -> list[tuple[Any, ...]]:
        """The rows from :func:`~ghl_async.export.schema.message_rows`, converted."""
        encode, rows = self._encoder.encode, []
        for record in message_rows(batch.messages, batch.conversation_ids or None):
            row = list(_MESSAGE_FIELDS(record))
            for i in _MESSAGE_DATES:
                if row[i] is not None:
                    row[i] = iso_utc(row[i])
            for i in _MESSAGE_JSON:
                if row[i] is not None:
                    row[i] = encode(row[i]).decode()
            for i in _MESSAGE_NUMBERS:
                row[i] = _bindable(row[i])
            rows.append(tuple(row))
        return rows

    def _email_rows(self, batch: Batch) -> list[list[Any]]:
        json = self._json
        rows = []
        for message_id, email in batch.emails:
            row = list(_EMAIL_FIELDS(email_row(email, message_id)))
            for i in _EMAIL_DATES:
                if row[i] is not None:
                    row[i] = iso_utc(row[i])
            for i in _EMAIL_JSON:
                row[i] = json(row[i])
            rows.append(row)
        return rows

    @staticmethod
    def _failure_rows(batch: Batch) -> list[tuple[Any, ...]]:
        now = iso_utc(datetime.now(timezone.utc))
        return [
            (*email_failure_row(message_id, failure).values(), now)
            for message_id, failure in batch.email_failures
        ]

    def _state_row(self, state: ExportState) -> tuple[Any, ...]:
        values = state_values(state)
        for name in STATE_JSON:
            values[name] = self._json(values[name])
        for name in STATE_DATES:
            if values[name] is not None:
                values[name] = iso_utc(values[name])
        values["done"], values["fallback"] = int(state.done), int(state.fallback)
        return (*values.values(), iso_utc(datetime.now(timezone.utc)))

    def _commit(self, batch: Batch) -> None:
        connection = self._live()
        # Rows are built before the transaction: it holds the write lock only to write.
        messages = self._message_rows(batch)
        emails = self._email_rows(batch)
        failures = self._failure_rows(batch)
        state = self._state_row(batch.state)
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                if messages:
                    connection.executemany(_MESSAGES_SQL, messages)
                if emails:
                    connection.executemany(_EMAILS_SQL, emails)
                    connection.executemany(_FETCHED_SQL, [(row[0],) for row in emails])
                if failures:
                    connection.executemany(_FAILURES_SQL, failures)
                connection.execute(_STATE_SQL, state)
                connection.execute("COMMIT")
            except BaseException:
                self._rollback(connection)
                raise
        except (sqlite3.Error, OverflowError, UnicodeEncodeError) as exc:
            # OverflowError, UnicodeEncodeError: a value sqlite3 cannot bind.
            raise self._error(
                f"batch of {len(messages)} messages not written, state unchanged", exc
            ) from exc

    def _rollback(self, connection: sqlite3.Connection) -> None:
        if not connection.in_transaction:  # SQLite already rolled back (full disk, I/O)
            return
        try:
            connection.execute("ROLLBACK")
        except sqlite3.Error as exc:
            # The connection cannot say what it holds: close it (closing rolls back) and
            # refuse further use rather than commit on top of an unknown transaction.
            self._broken = str(self._error("rollback failed, sink closed", exc))
            self._connection = None
            connection.close()
