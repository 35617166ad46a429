"""A request budget: at most so many requests in any window of so many seconds."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["RateLimit"]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A request budget: at most ``max_requests`` in any ``interval`` seconds.

    The default is HighLevel's documented burst budget, 100 per 10 seconds. Passed to
    :class:`~ghl_async.Client` explicitly it is a cap: it holds in every window of its
    own, and so does the budget the server announces.
    """

    max_requests: int = 100
    interval: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.max_requests, bool) or not isinstance(self.max_requests, int):
            raise TypeError("max_requests must be an int")
        if self.max_requests < 1:
            raise ValueError("max_requests must be at least 1")
        if not isinstance(self.interval, (int, float)) or isinstance(self.interval, bool):
            raise TypeError("interval must be a number of seconds")
        if not self.interval > 0 or math.isinf(self.interval):
            raise ValueError("interval must be positive and finite")

    @property
    def per_second(self) -> float:
        """The budget as a steady rate."""
        return self.max_requests / self.interval

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """Read ``"100/10s"``, ``"25/1s"`` or ``"100/10"`` (seconds)."""
        try:
            count, _, span = text.strip().partition("/")
            span = span.strip().removesuffix("s") or "1"
            return cls(max_requests=int(count), interval=float(span))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a rate like '100/10s': {text!r}") from exc
