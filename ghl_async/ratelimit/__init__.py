"""Rate limiting: the budget, the ``Limiter`` protocol, and the in-process limiter.

At most ``max`` requests reach the server in ANY window of ``interval`` seconds, for the
server's announced budget and any cap the caller set, beside neighbours spending the same
budget. How and why: the docs page "How the limiter works"
(``docs/how-the-limiter-works.md``).

- ``budget``: :class:`RateLimit`, a budget;
- ``protocol``: :class:`Limiter` and :class:`Reply`, what the client needs of a limiter;
- ``book``: :class:`WindowBook`, every rule as a pure decision on numbers;
- ``local``: :class:`LocalLimiter`, the book behind a queue, in one process;
- ``redis``: :class:`~ghl_async.ratelimit.redis.RedisLimiter`, the same rules shared
  across processes (needs the ``redis`` extra; import it from there).
"""

from ghl_async.ratelimit.book import WindowBook
from ghl_async.ratelimit.budget import RateLimit
from ghl_async.ratelimit.local import LocalLimiter
from ghl_async.ratelimit.protocol import Limiter, Reply

__all__ = ["Limiter", "LocalLimiter", "RateLimit", "Reply", "WindowBook"]
