"""One location's budget shared by many processes and machines, through Redis.

::

    from ghl_async import Client, RateLimit
    from ghl_async.ratelimit.redis import RedisLimiter     # pip install "ghl-async[redis]"

    limiter = RedisLimiter("redis://localhost:6379/0", key="location:ve9EPM428h8vShlRW1KT",
                           rate_limit=RateLimit(max_requests=100, interval=10.0))
    async with Client(token, limiter=limiter) as client:
        ...

The same rules as the in-process limiter (why they hold: docs/how-the-limiter-works.md),
kept in Redis. A sorted set holds one member per request, scored by its reply time (while
in flight: a moment ``in_flight_timeout`` ahead), so each constraint ``(max, interval)``
counts the members scored at or after ``now - interval``: the caller's cap and the server's
announced budget both hold in every window. One atomic script per acquire drops what
has expired and either takes a slot ("go") or names how long until one frees ("wait N
ms"); a waiting process sleeps that long, no polling storm. All times come from Redis's
own ``TIME``, so the machines' clocks do not matter; it reads whole milliseconds, so a
slot frees only once a whole interval has passed since its reply to the millisecond
(never early by the fraction ``TIME`` drops).

Until the first reply (of any process, whether or not it announces the budget), one
request goes at a time across all processes (the probe). A 429 seen by any process sets
a shared paused-until key; a spent daily budget sets a shared daily-until time. Every
acquire honours both, and a caller whose ``max_wait`` is shorter fails at once instead
of sleeping. The budget the server announces is shared
in a hash. The neighbour estimate is the local one: a second sorted set keeps the
requests the server refused, a third the reserved neighbour slots, and the hash counts
the sends of every process. The work of each
script is bounded: a handful of commands, plus at most the budget (clamped to 10,000)
of reserved slots moved or added. Every key expires on its own.

When Redis cannot be reached the limiter fails closed: :class:`LimiterUnavailable`
(nothing is sent). With ``on_redis_error="local"`` it falls back to an in-process
limiter at ``local_share`` of the budget and logs a warning.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Literal, NamedTuple

import anyio

try:
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "ghl_async.ratelimit.redis needs redis-py: pip install 'ghl-async[redis]'"
    ) from exc

from ghl_async._sansio import MAX_BUDGET, MAX_INTERVAL_MS, seconds_until_daily_reset
from ghl_async.errors import LimiterUnavailable
from ghl_async.ratelimit.budget import RateLimit
from ghl_async.ratelimit.local import LocalLimiter
from ghl_async.ratelimit.protocol import (
    Reply,
    queue_wait_error,
    refuse_long_wait,
    smaller_bound,
)

__all__ = ["RedisLimiter"]

logger = logging.getLogger("ghl_async")

# KEYS: slots (zset), paused-until (string), budget (hash), refused (zset), booked (zset)
# ARGV: member, default server max (-1: none), default server interval ms, in-flight ms,
#       shortest poll ms, number of caps, then each cap's max and interval ms
# Returns {0, now, held, sends} when a slot was taken (the send time, our slots of the
# server's budget held then and not refused, the sends before this one: for the release),
# {1, ms} to wait for the window, {2, ms} paused after a 429, {3, ms} daily budget spent.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local daily = tonumber(redis.call('HGET', KEYS[3], 'daily_until') or '0')
if daily > now then return {3, daily - now} end
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if paused > now then return {2, paused - now} end
local known = redis.call('HEXISTS', KEYS[3], 'replied') == 1
  or redis.call('HEXISTS', KEYS[3], 'max') == 1
if not known and redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf') > 0 then
  -- Until the first reply (of any process), one request at a time.
  return {1, math.max(10, tonumber(ARGV[5]))}
end
local smax = tonumber(redis.call('HGET', KEYS[3], 'max') or ARGV[2])
local sint = tonumber(redis.call('HGET', KEYS[3], 'interval') or ARGV[3])
local limits = {}
if smax > 0 and sint > 0 then table.insert(limits, {smax, sint, true}) end
local ncaps = tonumber(ARGV[6])
for i = 1, ncaps do
  table.insert(limits, {tonumber(ARGV[5 + 2 * i]), tonumber(ARGV[6 + 2 * i]), false})
end
local longest, shortest = 0, math.huge
for _, c in ipairs(limits) do
  longest = math.max(longest, c[2])
  shortest = math.min(shortest, c[2])
end
-- How soon to look again at a slot still in flight: its reply will bring it forward.
local poll = math.max(tonumber(ARGV[5]), math.floor(shortest / 20))
-- TIME drops the fraction of a millisecond: a slot replied at ``r`` ms (truly before
-- r + 1) is held through ``now = r + interval`` and frees after it, never early.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - longest))
-- Neighbour slots past their end wait for a reply, like a request in flight; with
-- nothing out (of any process) sent within the server's interval, one of them makes
-- way for this send (one out that long, hung or of a crashed process, is not waited
-- for). An in-flight member is scored its send time plus the in-flight time.
local probe = 0
local sspan = longest
if smax > 0 and sint > 0 then sspan = sint end
local recent = math.max(now, now - sspan + tonumber(ARGV[4]))
if redis.call('ZCOUNT', KEYS[5], '-inf', now) > 0
   and redis.call('ZCOUNT', KEYS[1], '(' .. recent, '+inf') == 0 then
  probe = 1
end
local wait = 0
for _, c in ipairs(limits) do
  local cmax, cint = c[1], c[2]
  local held = redis.call('ZCOUNT', KEYS[1], now - cint, '+inf')
  local booked = 0
  if c[3] then booked = redis.call('ZCARD', KEYS[5]) - probe end
  if held + booked >= cmax then
    -- The soonest slot to free; look again then (a larger shortfall looks again).
    local free = math.huge
    local first = redis.call('ZRANGEBYSCORE', KEYS[1], now - cint, '+inf',
                             'WITHSCORES', 'LIMIT', 0, 1)
    if first[2] then
      free = tonumber(first[2]) + cint + 1 - now
      if free > cint + 1 then free = math.min(free, poll) end
    end
    if booked > 0 then
      -- The soonest booked slot still before its end (one past it waits for a reply).
      local nb = redis.call('ZRANGEBYSCORE', KEYS[5], '(' .. now, '+inf', 'WITHSCORES',
                            'LIMIT', 0, 1)
      if nb[2] then free = math.min(free, tonumber(nb[2]) - now) end
    end
    if free == math.huge then free = poll end
    wait = math.max(wait, free)
  end
end
if wait > 0 then return {1, math.max(1, wait)} end
-- Our slots the server could still count, over its interval (the longest known while
-- it is unknown: more of ours, never a neighbour that is not there).
local window = longest
if smax > 0 and sint > 0 then window = sint end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - window)
local held = redis.call('ZCOUNT', KEYS[1], '(' .. (now - window), '+inf')
             - redis.call('ZCARD', KEYS[4])
local sends = redis.call('HINCRBY', KEYS[3], 'sends', 1) - 1
if probe == 1 then redis.call('ZPOPMIN', KEYS[5]) end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], longest + tonumber(ARGV[4]) + 60000)
return {0, now, held, sends}
"""

