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

from ghl_async._version import __version__

if TYPE_CHECKING:
    from ghl_async import errors
    from ghl_async._sansio import RateLimitHeaders
    from ghl_async.agency.locations import (
        AgencyToken,
        Locations,
        LocationTokenProvider,
        location_concurrency,
    )
    from ghl_async.client import (
        DEFAULT_BASE_URL,
        Client,
        LocationPage,
        MessageWithEmails,
        PageHook,
    )
    from ghl_async.errors import GHLError
    from ghl_async.models import (
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
    from ghl_async.ratelimit import Limiter, LocalLimiter, RateLimit, Reply
    from ghl_async.records import to_records
    from ghl_async.retry import RetryPolicy
    from ghl_async.stats import ClientStats

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
    "AgencyToken": (".agency.locations", "AgencyToken"),
    "CallMeta": (".models", "CallMeta"),
    "Client": (".client", "Client"),
    "LocationPage": ("._http.export_route", "LocationPage"),
    "MessageWithEmails": ("._http.emails", "MessageWithEmails"),
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
    "location_concurrency": (".agency.locations", "location_concurrency"),
    "LocationTokenProvider": (".agency.locations", "LocationTokenProvider"),
    "Locations": (".agency.locations", "Locations"),
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
