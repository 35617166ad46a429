"""Location tokens minted from an agency token: cached until they expire, single-flight.

``POST /oauth/locationToken`` turns the agency's OAuth token into one location's token.
Each is kept until :func:`ghl_async.oauth.expires_at` (its lifetime less a margin); a
location's client asks again only after a 401, and then gets a new token even if the
clock says the cached one is still good (the server's word wins). Concurrent askers of
one location share one mint: the second finds the first's token in the cache.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from ghl_async._http.auth import TokenProvider
from ghl_async._http.engine import Engine
from ghl_async.oauth import (
    LOCATION_TOKEN_PATH,
    decode_location_token,
    expires_at,
    location_token_form,
)

__all__ = ["MintedTokens"]


class MintedTokens:
    """The agency's location tokens: one mint per location until it expires or is refused."""

    __slots__ = ("_base_url", "_cache", "_clock", "_company_id", "_engine", "_locks", "minted")

    def __init__(
        self, engine: Engine, *, base_url: str, company_id: str, clock: Callable[[], float]
    ) -> None:
        self._engine = engine
        self._base_url = base_url
        self._company_id = company_id
        self._clock = clock
        self._cache: dict[str, tuple[str, float]] = {}  # location -> (token, good until)
        self._locks: dict[str, anyio.Lock] = {}
        self.minted = 0

    def __repr__(self) -> str:
        return f"MintedTokens(<{len(self._cache)} redacted>)"

    def forget_loop(self) -> None:
        """Drop the locks (they belong to an event loop); the tokens stay good."""
        self._locks.clear()

    async def get(self, location_id: str, stale: str | None = None) -> str:
        """``location_id``'s token: the cached one unless expired or ``stale``, else a new one."""
        lock = self._locks.get(location_id)
        if lock is None:
            lock = self._locks[location_id] = anyio.Lock()
        async with lock:
            cached = self._cache.get(location_id)
            if cached is not None and cached[0] != stale and self._clock() < cached[1]:
                return cached[0]
            reply = await self._engine.request(
                "POST",
                self._base_url + LOCATION_TOKEN_PATH,
                decode_location_token,
                what=f"location {location_id} token",
                form=location_token_form(self._company_id, location_id),
            )
            self.minted += 1
            good_until = expires_at(reply.expires_in, now=self._clock())
            self._cache[location_id] = (reply.access_token, good_until)
            return reply.access_token

    def provider(self, location_id: str) -> TokenProvider:
        """A client's token provider for ``location_id``.

        A client asks its provider once at first, then only after a 401: a second call
        means the token it was given was refused, so that one is never handed out again.
        """
        given: list[str | None] = [None]

        async def token() -> str:
            fresh = await self.get(location_id, stale=given[0])
            given[0] = fresh
            return fresh

        return token
