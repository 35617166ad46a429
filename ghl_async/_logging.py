"""The ``ghl_async`` loggers, and ``GHL_ASYNC_LOG`` to turn them on without code.

Every line the package logs goes through the standard :mod:`logging` module under the
``ghl_async`` logger (children such as ``ghl_async.http`` name the part speaking), so an
application configures it like any other library's::

    logging.getLogger("ghl_async").setLevel(logging.DEBUG)

Without code, ``GHL_ASYNC_LOG=debug`` (or ``info``) in the environment, read once when
this module is first imported, adds a handler on stderr at that level, as
``OPENAI_LOG=debug`` does for openai. The command line's ``-v`` (INFO) and ``-vv``
(DEBUG) call :func:`enable`.

What is logged:

- DEBUG: one line per request (:func:`request_line`): method, path (never the query,
  which could carry a secret), status, latency, attempt, and the wait for a rate slot.
- INFO: retries, 429s, budgets learnt from the headers, token refreshes.

No line carries a token: the handler this module installs runs :class:`RedactSecrets`,
which replaces every secret registered with :func:`redact` (the command line registers
its token) and anything after ``Bearer`` by ``<redacted>``.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Mapping
from typing import Final, TextIO

__all__ = [
    "ENV_VAR",
    "LOGGER_NAME",
    "RedactSecrets",
    "disable",
    "enable",
    "get_logger",
    "level_from_env",
    "logger",
    "redact",
    "request_line",
    "setup_from_env",
]

#: The root of the package's loggers.
LOGGER_NAME: Final = "ghl_async"
#: The environment variable that turns logging on without code: ``debug`` or ``info``.
ENV_VAR: Final = "GHL_ASYNC_LOG"

logger: Final = logging.getLogger(LOGGER_NAME)

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_BEARER: Final = re.compile(r"(?i)(bearer\s+)\S+")
_REDACTED: Final = "<redacted>"
_MIN_SECRET: Final = 8

_lock = threading.Lock()
_secrets: set[str] = set()
_handler: logging.Handler | None = None


def get_logger(name: str) -> logging.Logger:
    """A logger under ``ghl_async``: ``get_logger("http")`` is ``ghl_async.http``.

    A module's ``__name__`` (``ghl_async._http.engine``) is taken as it is.
    """
    if name == LOGGER_NAME or name.startswith(LOGGER_NAME + "."):
        return logging.getLogger(name)
    return logging.getLogger(f"{LOGGER_NAME}.{name}")


def redact(secret: str) -> None:
    """Never let ``secret`` (a token) appear in a line the package's handler writes.

    A value shorter than 8 characters is no real token (a test's ``"t"``): replacing it
    would garble every line, so it is not registered.
    """
    if len(secret) >= _MIN_SECRET:
        with _lock:
            _secrets.add(secret)


def _scrub(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, _REDACTED)
    return _BEARER.sub(rf"\g<1>{_REDACTED}", text)


class RedactSecrets(logging.Filter):
    """Rewrites a record's message so that no registered secret or bearer token remains.

    The message is formatted (``msg % args``) first, then scrubbed, so a secret passed
    as an argument is caught as well as one in the text.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Scrub the record in place; it is always kept."""
        message = record.getMessage()
        scrubbed = _scrub(message)
        if scrubbed != message or record.args:
            record.msg, record.args = scrubbed, None
        if record.exc_info and record.exc_text is None and record.exc_info[1] is not None:
            record.exc_text = _scrub(logging.Formatter().formatException(record.exc_info))
        return True


def request_line(
    method: str,
    url: str,
    *,
    status: int | None,
    latency: float,
    attempt: int,
    limiter_wait: float,
) -> str:
    """The DEBUG line of one request: ``GET /conversations/search -> 200 in 84 ms ...``.

    The path only: the scheme, host and query are left out (a query could carry a
    secret, and the host is the same on every line).
    """
    path = url.split("?", 1)[0]
    if "://" in path:
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    outcome = str(status) if status is not None else "no reply"
    return (
        f"{method} {path} -> {outcome} in {latency * 1000:.0f} ms "
        f"(attempt {attempt}, waited {limiter_wait * 1000:.0f} ms for a rate slot)"
    )


def level_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """The level ``GHL_ASYNC_LOG`` names (``debug``, ``info``, ...), else ``None``."""
    value = (os.environ if environ is None else environ).get(ENV_VAR, "").strip().lower()
    return _LEVELS.get(value)


def enable(level: int, stream: TextIO | None = None) -> logging.Handler:
    """Log the package's lines at ``level`` and above to ``stream`` (stderr by default).

    One handler, installed once (a second call changes its level and stream), with
    :class:`RedactSecrets`. The ``ghl_async`` logger's level is set to ``level``.
    """
    global _handler
    with _lock:
        if _handler is None:
            handler = logging.StreamHandler(stream or sys.stderr)
            handler.setFormatter(logging.Formatter(_FORMAT))
            handler.addFilter(RedactSecrets())
            logger.addHandler(handler)
            _handler = handler
        elif stream is not None and isinstance(_handler, logging.StreamHandler):
            _handler.setStream(stream)
        _handler.setLevel(level)
        logger.setLevel(level)
        return _handler


def disable() -> None:
    """Remove the handler :func:`enable` installed and reset the logger's level."""
    global _handler
    with _lock:
        if _handler is not None:
            logger.removeHandler(_handler)
            _handler = None
        logger.setLevel(logging.NOTSET)


def setup_from_env(environ: Mapping[str, str] | None = None) -> int | None:
    """Turn logging on when ``GHL_ASYNC_LOG`` names a level; the level, or ``None``."""
    level = level_from_env(environ)
    if level is not None:
        enable(level)
    return level


setup_from_env()
