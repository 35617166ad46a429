"""The I/O seam: what the engine needs of a transport, and nothing of aiohttp.

A :class:`Transport` sends one :class:`Request` holding a rate-limiter ticket and
returns the whole reply as a :class:`RawReply` (status, headers, body, and the
:class:`~ghl_async.ratelimit.Reply` parsed once for the limiter and the stats). It
releases the ticket itself, once the reply's headers are in or the send failed, so a
transport that sends more than once for one request (aiohttp's silent resend on a
stale keep-alive connection) can meter each send. ``_transport.AiohttpTransport`` is
the real one; the tests answer from a function in memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import msgspec

from ghl_async.ratelimit.protocol import Limiter, Reply

__all__ = ["EMPTY", "RawReply", "Request", "Transport"]

EMPTY: Mapping[str, str] = {}


def _empty() -> Mapping[str, str]:
    return EMPTY


# Structs, not dataclasses: built once per attempt, in C (a frozen dataclass sets each
# field through object.__setattr__). Never in a cycle, so not tracked by the collector.
class Request(msgspec.Struct, frozen=True, gc=False):
    """One request as the engine hands it to a transport.

    ``form`` is sent as an ``application/x-www-form-urlencoded`` body, ``json`` as an
    ``application/json`` body (already encoded); at most one of them. ``timeout``: the
    seconds this attempt may take, when not the transport's own (a per-call override).
    """

    method: str
    url: str
    params: Mapping[str, str] = msgspec.field(default_factory=_empty)
    headers: Mapping[str, str] = msgspec.field(default_factory=_empty)
    form: Mapping[str, str] | None = None
    json: bytes | None = None
    timeout: float | None = None


class RawReply(msgspec.Struct, gc=False):
    """A complete reply: status, headers (case-insensitive), the whole body, and what its
    rate-limit headers say (parsed once, for the limiter and the client's stats).
    """

    status: int
    headers: Mapping[str, str]
    body: bytes
    reply: Reply


class Transport(Protocol):
    """Sends requests and reads whole replies; owns its connections."""

    @property
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`aclose`."""
        ...

    async def open(self) -> None:
        """Get ready to send, inside the running loop."""
        ...

    def abandon(self) -> None:
        """Let go of connections without awaiting (a client dropped or moved to a new loop)."""
        ...

    async def aclose(self) -> None:
        """Release every connection this transport opened."""
        ...

    async def send(self, request: Request, limiter: Limiter, ticket: object) -> RawReply:
        """Send ``request`` holding ``ticket`` of ``limiter``; return the whole reply.

        The ticket is released exactly once for every send that reaches the wire (with
        the reply, or ``None`` when the send failed) and once more for no send at all.

        Raises:
            ghl_async.errors.TransportError: no complete reply.
            RuntimeError: the transport is closed.
        """
        ...
