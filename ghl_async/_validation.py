"""Argument checks done before any request: bad input never reaches the network."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from ghl_async.models import FilterType

MAX_PAGE_SIZE = 100
_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_FILTER_NAMES = frozenset(member.value for member in FilterType)


def check_id(value: object, what: str) -> str:
    """Return ``value`` if it is a plain HighLevel id, else raise.

    A plain id is 1 to 128 letters, digits, ``_`` or ``-``: nothing that could change
    the path (``../x``, ``a/b``, ``a?b``), no whitespace or control characters.
    """
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if _ID.fullmatch(value) is None:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise ValueError(
            f"{what} {shown!r} is not a HighLevel id (1 to 128 letters, digits, '_' or '-')"
        )
    return value


def check_int(value: object, what: str, low: int, high: int | None = None) -> int:
    """Return ``value`` if it is an int (not a bool) in ``low..high``, else raise.

    The one int/range check of every argument (page sizes, concurrency, byte caps), so
    they all refuse alike: ``TypeError`` for the wrong type, ``ValueError`` out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if high is None:
        if value < low:
            raise ValueError(f"{what} must be at least {low}, got {value}")
    elif not low <= value <= high:
        raise ValueError(f"{what} must be between {low} and {high}, got {value}")
    return value


def check_page_size(value: object, what: str) -> int:
    """Return ``value`` if it is an int in 1..100 (a messages or search page), else raise."""
    return check_int(value, what, 1, MAX_PAGE_SIZE)


def check_types(types: Iterable[str] | str | None) -> str | None:
    """The ``type`` query value for a list of filter names, or ``None`` for no filter."""
    if types is None:
        return None
    if isinstance(types, str):
        items = [part.strip() for part in types.split(",")]
    else:
        items = list(types)
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"a message type filter must be a str, not {type(item).__name__}")
        name = str(item.value) if isinstance(item, FilterType) else item
        if name not in _FILTER_NAMES:
            raise ValueError(
                f"{name!r} is not a message type filter; use one of FilterType's names"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError("types is empty; pass None for all message types")
    return ",".join(names)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(base_url: str, *, allow_insecure: bool) -> str:
    """Return the base URL without a trailing slash, refusing plain http off loopback."""
    if not isinstance(base_url, str):
        raise TypeError("base_url must be a str")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("base_url must not carry a query, fragment or credentials")
    if parts.scheme == "http" and not allow_insecure and not is_loopback(parts.hostname):
        raise ValueError(
            "base_url must use https (the token would travel in clear); "
            "plain http is allowed on loopback or with allow_insecure=True"
        )
    return base_url.rstrip("/")
