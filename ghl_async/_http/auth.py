"""Where the token comes from: a static string or an async provider, refreshed once per 401."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import anyio

from ghl_async import errors

TokenProvider = Callable[[], Awaitable[str]]

__all__ = ["TokenProvider", "TokenSource", "check_token"]


def check_token(token: object, *, from_provider: bool = False) -> str:
    """``token`` if it can go in a header: a non-empty ``str`` with no whitespace at its
    ends and no line break or NUL (which would split or end the header).

    Raises:
        TypeError: not a str.
        ValueError: empty, or with such characters (``from_provider``: an empty token
            is an :class:`~ghl_async.errors.AuthenticationError`).
    """
    if not isinstance(token, str):
        if from_provider:
            raise TypeError(f"the token provider returned {type(token).__name__}, not a str token")
        raise TypeError(f"token must be a str or an async callable, got {type(token).__name__}")
    if not token.strip():
        if from_provider:
            raise errors.AuthenticationError("the token provider returned an empty token")
        raise ValueError("token is empty")
    if any(ch in token for ch in "\r\n\0") or token != token.strip():
        raise ValueError("token contains whitespace or control characters")
    return token


class TokenSource:
    """Hands out the current token; after a 401, asks the provider once for a new one.

    Concurrent 401s share one refresh: whoever comes second finds the token already
    changed and uses the new one. A provider gets ``timeout`` seconds to answer (the
    same bound a request has): one that hangs fails the call instead of stalling it. A
    provider with ``bounds_its_wait = True`` bounds its own wait instead (a minted token
    queued behind other locations' mints is waiting its turn, not hanging).
    """

    __slots__ = ("_current", "_lock", "_provider", "_timeout")

    def __init__(self, token: str | TokenProvider, *, timeout: float | None = None) -> None:
        self._provider: TokenProvider | None = None
        self._current: str | None = None
        if callable(token):
            self._provider = token
        else:
            self._current = check_token(token, from_provider=False)
        self._timeout = timeout
        self._lock: anyio.Lock | None = None

    def __repr__(self) -> str:
        return "TokenSource(<redacted>)"

    @property
    def refreshable(self) -> bool:
        """True when the token comes from a provider that can be asked again."""
        return self._provider is not None

    @property
    def identity(self) -> object:
        """What the token is (for keying a shared limiter): the string or the provider."""
        return self._provider if self._provider is not None else self._current

    @property
    def current(self) -> str | None:
        """The token to send now when it is known without asking the provider."""
        return self._current

    async def get(self) -> str:
        """The token to send now."""
        current = self._current
        if current is not None:
            return current
        return await self._fetch(None)

    async def refresh(self, stale: str) -> str:
        """A new token after ``stale`` was refused (shared by concurrent callers)."""
        return await self._fetch(stale)

    def forget_loop(self) -> None:
        """Drop what belongs to an event loop (the refresh lock) before using a new one."""
        self._lock = None

    async def _fetch(self, stale: str | None) -> str:
        assert self._provider is not None
        if self._lock is None:
            self._lock = anyio.Lock()
        # A provider that bounds its own wait (minted tokens waiting their turn for the
        # agency's budget) is not cut short by the request timeout.
        bounded = getattr(self._provider, "bounds_its_wait", False) is True
        # move_on_after, not fail_after: a TimeoutError the provider raises is its own.
        with anyio.move_on_after(None if bounded else self._timeout) as scope:
            async with self._lock:
                if self._current is not None and self._current != stale:
                    return self._current
                token = check_token(await self._ask(), from_provider=True)
                self._current = token
                return token
        assert scope.cancelled_caught
        raise errors.AuthenticationError(
            f"the token provider gave no token within {self._timeout:g} s"
        )

    def _ask(self) -> Awaitable[object]:
        assert self._provider is not None
        pending: object = self._provider()
        if not inspect.isawaitable(pending):
            raise TypeError(
                "the token provider must be an async callable; it returned "
                f"{type(pending).__name__}, not an awaitable"
            )
        return pending
