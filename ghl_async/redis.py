"""One location's budget shared by many processes and machines, through Redis.

::

    from ghl_async import Client, RateLimit
    from ghl_async.redis import RedisLimiter     # pip install "ghl-async[redis]"

    limiter = RedisLimiter("redis://localhost:6379/0", key="location:ve9EPM428h8vShlRW1KT",
                           rate_limit=RateLimit(max_requests=100, interval=10.0))
    async with Client(token, limiter=limiter) as client:
        ...

The same rule as the in-process limiter, kept in Redis: a sorted set holds one member
per request, scored by the moment its slot frees (while in flight: a far moment;
once its reply is in: that moment plus one interval). One atomic script per acquire
drops freed slots and either takes one ("go") or names how long until one frees
("wait N ms"); a waiting process sleeps that long, no polling storm. All times come
from Redis's own ``TIME``, so the machines' clocks do not matter.

A 429 seen by any process sets a shared paused-until key that every acquire honours;
the budget the server announces and ``Daily-Remaining`` are shared in a hash; a
``Remaining`` lower than the shared count (a consumer outside the key) adds
placeholder slots, as the local limiter does. Every key expires on its own.

When Redis cannot be reached the limiter fails closed: :class:`LimiterUnavailable`
(nothing is sent). With ``on_redis_error="local"`` it falls back to an in-process
limiter at ``local_share`` of the budget and logs a warning.
"""

from __future__ import annotations

import logging
import secrets
from typing import Literal, NamedTuple

import anyio

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("ghl_async.redis needs redis-py: pip install 'ghl-async[redis]'") from exc

from .errors import LimiterUnavailable
from .ratelimit import LocalLimiter, RateLimit, Reply

__all__ = ["RedisLimiter"]

logger = logging.getLogger("ghl_async")

# KEYS: slots (zset), paused-until (string), budget (hash)
# ARGV: member, max, interval ms, in-flight ms, poll ms
# Returns {1, expired} when a slot was taken (expired: slots freed so far, for the
# release), {0, ms} to wait.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if paused > now then return {0, paused - now} end
local max = tonumber(redis.call('HGET', KEYS[3], 'max') or ARGV[2])
local interval = tonumber(redis.call('HGET', KEYS[3], 'interval') or ARGV[3])
local inflight = tonumber(ARGV[4])
local freed = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if freed > 0 then redis.call('HINCRBY', KEYS[3], 'expired', freed) end
local held = redis.call('ZCARD', KEYS[1])
if held < max then
  redis.call('ZADD', KEYS[1], now + inflight, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], inflight + interval)
  redis.call('PEXPIRE', KEYS[3], 86400000)
  return {1, tonumber(redis.call('HGET', KEYS[3], 'expired') or '0')}
end
local nth = redis.call('ZRANGE', KEYS[1], held - max, held - max, 'WITHSCORES')
local wait = tonumber(nth[2]) - now
if wait > interval then
  -- That slot is still in flight; its reply will shorten it: look again soon.
  wait = math.min(wait, tonumber(ARGV[5]))
end
return {0, math.max(1, wait)}
"""

# KEYS: slots, paused-until, budget
# ARGV: member, status, retry-after ms (-1 none), server max (-1), server interval ms (-1),
#       remaining (-1), daily remaining (-1), cap max, cap interval ms, adopt server (0/1),
#       slots expired when this request was sent
_RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max = tonumber(redis.call('HGET', KEYS[3], 'max') or ARGV[8])
local interval = tonumber(redis.call('HGET', KEYS[3], 'interval') or ARGV[9])
local smax, sint = tonumber(ARGV[4]), tonumber(ARGV[5])
if smax > 0 and sint > 0 then
  local capmax, capint = tonumber(ARGV[8]), tonumber(ARGV[9])
  if ARGV[10] == '1' or smax / sint < capmax / capint then
    max, interval = smax, sint
  else
    max, interval = capmax, capint
  end
  redis.call('HSET', KEYS[3], 'max', max, 'interval', interval)
end
redis.call('ZADD', KEYS[1], 'XX', now + interval, ARGV[1])
local daily = tonumber(ARGV[7])
if daily >= 0 then redis.call('HSET', KEYS[3], 'daily_remaining', daily) end
redis.call('PEXPIRE', KEYS[3], 86400000)
local notes = {}
local remaining = tonumber(ARGV[6])
if remaining >= 0 then
  local freed = redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  local expired = redis.call('HINCRBY', KEYS[3], 'expired', freed)
  -- Slots freed since the send may still have counted when the server answered.
  local believed = max - redis.call('ZCARD', KEYS[1]) - (expired - tonumber(ARGV[11]))
  if remaining < believed then
    for i = 1, believed - remaining do
      redis.call('ZADD', KEYS[1], now + interval, ARGV[1] .. ':elsewhere:' .. i)
    end
    table.insert(notes, 'held back ' .. (believed - remaining))
  end
end
if ARGV[2] == '429' then
  local pause = tonumber(ARGV[3])
  if pause < 0 then pause = interval end
  local until_ = now + pause
  local current = tonumber(redis.call('GET', KEYS[2]) or '0')
  if until_ > current then
    redis.call('SET', KEYS[2], until_, 'PX', pause + 1000)
    table.insert(notes, 'paused ' .. pause .. ' ms')
  end
end
redis.call('PEXPIRE', KEYS[1], interval * 2 + 60000)
return notes
"""


class _Ticket(NamedTuple):
    member: str
    expired: int


class _LocalTicket(NamedTuple):
    inner: object  # a ticket of the local fallback limiter


