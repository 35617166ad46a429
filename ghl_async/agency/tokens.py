"""Location tokens minted from an agency token: a budgeted service of its own.

``POST /oauth/locationToken`` turns the agency's OAuth token into one location's token.
Minting shares the agency's budget and a few request slots, so with many locations the
mints queue. Three rules keep a queue from failing healthy locations:

- **Waiting is not failing.** A location waiting for its mint waits its turn (the slots
  and the budget are first come, first served); only ``mint_wait`` (``None``: no limit)
  bounds that wait, apart from the timeout of the mint request itself once it is sent.
  A client's own token timeout does not apply to a minted token (:attr:`bounds_its_wait`).
- **Tokens are refreshed ahead.** A token used in the last tenth of its life is handed
  out while a new one is minted in the background, so an active location never stops
  for a mint.
- **A mint reply is checked.** Its ``locationId`` must be the location asked for and
  its ``expires_in`` a sane lifetime; a bad reply is that location's
  :class:`~ghl_async.errors.DecodeError`, never a crash of the whole run.

A token is kept until :func:`ghl_async.oauth.expires_at` (its lifetime less a margin);
after a 401 the location gets a new token even if the clock says the cached one is still
good (the server's word wins). Concurrent askers of one location share one mint.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from ghl_async import errors
from ghl_async._http.engine import Engine
from ghl_async.oauth import (
    LOCATION_TOKEN_PATH,
    LocationToken,
    decode_location_token,
    expires_at,
    location_token_form,
)

__all__ = ["MAX_LIFETIME", "MintProgress", "MintedTokens", "check_minted"]

#: The longest lifetime a minted token may claim (live: 86,399 s); more is a bad reply.
MAX_LIFETIME = 366 * 86400.0

# Refreshed in the background once this share of its life is gone.
_REFRESH_AT = 0.9


@dataclass(frozen=True, slots=True)
class MintProgress:
    """Where minting stands: tokens minted, locations waiting for one, mints that failed."""

    minted: int
    waiting: int
    failed: int


def check_minted(reply: LocationToken, location_id: str) -> LocationToken:
    """``reply`` if it is a token for ``location_id`` with a sane lifetime.

    Raises:
        ghl_async.errors.DecodeError: another location's token, or an ``expires_in`` that
            is not a number of seconds between 0 and :data:`MAX_LIFETIME`.
    """
    if reply.location_id is not None and reply.location_id != location_id:
        raise errors.DecodeError(
            f"the token minted for location {location_id} names location "
            f"{reply.location_id}: refused, it would read another location's messages"
        )
    lifetime = reply.expires_in
    if not (math.isfinite(lifetime) and 0 < lifetime <= MAX_LIFETIME):
        raise errors.DecodeError(
            f"the token minted for location {location_id} has expires_in {lifetime!r}, "
            f"not a lifetime in seconds (0 to {MAX_LIFETIME:g})"
        )
    return reply


class _Provider:
    """A client's token provider for one location: it bounds its own wait."""

    __slots__ = ("_given", "_location_id", "_tokens")

    bounds_its_wait = True
    """The client's token timeout does not apply: a mint waits its turn (``mint_wait``)."""

    def __init__(self, tokens: MintedTokens, location_id: str) -> None:
        self._tokens = tokens
        self._location_id = location_id
        self._given: str | None = None

    def __repr__(self) -> str:
        return f"<minted token provider of location {self._location_id}>"

    async def __call__(self) -> str:
        fresh = await self._tokens.get(self._location_id, stale=self._given)
        self._given = fresh
        return fresh


