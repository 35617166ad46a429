"""ghl_async: a fast, rate-aware asyncio client for HighLevel's Conversations API.

::

    from ghl_async import Client

    async with Client(token) as client:
        async for message in client.iter_messages(conversation_id):
            print(message.date_added, message.message_type, message.body)

The names below are imported on first use: ``import ghl_async`` (which pytest does in
every session through the ``fake_highlevel`` plugin) loads neither aiohttp nor the client
until a name is asked for.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from . import errors
    from ._sansio import RateLimitHeaders
    from .client import DEFAULT_BASE_URL, Client, LocationPage, MessageWithEmails, PageHook
    from .errors import GHLError
    from .locations import AgencyToken, Locations, LocationTokenProvider, location_concurrency
    from .models import (
        CallMeta,
        Conversation,
        EmailMessage,
        EmailMeta,
        ExportPage,
        FilterType,
        Message,
        MessageMeta,
        MessagesPage,
        MessageType,
    )
    from .ratelimit import Limiter, LocalLimiter, RateLimit, Reply
    from .records import to_records
    from .retry import RetryPolicy
    from .stats import ClientStats

__all__ = [
    "DEFAULT_BASE_URL",
    "AgencyToken",
    "CallMeta",
    "Client",
    "ClientStats",
    "Conversation",
    "EmailMessage",
    "EmailMeta",
    "ExportPage",
    "FilterType",
    "GHLError",
    "Limiter",
    "LocationTokenProvider",
    "Locations",
    "LocalLimiter",
    "LocationPage",
    "Message",
    "MessageMeta",
    "MessageType",
    "MessageWithEmails",
    "MessagesPage",
    "PageHook",
    "RateLimit",
    "RateLimitHeaders",
    "Reply",
    "RetryPolicy",
    "__version__",
    "errors",
    "location_concurrency",
    "to_records",
]

# Where each public name lives; ``None``: the name is that module itself.
_HOMES: dict[str, tuple[str, str | None]] = {
    "DEFAULT_BASE_URL": (".client", "DEFAULT_BASE_URL"),
    "AgencyToken": (".locations", "AgencyToken"),
    "CallMeta": (".models", "CallMeta"),
    "Client": (".client", "Client"),
    "LocationPage": ("._location_export", "LocationPage"),
    "MessageWithEmails": ("._emails", "MessageWithEmails"),
    "ClientStats": (".stats", "ClientStats"),
    "Conversation": (".models", "Conversation"),
    "EmailMessage": (".models", "EmailMessage"),
    "EmailMeta": (".models", "EmailMeta"),
    "ExportPage": (".models", "ExportPage"),
    "FilterType": (".models", "FilterType"),
    "GHLError": (".errors", "GHLError"),
    "Limiter": (".ratelimit", "Limiter"),
    "LocalLimiter": (".ratelimit", "LocalLimiter"),
    "Message": (".models", "Message"),
    "MessageMeta": (".models", "MessageMeta"),
    "MessageType": (".models", "MessageType"),
    "MessagesPage": (".models", "MessagesPage"),
    "PageHook": (".client", "PageHook"),
    "RateLimit": (".ratelimit", "RateLimit"),
    "RateLimitHeaders": ("._sansio", "RateLimitHeaders"),
    "Reply": (".ratelimit", "Reply"),
    "RetryPolicy": (".retry", "RetryPolicy"),
    "errors": (".errors", None),
    "location_concurrency": (".locations", "location_concurrency"),
    "LocationTokenProvider": (".locations", "LocationTokenProvider"),
    "Locations": (".locations", "Locations"),
    "to_records": (".records", "to_records"),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(home[0], __name__)
    value = module if home[1] is None else getattr(module, home[1])
    globals()[name] = value  # once found, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
