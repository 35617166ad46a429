"""The commands' shared grammar: the parser, the argument types and checks, the token.

Every check that can be done before a request is done here or next to the command's
own parser, and every error names the flag as typed (``--rate``), never a Python
argument, in one line.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import NoReturn, TypeAlias

from ghl_async._logging import redact
from ghl_async._validation import check_base_url, check_id
from ghl_async.cli.exits import UsageError
from ghl_async.ratelimit import RateLimit

__all__ = [
    "ENV_BASE_URL",
    "ENV_LOCATION",
    "Parser",
    "Subparsers",
    "base_url_arg",
    "base_url_from",
    "count_arg",
    "location_arg",
    "location_from_env",
    "rate_arg",
    "read_token",
]

#: The environment variables the README exports, read by the flags they stand for; a
#: flag given on the command line wins.
ENV_BASE_URL = "GHL_BASE_URL"
ENV_LOCATION = "GHL_LOCATION_ID"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and no abbreviated long options."""

    def __init__(self, **kwargs: object) -> None:
        # "--token" must never be read as "--token-file": no prefix matching, anywhere.
        kwargs["allow_abbrev"] = False
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        """Raise :class:`UsageError` (one line naming the help) instead of exiting."""
        raise UsageError(f"{message} (see {self.prog} --help)")


#: What ``register(subparsers)`` of each command is handed.
Subparsers: TypeAlias = "argparse._SubParsersAction[Parser]"

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?|\.\d+)?\s*(ms|s|m|h)\s*")


def rate_arg(text: str) -> RateLimit:
    """``100/10s``: requests per interval, the unit required (ms, s, m or h)."""
    match = _RATE.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a rate; write requests/interval with its unit, e.g. 100/10s"
        )
    count, span, unit = match.groups()
    try:
        return RateLimit(int(count), float(span or 1) * _UNITS[unit])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def count_arg(low: int, high: int) -> type[int]:
    """An int type for argparse that must lie in ``low..high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    return parse  # type: ignore[return-value]


def _check_base_url(text: str) -> str:
    try:
        return check_base_url(text, allow_insecure=False)
    except ValueError as exc:
        message = str(exc).replace("base_url ", "", 1)
        if "allow_insecure" in message:
            # The library's escape hatch is no flag of the command line: say what is.
            message = (
                f"{text!r} must use https (the token would travel in clear); plain http "
                "is accepted only on this machine (localhost, 127.0.0.1, ::1)"
            )
        raise ValueError(message) from None


def base_url_arg(text: str) -> str:
    """An http(s) API root; plain http only on loopback (the token would travel in clear)."""
    try:
        return _check_base_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def base_url_from(flag: str | None, default: str) -> str:
    """The API root: ``--base-url`` if given, else ``GHL_BASE_URL``, else ``default``."""
    if flag is not None:
        return flag
    text = os.environ.get(ENV_BASE_URL, "").strip()
    if not text:
        return default
    try:
        return _check_base_url(text)
    except ValueError as exc:
        raise UsageError(f"{ENV_BASE_URL}: {exc}") from None


def location_from_env() -> str | None:
    """``GHL_LOCATION_ID``, checked, or ``None`` when it is not set."""
    text = os.environ.get(ENV_LOCATION, "").strip()
    if not text:
        return None
    try:
        return check_id(text, "location id")
    except ValueError as exc:
        raise UsageError(f"{ENV_LOCATION}: {exc}") from None


def location_arg(text: str) -> str:
    """A location id."""
    try:
        return check_id(text, "location id")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def read_token(token_file: str | None) -> str:
    """The token from ``token_file`` or ``GHL_TOKEN``."""
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8-sig") as handle:
                token = handle.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise UsageError(f"cannot read the token file: {reason}") from None
        source = "the token file"
    else:
        token = os.environ.get("GHL_TOKEN", "").strip()
        source = "GHL_TOKEN"
    if not token:
        raise UsageError("no token: set GHL_TOKEN or pass --token-file")
    redact(token)  # -v and -vv never show it, whatever a log line holds
    if any(ch.isspace() or not ch.isprintable() for ch in token):
        # A token is one word of printable characters: anything else is two tokens run
        # together, or a stray line break, and would make a broken header.
        raise UsageError(
            f"{source} has a line break, a space or a control character inside the token; "
            "check how it was set"
        )
    return token
