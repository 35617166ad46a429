"""When to retry and how long to wait: a policy object and pure decision functions."""

from __future__ import annotations

import random
from dataclasses import dataclass

from ghl_async import errors

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed request is retried.

    Retried: 429 (after ``Retry-After`` or the rate window), 500/502/503/504, connection
    errors and timeouts, truncated bodies, and a 200 whose body is not JSON at all (a
    proxy's page). Never retried: 400, 401 (beyond one token refresh), 403, 404, 422,
    a daily-limit 429.

    Args:
        max_attempts: attempts in all, the first included (1 turns retries off).
        backoff_base: the first backoff ceiling, in seconds; it doubles per attempt.
        backoff_cap: the largest backoff ceiling, in seconds.
        jitter: full jitter (wait a uniform random time up to the ceiling) when true;
            the ceiling itself when false.
        max_retry_after: the longest a ``Retry-After`` is honoured, in seconds; a longer
            one raises instead of waiting. It also bounds every wait on the rate
            limiter's pause: a request that would wait longer fails at once with
            :class:`~ghl_async.errors.RateLimitError` (``retry_after`` says when to come
            back), in this client, other clients of the token and processes sharing a
            ``RedisLimiter``. A ``Retry-After`` of zero or below is no instruction: the
            429 backs off as without one.

    Example::

        Client(token, retry=RetryPolicy(max_attempts=8, backoff_cap=10.0))
    """

    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    jitter: bool = True
    max_retry_after: float = 120.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise TypeError("max_attempts must be an int")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff_base < 0 or self.backoff_cap < 0 or self.max_retry_after < 0:
            raise ValueError("backoff_base, backoff_cap and max_retry_after must be >= 0")

    def should_retry(self, error: errors.GHLError, attempt: int) -> bool:
        """Whether to try again after ``error`` ended attempt number ``attempt`` (1-based)."""
        if attempt >= self.max_attempts or not error.retryable:
            return False
        if isinstance(error, errors.RateLimitError) and error.retry_after is not None:
            return error.retry_after <= self.max_retry_after
        return True

    def delay(
        self,
        error: errors.GHLError,
        attempt: int,
        *,
        rate_interval: float | None = None,
        rng: random.Random | None = None,
    ) -> float:
        """Seconds to wait before attempt ``attempt + 1``.

        A 429 waits what ``Retry-After`` says, else one rate window (``rate_interval``,
        from ``X-RateLimit-Interval-Milliseconds``), else the backoff. Everything else
        backs off exponentially with full jitter.
        """
        if isinstance(error, errors.RateLimitError):
            if error.retry_after is not None:
                return min(error.retry_after, self.max_retry_after)
            if rate_interval is not None:
                return min(rate_interval, self.max_retry_after)
        ceiling = min(self.backoff_cap, self.backoff_base * (2.0 ** (attempt - 1)))
        if not self.jitter:
            return ceiling
        if rng is None:
            return random.uniform(0.0, ceiling)
        return rng.uniform(0.0, ceiling)