# KEYS: slots, paused-until, budget, refused, booked
# ARGV: member, status (0: no reply), retry-after ms (-1 none), server max (-1),
#       server interval ms (-1), remaining (-1), daily remaining (-1),
#       daily reset in ms (-1), sent (the acquire's now), default server max (-1: none),
#       default server interval ms, longest cap interval ms, held and sends at the send
_RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local status = tonumber(ARGV[2])
local sent = tonumber(ARGV[9])
local amax, aint = tonumber(ARGV[4]), tonumber(ARGV[5])
if amax > 0 and aint > 0 and aint <= MAXINT then
  amax = math.min(amax, MAXBUDGET)
  local was = redis.call('HMGET', KEYS[3], 'max', 'interval')
  if tonumber(was[1]) ~= amax or tonumber(was[2]) ~= aint then
    redis.call('HSET', KEYS[3], 'max', amax, 'interval', aint)
    -- Neighbour slots booked under another budget: no more than the new budget stay
    -- (the latest), none ending later than a booking under it would.
    local n = redis.call('ZCARD', KEYS[5])
    if n > amax then redis.call('ZREMRANGEBYRANK', KEYS[5], 0, n - amax - 1) end
    local latest = now + aint
    for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '(' .. latest, '+inf')) do
      redis.call('ZADD', KEYS[5], latest, m)
    end
  end
