"""ghl_async: a fast, rate-aware asyncio client for HighLevel's Conversations API.

::

    from ghl_async import Client

    async with Client(token) as client:
        async for message in client.iter_messages(conversation_id):
            print(message.date_added, message.message_type, message.body)
"""

from . import errors
from ._sansio import RateLimitHeaders
from ._version import __version__
from .client import DEFAULT_BASE_URL, Client, PageHook
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
    "Message",
    "MessageMeta",
    "MessageType",
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