class MintedTokens:
    """The agency's location tokens: minted on need, refreshed ahead, each reply checked.

    Args:
        engine: the agency's OAuth engine (its limiter is the agency's budget, its
            capacity the mint slots).
        base_url: the API root.
        company_id: the agency's company id.
        clock: the monotonic clock tokens expire by.
        mint_wait: the longest a location waits for its mint to be sent (a slot and the
            agency's budget); ``None``: as long as its turn takes.
    """

    __slots__ = (
        "_base_url",
        "_cache",
        "_clock",
        "_company_id",
        "_engine",
        "_locks",
        "_mint_wait",
        "_refreshing",
        "failed",
        "minted",
        "waiting",
    )

    def __init__(
        self,
        engine: Engine,
        *,
        base_url: str,
        company_id: str,
        clock: Callable[[], float],
        mint_wait: float | None = None,
    ) -> None:
        if mint_wait is not None and not mint_wait > 0:
            raise ValueError("mint_wait must be positive or None")
        self._engine = engine
        self._base_url = base_url
        self._company_id = company_id
        self._clock = clock
        self._mint_wait = mint_wait
        # location -> (token, refresh after, good until)
        self._cache: dict[str, tuple[str, float, float]] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self.minted = 0
        self.waiting = 0
        self.failed = 0

    def __repr__(self) -> str:
        return f"MintedTokens(<{len(self._cache)} redacted>)"

    @property
    def progress(self) -> MintProgress:
        """Tokens minted, locations waiting for one, mints failed, so far."""
        return MintProgress(self.minted, self.waiting, self.failed)

    def forget_loop(self) -> None:
        """Drop what belongs to an event loop (locks, refreshes); the tokens stay good."""
        self._locks.clear()
        for task in self._refreshing.values():
            task.cancel()
        self._refreshing.clear()

    async def aclose(self) -> None:
        """Stop the background refreshes (the pool is closing)."""
        tasks = list(self._refreshing.values())
        self._refreshing.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def get(self, location_id: str, stale: str | None = None) -> str:
        """``location_id``'s token: the cached one unless expired or ``stale``, else a new one.

        Raises:
            ghl_async.errors.GHLError: the mint was refused, or its reply is not a
                token for this location (:class:`~ghl_async.errors.DecodeError`);
                :class:`~ghl_async.errors.AuthenticationError` when it waited longer
                than ``mint_wait``.
        """
        cached = self._cache.get(location_id)
        now = self._clock()
        if cached is not None and cached[0] != stale and now < cached[2]:
            if now >= cached[1]:
                self._refresh_ahead(location_id)
            return cached[0]
        lock = self._locks.get(location_id)
        if lock is None:
            lock = self._locks[location_id] = anyio.Lock()
        async with lock:
            cached = self._cache.get(location_id)
            if cached is not None and cached[0] != stale and self._clock() < cached[2]:
                return cached[0]  # minted by whoever held the lock before
            return await self._mint(location_id)

    async def _mint(self, location_id: str) -> str:
        self.waiting += 1
        try:
            with anyio.move_on_after(self._mint_wait) as scope:
                reply = await self._engine.request(
                    "POST",
                    self._base_url + LOCATION_TOKEN_PATH,
                    decode_location_token,
                    what=f"location {location_id} token",
                    form=location_token_form(self._company_id, location_id),
                )
                reply = check_minted(reply, location_id)
        except BaseException:
            self.failed += 1
            raise
        finally:
            self.waiting -= 1
        if scope.cancelled_caught:
            self.failed += 1
            raise errors.AuthenticationError(
                f"no token minted for location {location_id} within mint_wait "
                f"({self._mint_wait:g} s): the agency's mints were queued that long"
            )
        self.minted += 1
        now = self._clock()
        good_until = expires_at(reply.expires_in, now=now)
        refresh_after = now + (good_until - now) * _REFRESH_AT
        self._cache[location_id] = (reply.access_token, refresh_after, good_until)
        return reply.access_token

    def _refresh_ahead(self, location_id: str) -> None:
        """Mint ``location_id``'s next token in the background (once at a time)."""
        if location_id in self._refreshing:
            return
        task = asyncio.ensure_future(self._refresh(location_id))
        self._refreshing[location_id] = task
        task.add_done_callback(lambda _: self._refreshing.pop(location_id, None))

    async def _refresh(self, location_id: str) -> None:
        lock = self._locks.get(location_id)
        if lock is None:
            lock = self._locks[location_id] = anyio.Lock()
        # A failed refresh is not an error yet: the token still has its tenth of life,
        # and the next use past the refresh point tries again.
        with contextlib.suppress(errors.GHLError):
            async with lock:
                cached = self._cache.get(location_id)
                if cached is None or self._clock() >= cached[1]:
                    await self._mint(location_id)

    def provider(self, location_id: str) -> _Provider:
        """A client's token provider for ``location_id``.

        A client asks its provider once at first, then only after a 401: a second call
        means the token it was given was refused, so that one is never handed out again.
        """
        return _Provider(self, location_id)