end
local smax = tonumber(redis.call('HGET', KEYS[3], 'max') or ARGV[10])
local sint = tonumber(redis.call('HGET', KEYS[3], 'interval') or ARGV[11])
local longest = math.max(sint, tonumber(ARGV[12]))
redis.call('ZADD', KEYS[1], 'XX', now, ARGV[1])
if status > 0 then redis.call('HSET', KEYS[3], 'replied', 1) end
local notes = {}
local daily = tonumber(ARGV[7])
local daily_429 = false
if daily >= 0 then redis.call('HSET', KEYS[3], 'daily_remaining', daily) end
if daily > 0 then redis.call('HDEL', KEYS[3], 'daily_until') end
if daily == 0 then
  local until_ = now + tonumber(ARGV[8])
  if until_ > tonumber(redis.call('HGET', KEYS[3], 'daily_until') or '0') then
    redis.call('HSET', KEYS[3], 'daily_until', until_)
    table.insert(notes, 'daily budget spent for ' .. ARGV[8] .. ' ms')
  end
  daily_429 = status == 429
end
if status == 429 then
  redis.call('ZADD', KEYS[4], now, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - longest)
  redis.call('PEXPIRE', KEYS[4], longest + 60000)
end
local remaining = tonumber(ARGV[6])
if remaining >= 0 and smax > 0 and sint > 0 and not daily_429 then
  local counted = smax - math.min(remaining, smax)
  local accepted = 1
  if status == 429 then accepted = 0 end
  local sends = tonumber(redis.call('HGET', KEYS[3], 'sends') or '0')
  local later = sends - tonumber(ARGV[14]) - 1
  local ours = tonumber(ARGV[13]) + accepted + later
  local theirs = counted - ours
  if theirs > 0 then
    local reserve = math.min(theirs + 1, smax)
    local ends = now + sint + 2 * (now - sent)
    -- Of ours, the server may not have counted the later sends and our slots that
    -- freed during the round trip (ours less what we hold now): up to that many more
    -- slots already booked are kept (never added).
    local edge = '(' .. (now - sint)
    local alive = redis.call('ZCOUNT', KEYS[1], edge, '+inf')
                  - redis.call('ZCOUNT', KEYS[4], edge, '+inf')
    local unsure = later + math.max(0, ours - alive)
    local n = redis.call('ZCARD', KEYS[5])
    local moved = math.min(reserve + unsure, smax, n)
    if moved > 0 then
      for _, m in ipairs(redis.call('ZRANGE', KEYS[5], n - moved, n - 1)) do
        redis.call('ZADD', KEYS[5], 'GT', ends, m)
      end
    end
    if reserve > moved then
      local base = redis.call('HINCRBY', KEYS[3], 'booked', reserve - moved)
      for i = 1, reserve - moved do
        redis.call('ZADD', KEYS[5], ends, 'n:' .. (base - i))
      end
      table.insert(notes, 'a neighbour holds ' .. theirs .. ': holding back '
                          .. (reserve - moved) .. ' more')
    end
    redis.call('PEXPIRE', KEYS[5], ends - now + 60000)
  end
end
if status == 429 and not daily_429 then
  local pause = tonumber(ARGV[3])
  if pause <= 0 then pause = sint end
  if pause <= 0 then pause = tonumber(ARGV[12]) end
  local until_ = now + pause
  local current = tonumber(redis.call('GET', KEYS[2]) or '0')
  if until_ > current then
    -- The pause stops the clock of every neighbour slot that would end in it.
    local start = math.max(now, current)
    local ending = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', until_, 'WITHSCORES')
    for i = 1, #ending, 2 do
      local ends = math.max(tonumber(ending[i + 1]), start) + (until_ - start)
      redis.call('ZADD', KEYS[5], ends, ending[i])
    end
    if #ending > 0 then redis.call('PEXPIRE', KEYS[5], until_ - now + sint + 60000) end
    redis.call('SET', KEYS[2], until_, 'PX', pause + 1000)
    table.insert(notes, 'paused ' .. pause .. ' ms')
  end
