"""The shared sink: a location mirror in PostgreSQL, written by many workers at once.

::

    from ghl_async.export import export_location
    from ghl_async.export.postgres import PostgresSink

    async with PostgresSink("postgresql://export@db.internal/mirror") as sink:
        await export_location(client, location_id, sink)

Needs the ``postgres`` extra (asyncpg). The database holds the tables of
:mod:`ghl_async.export.schema` with PostgreSQL's types (``timestamptz``, ``jsonb``,
``double precision``): ``messages``, ``emails``, ``export_state`` (a row per location,
one readable column per field of :class:`~ghl_async.export.sink.ExportState`) and
``schema_version``. The first sink to open an empty database creates them, under an
advisory lock so that workers opening at once do not race; a database of another schema
version is refused (:class:`~ghl_async.errors.SinkError`) and never altered.

Every :meth:`PostgresSink.commit` is one transaction: the batch's messages are copied
(``COPY``, binary) into a session's temporary table and merged into ``messages`` by one
``INSERT ... SELECT ... ON CONFLICT (id) DO UPDATE`` (an older ``date_updated`` never
replacing a newer one), then its emails and the location's ``export_state`` row are
upserted. Rows are merged in id order, so workers committing overlapping messages at
the same time wait for each other instead of deadlocking.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from operator import itemgetter
from types import TracebackType
from typing import Any, Final
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

import anyio
import msgspec

try:
    import asyncpg
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "ghl_async.export.postgres needs asyncpg: pip install 'ghl-async[postgres]'"
    ) from exc

from ghl_async import errors
from ghl_async.export.schema import (
    EMAIL_COLUMNS,
    EMAIL_FAILURE_COLUMNS,
    MESSAGE_COLUMNS,
    SCHEMA_VERSION,
    STATE_COLUMNS,
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

__all__ = ["PostgresSink"]

logger = logging.getLogger("ghl_async")

_TABLES: Final[dict[str, tuple[Column, ...]]] = {
    "messages": MESSAGE_COLUMNS,
    "emails": EMAIL_COLUMNS,
    "email_failures": EMAIL_FAILURE_COLUMNS,
    "export_state": STATE_COLUMNS,
}
_SCHEMES: Final = ("postgresql", "postgres")
# pg_advisory_xact_lock's key for creating the tables: "ghl_asyn" in ASCII.
_SCHEMA_LOCK: Final = 0x67686C5F6173796E
_STAGE: Final = "ghl_async_messages_stage"
_INT32: Final = 2**31 - 1
# What asyncpg and the socket under it raise; each becomes a SinkError.
_FAILURES: Final = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
    asyncio.TimeoutError,  # not TimeoutError before Python 3.11
)


def _quote(name: str) -> str:
    # "to", "from_", "type", "cursor": quote every identifier, some are keywords.
    return '"' + name.replace('"', '""') + '"'


def _names(columns: Sequence[Column]) -> str:
    return ", ".join(_quote(c.name) for c in columns)


def _create(table: str, columns: Sequence[Column]) -> str:
    body = ", ".join(f"{_quote(c.name)} {c.postgres}" for c in columns)
    return f"CREATE TABLE {_quote(table)} ({body})"


def _updates(columns: Sequence[Column]) -> str:
    return ", ".join(f"{_quote(c.name)} = excluded.{_quote(c.name)}" for c in columns[1:])


def _upsert(table: str, columns: Sequence[Column]) -> str:
    marks = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    return (
        f"INSERT INTO {_quote(table)} ({_names(columns)}) VALUES ({marks}) "
        f"ON CONFLICT ({_quote(columns[0].name)}) DO UPDATE SET {_updates(columns)}"
    )


#: Newer or equal wins; an older version never replaces a newer one. A version without
#: ``date_updated`` cannot be ordered, so it is taken as the latest (the export reads in
#: order): NULL on either side lets the incoming row win.
_NEWER: Final = (
    " WHERE excluded.date_updated IS NULL OR messages.date_updated IS NULL"
    " OR excluded.date_updated >= messages.date_updated"
)
# The staging table lives as long as the connection; COMMIT empties it, ROLLBACK too.
_STAGE_SQL: Final = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} "
    "(LIKE messages INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
# Merged in id order (byte order, the same in every database): every worker locks the
# rows it shares with another in the same order, so they queue instead of deadlocking.
_MERGE_SQL: Final = (
    f"INSERT INTO messages ({_names(MESSAGE_COLUMNS)}) "
    f'SELECT {_names(MESSAGE_COLUMNS)} FROM {_STAGE} ORDER BY id COLLATE "C" '
    f"ON CONFLICT (id) DO UPDATE SET {_updates(MESSAGE_COLUMNS)}{_NEWER}"
)
# The one-row-at-a-time form of the merge (executemany; benchmarks.sink_postgres).
_UPSERT_SQL: Final = _upsert("messages", MESSAGE_COLUMNS) + _NEWER
_EMAILS_SQL: Final = _upsert("emails", EMAIL_COLUMNS)
_FAILURES_SQL: Final = _upsert("email_failures", EMAIL_FAILURE_COLUMNS)
_FETCHED_SQL: Final = "DELETE FROM email_failures WHERE email_id = ANY($1::text[])"
_STATE_SQL: Final = _upsert("export_state", STATE_COLUMNS)
_LOAD_SQL: Final = f"SELECT {_names(STATE_COLUMNS[:-1])} FROM export_state WHERE location_id = $1"

_MESSAGE_NAMES: Final = tuple(c.name for c in MESSAGE_COLUMNS)
_MESSAGE_FIELDS: Final = itemgetter(*_MESSAGE_NAMES)
_EMAIL_FIELDS: Final = itemgetter(*(c.name for c in EMAIL_COLUMNS))


def _positions(columns: Sequence[Column], test: Callable[[Column], bool]) -> tuple[int, ...]:
    return tuple(i for i, c in enumerate(columns) if test(c))


_MESSAGE_JSON: Final = _positions(MESSAGE_COLUMNS, lambda c: is_json(c.name))
# ``unparsed`` arrives as JSON text already.
_MESSAGE_JSON_TEXT: Final = _positions(
    MESSAGE_COLUMNS, lambda c: c.postgres == "jsonb" and not is_json(c.name)
)
_MESSAGE_TEXT: Final = _positions(MESSAGE_COLUMNS, lambda c: c.postgres.startswith("text"))
_MESSAGE_INT: Final = _positions(MESSAGE_COLUMNS, lambda c: c.postgres == "integer")
_MESSAGE_DATE_UPDATED: Final = _MESSAGE_NAMES.index("date_updated")
_EMAIL_JSON: Final = _positions(EMAIL_COLUMNS, lambda c: is_json(c.name))
_EMAIL_TEXT: Final = _positions(EMAIL_COLUMNS, lambda c: c.postgres.startswith("text"))
_CONVERSATIONS: Final = msgspec.json.Decoder(dict[str, str | None])


def _no_nul(value: Any) -> Any:
    """``value`` with every NUL character replaced (PostgreSQL's text cannot hold one)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [_no_nul(v) for v in value]
    if isinstance(value, dict):
        return {_no_nul(k): _no_nul(v) for k, v in value.items()}
    return value


def _one_line(text: str) -> str:
    return " ".join(text.split())


class PostgresSink:
    """A :class:`~ghl_async.export.sink.Sink` keeping a location mirror in PostgreSQL.

    ``async with PostgresSink(dsn) as sink:`` connects (one connection per sink, no
    pool) and checks or creates the tables; :meth:`load` and :meth:`commit` follow the
    :class:`~ghl_async.export.sink.Sink` contract. Any number of sinks, in any number of
    processes and machines, can write one database at once: a commit waits for the rows
    another commit holds, and the newest version of a message wins whichever commits
    last.

    Durability is the server's: a commit that returned is in PostgreSQL's WAL (with the
    server's default ``synchronous_commit = on``), so it survives the worker's
    ``kill -9`` and the server's crash alike.

    PostgreSQL's ``text`` and ``jsonb`` cannot hold the NUL character: one in a message
    or an email is stored as U+FFFD. A ``call_duration`` beyond the ``integer`` column
    is stored as NULL (``meta`` keeps the value as sent).

    Args:
        dsn: ``postgresql://user:password@host:port/database?option=value`` (or
            ``postgres://``), as libpq and asyncpg read it. Not used until
            ``async with``. The password never appears in :func:`repr`, an error or a
            log line; asyncpg is given it apart from the DSN.
        timeout: seconds to connect, and for each statement (a commit waiting for rows
            another worker holds counts against it).

    Raises:
        TypeError: ``dsn`` is not a ``str``, or ``timeout`` not a number.
        ValueError: ``dsn`` is not a ``postgresql://`` URL, or ``timeout`` is not
            positive.
    """

    def __init__(self, dsn: str, *, timeout: float = 60.0) -> None:
        if not isinstance(dsn, str):
            raise TypeError(f"dsn must be a str, not {type(dsn).__name__}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number, not {type(timeout).__name__}")
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"timeout must be positive and finite, not {timeout!r}")
        self._connect_dsn, self._password, self._safe = _split_dsn(dsn)
        self._timeout = float(timeout)
        self._connection: asyncpg.Connection | None = None
        self._entered = False
        self._broken: str | None = None
        self._lock: anyio.Lock | None = None
        self._encoder = msgspec.json.Encoder()

    @property
    def dsn(self) -> str:
        """The DSN with its password replaced by ``***`` (safe to print)."""
        return self._safe

    def __repr__(self) -> str:
        return f"PostgresSink({self._safe!r})"

    def _error(self, doing: str, exc: BaseException) -> errors.SinkError:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self._password:
            for secret in {self._password, quote(self._password, safe="")}:
                detail = detail.replace(secret, "***")
        return errors.SinkError(_one_line(f"PostgreSQL {self._safe}: {doing}: {detail}"))

    # -- opening --------------------------------------------------------------------

    async def __aenter__(self) -> PostgresSink:
        """Connect, check or create the tables; :class:`SinkError` if it cannot."""
        if self._entered:
            raise RuntimeError("a PostgresSink can be entered once")
        self._entered = True
        self._lock = anyio.Lock()
        try:
            self._connection = await asyncpg.connect(
                self._connect_dsn,
                password=self._password,
                timeout=self._timeout,
                command_timeout=self._timeout,
                server_settings={"application_name": "ghl_async"},
            )
        except _FAILURES as exc:
            self._lock = None
            raise self._error("cannot connect", exc) from exc
        except BaseException:
            self._lock = None
            raise
        try:
            created = await self._prepare(self._connection)
        except _FAILURES as exc:
            await self._close()
            raise self._error("cannot open the mirror", exc) from exc
        except BaseException:
            await self._close()
            raise
        logger.debug(
            "PostgreSQL %s: mirror schema version %d %s",
            self._safe,
            SCHEMA_VERSION,
            "created" if created else "found",
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the connection (what was committed stays; nothing else was written)."""
        await self._close()

    async def _close(self) -> None:
        connection, self._connection = self._connection, None
        self._lock = None
        if connection is None or connection.is_closed():
            return
        try:
            with anyio.CancelScope(shield=True):
                await connection.close(timeout=min(self._timeout, 10.0))
        except Exception:  # a server gone: nothing to close politely
            connection.terminate()

    async def _prepare(self, connection: asyncpg.Connection) -> bool:
        """Check the tables, creating them in an empty database; whether it created them."""
        async with connection.transaction():
            # Workers opening an empty database at once: one creates, the others wait
            # here and then find the tables (the lock ends with the transaction).
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            found = await connection.fetch(
                "SELECT name FROM unnest($1::text[]) AS name"
                " WHERE to_regclass(quote_ident(name)) IS NOT NULL",
                [*_TABLES, "schema_version"],
            )
            tables = {row["name"] for row in found}
            created = "schema_version" not in tables
            if created:
                if tables:
                    raise errors.SinkError(
                        f"PostgreSQL {self._safe} has table(s) {', '.join(sorted(tables))}"
                        " but no schema_version: not a ghl-async mirror (left unchanged)"
                    )
                for table, columns in _TABLES.items():
                    await connection.execute(_create(table, columns))
                await connection.execute("CREATE TABLE schema_version (version integer NOT NULL)")
                await connection.execute(
                    "INSERT INTO schema_version (version) VALUES ($1)", SCHEMA_VERSION
                )
            else:
                await self._check(connection)
        await connection.execute(_STAGE_SQL)
        return created

    async def _check(self, connection: asyncpg.Connection) -> None:
        versions = [row[0] for row in await connection.fetch("SELECT version FROM schema_version")]
        if versions != [SCHEMA_VERSION]:
            found = versions[0] if len(versions) == 1 else versions
            raise errors.SinkError(
                f"PostgreSQL {self._safe} holds mirror schema version {found!r}, this"
                f" ghl-async writes version {SCHEMA_VERSION}: use another database"
                " (this one was left unchanged)"
            )
        for table, columns in _TABLES.items():
            have = [
                row[0]
                for row in await connection.fetch(
                    "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass($1)"
                    " AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                    _quote(table),
                )
            ]
            want = [c.name for c in columns]
            if have != want:
                raise errors.SinkError(
                    f"PostgreSQL {self._safe}: table {table} has columns {have}, expected"
                    f" {want} by schema version {SCHEMA_VERSION} (left unchanged)"
                )

    # -- the contract ---------------------------------------------------------------

    def _live(self) -> tuple[asyncpg.Connection, anyio.Lock]:
        if self._broken is not None:
            raise errors.SinkError(self._broken)
        if self._connection is None or self._lock is None:
            raise RuntimeError("the sink is closed: use 'async with PostgresSink(dsn) as sink:'")
        return self._connection, self._lock

    async def load(self, location_id: str) -> ExportState | None:
        """The state last committed for ``location_id`` (``None``: never exported).

        Raises:
            TypeError: ``location_id`` is not a ``str``.
            ghl_async.errors.SinkError: the database could not be read.
        """
        if not isinstance(location_id, str):
            raise TypeError(f"location_id must be a str, not {type(location_id).__name__}")
        connection, lock = self._live()
        async with lock:
            try:
                row = await connection.fetchrow(_LOAD_SQL, location_id)
            except _FAILURES as exc:
                raise self._error("cannot read export_state", exc) from exc
        if row is None:
            return None
        try:
            return state_of(dict(row))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise self._error(f"export_state of {location_id} is unreadable", exc) from exc

    async def commit(self, batch: Batch) -> None:
        """Write ``batch``'s messages, emails and state in one transaction.

        Messages are upserted by id: a version whose ``date_updated`` is older than the
        stored one is skipped; a newer or equal one, or one where either side has no
        ``date_updated``, replaces it (within a batch, the same rule picks one version
        of an id). Emails are upserted by email id, the state by location.

        Raises:
            TypeError: ``batch`` is not a :class:`~ghl_async.export.sink.Batch`.
            ValueError: ``conversation_ids`` is neither empty nor one per message.
            ghl_async.errors.SinkError: PostgreSQL could not write (the server gone, a
                full disk, a timeout); the transaction was rolled back, nothing of the
                batch is kept and the state committed before stands.
        """
        if not isinstance(batch, Batch):
            raise TypeError(f"commit takes a Batch, not {type(batch).__name__}")
        if batch.conversation_ids and len(batch.conversation_ids) != len(batch.messages):
            raise ValueError(
                f"batch has {len(batch.conversation_ids)} conversation ids"
                f" for {len(batch.messages)} messages"
            )
        connection, lock = self._live()
        # Rows are built before the transaction: it holds row locks only to write.
        messages = self._message_records(batch)
        emails = self._email_records(batch)
        failures = self._failure_records(batch)
        state = self._state_record(batch.state)
        async with lock:
            try:
                async with connection.transaction():
                    if messages:
                        await self._upsert_messages(connection, messages)
                    if emails:
                        await connection.executemany(_EMAILS_SQL, emails)
                        await connection.execute(_FETCHED_SQL, [row[0] for row in emails])
                    if failures:
                        await connection.executemany(_FAILURES_SQL, failures)
                    await connection.execute(_STATE_SQL, *state)
            except _FAILURES as exc:
                raise self._error(
                    f"batch of {len(messages)} messages not written, state unchanged", exc
                ) from exc
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    # Cancelled mid-transaction: the connection cannot say what it holds.
                    # Dropping it makes the server roll back; the sink is unusable after.
                    self._broken = f"PostgreSQL {self._safe}: a commit was interrupted"
                    connection.terminate()
                raise

    # -- rows -----------------------------------------------------------------------

    def _json(self, value: Any) -> str | None:
        if value is None:
            return None
        text = self._encoder.encode(value).decode()
        return self._json_text(text) if "\\u0000" in text else text

    def _json_text(self, text: str | None) -> str | None:
        if text is None or "\\u0000" not in text:
            return text
        return self._encoder.encode(_no_nul(msgspec.json.decode(text))).decode()

    def _message_records(self, batch: Batch) -> list[tuple[Any, ...]]:
        """The batch's ``messages`` rows as :meth:`commit` writes them, sorted by id.

        One tuple per message id, in the order of :data:`~.schema.MESSAGE_COLUMNS`;
        JSON columns as JSON text. An id seen twice keeps the version the upsert rule
        keeps (newer or equal ``date_updated`` wins, NULL on either side: the later).
        """
        json, json_text = self._json, self._json_text
        chosen: dict[str, tuple[Any, ...]] = {}
        for record in message_rows(batch.messages, batch.conversation_ids or None):
            row = list(_MESSAGE_FIELDS(record))
            for i in _MESSAGE_JSON:
                row[i] = json(row[i])
            for i in _MESSAGE_JSON_TEXT:
                row[i] = json_text(row[i])
            for i in _MESSAGE_TEXT:
                value = row[i]
                if value is not None and "\x00" in value:
                    row[i] = value.replace("\x00", "\ufffd")
            for i in _MESSAGE_INT:
                value = row[i]
                if value is not None and not -_INT32 - 1 <= value <= _INT32:
                    row[i] = None
            key = row[0]
            before = chosen.get(key)
            if before is not None:
                old, new = before[_MESSAGE_DATE_UPDATED], row[_MESSAGE_DATE_UPDATED]
                if old is not None and new is not None and new < old:
                    continue
            chosen[key] = tuple(row)
        return [chosen[key] for key in sorted(chosen)]

    def _email_records(self, batch: Batch) -> list[tuple[Any, ...]]:
        json = self._json
        chosen: dict[str, tuple[Any, ...]] = {}
        for message_id, email in batch.emails:
            row = list(_EMAIL_FIELDS(email_row(email, message_id)))
            for i in _EMAIL_JSON:
                row[i] = json(row[i])
            for i in _EMAIL_TEXT:
                value = row[i]
                if value is not None and "\x00" in value:
                    row[i] = value.replace("\x00", "\ufffd")
            chosen[row[0]] = tuple(row)  # the same email twice: the later stands
        return [chosen[key] for key in sorted(chosen)]

    @staticmethod
    def _failure_records(batch: Batch) -> list[tuple[Any, ...]]:
        now = datetime.now(timezone.utc)
        chosen = {
            failure.email_id: (*email_failure_row(message_id, failure).values(), now)
            for message_id, failure in batch.email_failures
        }
        return [chosen[key] for key in sorted(chosen)]  # sorted: no deadlock between writers

    def _state_record(self, state: ExportState) -> tuple[Any, ...]:
        values = state_values(state)
        for name in STATE_JSON:
            values[name] = self._json(values[name])
        return (*values.values(), datetime.now(timezone.utc))

    async def _upsert_messages(
        self, connection: asyncpg.Connection, records: list[tuple[Any, ...]]
    ) -> None:
        """Merge ``records`` (from :meth:`_message_records`) into ``messages``."""
        # Binary COPY into the staging table, then one merge: 1.2-1.3 times the rate of
        # executemany of the one-row upsert, pages of 500 on 2 cores (about 59,000 vs
        # 50,000 msg/s inserting, 51,000 vs 41,000 updating, commit end to end; see
        # python -m benchmarks.sink_postgres).
        await connection.copy_records_to_table(
            _STAGE, records=records, columns=_MESSAGE_NAMES, timeout=self._timeout
        )
        await connection.execute(_MERGE_SQL)


def _split_dsn(dsn: str) -> tuple[str, str | None, str]:
    """``(dsn without its password, the password, the DSN to show)``; ValueError if not ours.

    The password comes out of the user part and out of a ``password=`` option; asyncpg
    is given it as an argument, so no error of asyncpg's can quote it.
    """
    try:
        parts = urlsplit(dsn)
    except ValueError:
        raise ValueError("dsn is not a URL: use postgresql://user@host:5432/database") from None
    if parts.scheme not in _SCHEMES:
        shown = f"scheme {parts.scheme!r}" if parts.scheme else "no scheme"
        raise ValueError(
            f"PostgresSink takes a postgresql:// (or postgres://) DSN; this one has {shown}"
        )
    password: str | None = None
    netloc, shown_netloc = parts.netloc, parts.netloc
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        user, _, secret = userinfo.partition(":")
        password = unquote(secret)
        netloc = f"{user}@{hosts}"
        shown_netloc = f"{user}:***@{hosts}"
    query, shown_query = parts.query, parts.query
    options = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "password" for key, _ in options):
        # As asyncpg reads it: the user part's password first, else the option's.
        if password is None:
            password = next(value for key, value in options if key == "password")
        query = urlencode([(k, v) for k, v in options if k != "password"])
        shown_query = urlencode(
            [(k, "***" if k == "password" else v) for k, v in options], safe="*"
        )
    bare = urlunsplit(parts._replace(netloc=netloc, query=query))
    shown = urlunsplit(parts._replace(netloc=shown_netloc, query=shown_query))
    return bare, password, shown
