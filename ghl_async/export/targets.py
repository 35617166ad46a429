"""Which sink a URL names: ``sqlite:///path.db`` or ``postgresql://...`` (``--to``).

SQLite URLs follow SQLAlchemy's convention, which data tools share: three slashes and a
relative path (``sqlite:///mirror/messages.db``), four for an absolute one
(``sqlite:////var/lib/ghl/messages.db``). A PostgreSQL URL is handed to asyncpg as it is
(``postgresql://user@host:5432/db``; ``postgres://`` is accepted too); its password never
appears in an error or a repr.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ghl_async.export.sink import Sink

__all__ = ["sink_for", "describe"]

_SQLITE = "sqlite:///"
_POSTGRES = ("postgresql://", "postgres://")


def sink_for(url: str) -> Sink:
    """The sink a ``--to`` URL names, not yet opened (``async with`` opens it).

    Raises:
        TypeError: ``url`` is not a string.
        ValueError: not a SQLite or PostgreSQL URL, or one with no path or database.
    """
    if not isinstance(url, str):
        raise TypeError(f"a sink URL is a str, not {type(url).__name__}")
    if url.startswith(_SQLITE):
        path = url[len(_SQLITE) :]
        if not path or path.endswith("/"):
            raise ValueError(f"{describe(url)} names no database file (sqlite:///path.db)")
        from ghl_async.export.sqlite import SQLiteSink  # the stdlib's sqlite3, on demand

        return SQLiteSink(path)
    if url.startswith(_POSTGRES):
        from ghl_async.export.postgres import PostgresSink  # needs the postgres extra

        return PostgresSink(url)
    raise ValueError(
        f"{describe(url)} is not a sink URL: use sqlite:///path.db or postgresql://host/db"
    )


def describe(url: str) -> str:
    """``url`` as it is safe to print: any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "the sink URL"
    if parts.password is None:
        return repr(url)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return repr(parts._replace(netloc=netloc).geturl())