end
if status > 0 then
  -- A reply to a send made after a neighbour slot's end, that did not renew it, frees
  -- it: one slot per reply.
  local first = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
  if first[2] and tonumber(first[2]) <= sent then redis.call('ZREM', KEYS[5], first[1]) end
end
local keep = 86400000
local daily_until = tonumber(redis.call('HGET', KEYS[3], 'daily_until') or '0')
if daily_until > now then keep = math.max(keep, daily_until - now + 60000) end
redis.call('PEXPIRE', KEYS[3], keep)
redis.call('PEXPIRE', KEYS[1], longest + 120000)
return notes
""".replace("MAXBUDGET", str(MAX_BUDGET)).replace("MAXINT", str(MAX_INTERVAL_MS))


class _RedisTicket(NamedTuple):
    member: str
    sent: int  # Redis time of the acquire, ms
    held: int  # our slots of the server's budget held then, not refused
    sends: int  # sends of every process before this one


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
        ride_out: seconds an outage of Redis is waited out (reconnecting with backoff,
            one log line when it starts and one when it ends) before ``on_redis_error``
            applies; 0 (the default): at once. A worker that must survive a Redis
            restart sets it (the arq workers use 60).
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
        ride_out: float = 0.0,
    ) -> None:
        if not isinstance(key, str) or not key:
            raise ValueError("key must be a non-empty str")
        if on_redis_error not in ("raise", "local"):
            raise ValueError("on_redis_error must be 'raise' or 'local'")
        if not 0 < local_share <= 1:
            raise ValueError("local_share must be in (0, 1]")
        if not 0 <= ride_out < float("inf"):
            raise ValueError("ride_out must be a number of seconds, 0 or more")
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
        self._keys = [
            f"{base}:slots",
            f"{base}:paused",
            f"{base}:budget",
            f"{base}:refused",
            f"{base}:booked",
        ]
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
        self._ride_out = ride_out
        self._outage_since: float | None = None  # when Redis stopped answering

    def __repr__(self) -> str:
        return f"RedisLimiter(key={self._keys[0].rsplit(':', 1)[0]!r}, {self.rate_limit})"

    @property
    def keys(self) -> list[str]:
        """The Redis keys this limiter writes (slots, paused-until, budget, refused
        requests, neighbour slots).
        """
        return list(self._keys)

    async def aclose(self) -> None:
        """Close the Redis connection if the limiter opened it."""
        if self._owns_client:
            await self._redis.aclose()

    def _outage(self, exc: BaseException, backoff: float, deadline: float | None) -> float | None:
        """How long to wait before asking Redis again, or ``None``: stop waiting it out."""
        if not self._ride_out:
            return None
        now = anyio.current_time()
        if self._outage_since is None:
            self._outage_since = now
            logger.warning(
                "Redis is unavailable (%s): waiting up to %g s for it to come back",
                type(exc).__name__,
                self._ride_out,
            )
        left = self._outage_since + self._ride_out - now
        if deadline is not None:
            left = min(left, deadline - now)
        if left <= 0:
            return None
        return min(backoff, left)

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

    def _acquire_args(self, member: str) -> list[str | int]:
        default = RateLimit() if self._adopt else None
        cap = self.rate_limit
        caps: list[int] = [] if self._adopt else [cap.max_requests, _ms(cap.interval)]
        return [
            member,
            default.max_requests if default else -1,
            _ms(default.interval) if default else -1,
            self._in_flight_ms,
            10,
            len(caps) // 2,
            *caps,
        ]

    async def acquire(
        self, *, max_wait: float | None = None, max_pause: float | None = None
    ) -> object:
        """Wait for a slot in the shared window; returns the ticket for :meth:`release`.

        Raises :class:`~ghl_async.errors.RateLimitError` at once when a 429 seen by any
        process pauses the key longer than ``max_pause`` (or ``max_wait``), and
        :class:`~ghl_async.errors.DailyLimitExceeded` while the daily budget is spent.
        With ``max_wait``, a caller the script tells to wait past its deadline (the
        soonest slot frees too late: Redis knows no queue of waiters across processes,
        so this is the first slot, not the caller's place) raises
        :class:`~ghl_async.errors.RateLimitError` at once, without sleeping.
        """
        self._counter += 1
        member = f"{self._process}:{self._counter}"
        args = self._acquire_args(member)
        pause_bound = smaller_bound(max_wait, max_pause)
        deadline = None if max_wait is None else anyio.current_time() + max_wait
        backoff = _FIRST_BACKOFF
        while True:
            try:
                with anyio.fail_after(self._timeout):
                    answer = await self._acquire_script(keys=self._keys, args=args)
            except (RedisError, OSError, TimeoutError) as exc:
                pause = self._outage(exc, backoff, deadline)
                if pause is not None:
                    await anyio.sleep(pause)
                    backoff = min(backoff * 2, _MAX_BACKOFF)
                    continue
                self._unavailable(exc)
                local = self._local
                return _LocalTicket(await local.acquire(max_wait=max_wait, max_pause=max_pause))
            if self._outage_since is not None:
                lasted = anyio.current_time() - self._outage_since
                self._outage_since = None
                logger.warning("Redis is back after %.1f s: the shared rate limit goes on", lasted)
            if self._warned:
                self._warned = False
                logger.warning("Redis is back: the shared rate limit applies again")
            code, value, *more = (int(n) for n in answer)
            if code == 0:
                return _RedisTicket(member, value, *more)
            wait = value / 1000
            if code == 2:
                refuse_long_wait("pause", wait, pause_bound)
            elif code == 3:
                refuse_long_wait("daily", wait, pause_bound)
            if deadline is not None and anyio.current_time() + wait > deadline:
                assert max_wait is not None
                raise queue_wait_error(wait, max_wait)
            await anyio.sleep(wait)

    async def release(self, ticket: object, reply: Reply | None) -> None:
        """Report the end of a send: frees the slot after one interval, shares what the
        reply said about the budget.
        """
        if isinstance(ticket, _LocalTicket):
            await self._local.release(ticket.inner, reply)
            return
        assert isinstance(ticket, _RedisTicket)
        rate = reply.rate if reply is not None else None

        def number(value: int | None) -> int:
            return -1 if value is None else int(value)

        def ms(value: float | None) -> int:
            # Rounded, not truncated: 1.001 s is 1001 ms, and a Retry-After under a
            # millisecond is not "none" (-1, a whole interval's pause).
            return -1 if value is None or value <= 0 else _ms(value)

        reset_in = reply.daily_reset_in if reply is not None else None
        if reset_in is None and rate is not None and rate.daily_remaining == 0:
            # Spent, with no word on when it comes back: as the book assumes.
            assert reply is not None
            reset_in = seconds_until_daily_reset(time.time(), reply.retry_after)

        default = RateLimit() if self._adopt else None
        args: list[str | int] = [
            ticket.member,
            reply.status if reply is not None else 0,
            ms(reply.retry_after if reply is not None else None),
            number(rate.max_requests if rate else None),
            ms(rate.interval if rate else None),
            number(rate.remaining if rate else None),
            number(rate.daily_remaining if rate else None),
            ms(reset_in),
            ticket.sent,
            default.max_requests if default else -1,
            _ms(default.interval) if default else -1,
            0 if self._adopt else _ms(self.rate_limit.interval),
            ticket.held,
            ticket.sends,
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


# Reconnecting to Redis during an outage: 0.1 s, doubling, at most 0.5 s apart (a
# restart is back within a second of its end, not two).
_FIRST_BACKOFF = 0.1
_MAX_BACKOFF = 0.5


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