class RedisLimiter:
    """A :class:`~ghl_async.ratelimit.Limiter` whose window lives in Redis.

    Args:
        redis: a URL (``redis://host:6379/0``) or an existing ``redis.asyncio.Redis``
            (which the limiter then never closes).
        key: what the budget belongs to, such as ``"location:<id>"``; every process
            using the same key (and prefix) shares one budget.
        rate_limit: the budget (a cap: the server's smaller announced budget wins).
        prefix: prepended to every Redis key.
        on_redis_error: ``"raise"`` (fail closed, the default) or ``"local"`` (fall back
            to an in-process limiter at ``local_share`` of the budget).
        local_share: the fraction of the budget the local fallback uses.
        timeout: seconds a Redis call may take before it counts as unavailable.
        in_flight_timeout: seconds a slot stays held when its process never reports
            back (it crashed); should exceed the client's per-attempt timeout.
    """

    def __init__(
        self,
        redis: str | aioredis.Redis,
        *,
        key: str,
        rate_limit: RateLimit | None = None,
        prefix: str = "ghl_async:",
        on_redis_error: Literal["raise", "local"] = "raise",
        local_share: float = 0.25,
        timeout: float = 1.0,
        in_flight_timeout: float = 60.0,
    ) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError("key must be a non-empty str")
        if on_redis_error not in ("raise", "local"):
            raise ValueError("on_redis_error must be 'raise' or 'local'")
        if not 0 < local_share <= 1:
            raise ValueError("local_share must be in (0, 1]")
        self._owns_client = isinstance(redis, str)
        if isinstance(redis, str):
            self._redis: aioredis.Redis = aioredis.Redis.from_url(
                redis, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        else:
            self._redis = redis
        self._adopt = rate_limit is None
        self.rate_limit = rate_limit or RateLimit()
        base = f"{prefix}{key}"
        self._keys = [f"{base}:slots", f"{base}:paused", f"{base}:budget"]
        self._on_error = on_redis_error
        self._timeout = timeout
        self._in_flight_ms = int(in_flight_timeout * 1000)
        self._acquire_script = self._redis.register_script(_ACQUIRE)
        self._release_script = self._redis.register_script(_RELEASE)
        self._process = secrets.token_hex(6)
        self._counter = 0
        local = RateLimit(
            max(1, int(self.rate_limit.max_requests * local_share)), self.rate_limit.interval
        )
        self._local = LocalLimiter(local)
        self._warned = False

    def __repr__(self) -> str:
        return f"RedisLimiter(key={self._keys[0].rsplit(':', 1)[0]!r}, {self.rate_limit})"

    @property
    def keys(self) -> list[str]:
        """The Redis keys this limiter writes (slots, paused-until, budget)."""
        return list(self._keys)

    async def aclose(self) -> None:
        """Close the Redis connection if the limiter opened it."""
        if self._owns_client:
            await self._redis.aclose()

    def _unavailable(self, exc: BaseException) -> None:
        if self._on_error == "raise":
            raise LimiterUnavailable(
                f"Redis is unavailable for the shared rate limit ({type(exc).__name__}); "
                "nothing was sent"
            ) from None
        if not self._warned:
            self._warned = True
            logger.warning(
                "Redis is unavailable (%s): falling back to a local limiter at %d per %g s",
                type(exc).__name__,
                self._local.book.max_requests,
                self._local.book.interval,
            )

    async def acquire(self) -> object:
        """Wait for a slot in the shared window; returns the ticket for :meth:`release`."""
        self._counter += 1
        member = f"{self._process}:{self._counter}"
        args: list[str | int] = [
            member,
            self.rate_limit.max_requests,
            int(self.rate_limit.interval * 1000),
            self._in_flight_ms,
            max(10, int(self.rate_limit.interval * 50)),
        ]
        while True:
            try:
                with anyio.fail_after(self._timeout):
                    taken, value = await self._acquire_script(keys=self._keys, args=args)
            except (RedisError, OSError, TimeoutError) as exc:
                self._unavailable(exc)
                return _LocalTicket(await self._local.acquire())
            if self._warned:
                self._warned = False
                logger.warning("Redis is back: the shared rate limit applies again")
            if int(taken):
                return _Ticket(member, int(value))
            await anyio.sleep(int(value) / 1000)

    async def release(self, ticket: object, reply: Reply | None) -> None:
        """Report the end of a send: frees the slot after one interval, shares what the
        reply said about the budget.
        """
        if isinstance(ticket, _LocalTicket):
            await self._local.release(ticket.inner, reply)
            return
        assert isinstance(ticket, _Ticket)
        rate = reply.rate if reply is not None else None

        def number(value: float | int | None, scale: float = 1.0) -> int:
            return -1 if value is None else int(value * scale)

        args: list[str | int] = [
            ticket.member,
            reply.status if reply is not None else 0,
            number(reply.retry_after if reply is not None else None, 1000),
            number(rate.max_requests if rate else None),
            number(rate.interval if rate else None, 1000),
            number(rate.remaining if rate else None),
            number(rate.daily_remaining if rate else None),
            self.rate_limit.max_requests,
            int(self.rate_limit.interval * 1000),
            1 if self._adopt else 0,
            ticket.expired,
        ]
        try:
            with anyio.fail_after(self._timeout, shield=True):
                notes = await self._release_script(keys=self._keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            # The slot frees itself when its in-flight time runs out: conservative.
            logger.warning("could not report a reply to Redis (%s)", type(exc).__name__)
            return
        for note in notes or ():
            logger.debug(
                "shared rate limit: %s", note.decode() if isinstance(note, bytes) else note
            )
