"""An agency's locations exported across processes and machines, on arq.

::

    # worker.py, run with: arq worker.WorkerSettings   (pip install "ghl-async[arq]")
    from arq.connections import RedisSettings
    from ghl_async.export.jobs import worker_settings

    WorkerSettings = worker_settings(
        tokens={"ve9EPM428h8vShlRW1KT": "pit-..."},      # or an async provider
        redis_settings=RedisSettings.from_dsn("redis://localhost:6379/0"),
    )

    # anywhere: enqueue one job per location, then read progress from Redis
    from arq import create_pool
    from ghl_async.export.jobs import enqueue_locations, read_run

    redis = await create_pool(RedisSettings.from_dsn("redis://localhost:6379/0"))
    run = await enqueue_locations(redis, ["ve9EPM428h8vShlRW1KT", ...], to="postgresql://...")
    print(await read_run(redis, run))

One job per location. A location's throughput is capped by its own budget, which one
job already saturates, so splitting a location over workers would gain nothing; whole
locations balance across workers because an idle worker takes the next one off the
queue. Each job runs the export pipeline (:func:`ghl_async.export.export_location`: the
location export route, 500 messages a request, with its conversation-by-conversation
fallback) into a sink: the database a ``to`` URL names (``sqlite:///`` or
``postgresql://``; each job opens its own connection) or, with ``out_dir``, one JSON
Lines part per location. It draws on one :class:`~ghl_async.ratelimit.redis.RedisLimiter`
key per location (every worker shares it) and records its state in Redis for
:func:`read_run`.

A worker that dies (``kill -9``, a lost machine) holds the job's arq in-progress key
until it expires; a running job renews that key every few seconds and shortens it to
``lease`` seconds, so a dead worker's job is picked up by another worker ``lease``
seconds later rather than after arq's ``job_timeout + 10``. The sink commits every page
with the location's state, so the retry resumes where the sink says: every message
exactly once.

One try writes a location at a time: a try holds the location in Redis (a key renewed
with the lease). A try that finds another alive there waits for it without using up a
try; a try frozen past its lease (a long pause, a VM migration) finds on its return that
another holds the location, commits nothing more and waits in turn. An outage of Redis
of up to ``ride_out`` seconds (60) is waited out by the jobs, their rate limiter and
(with ``ghl-async worker``) the worker's own polling, said in one line when it starts
and one when it ends (:class:`RideOut`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Protocol, TypeVar, cast

import msgspec

try:
    from arq.connections import ArqRedis
    from arq.constants import in_progress_key_prefix, retry_key_prefix
    from arq.jobs import Job, JobStatus
    from arq.worker import Function, Retry, func
    from redis.exceptions import ConnectionError as _RedisConnectionError
    from redis.exceptions import TimeoutError as _RedisTimeoutError
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("ghl_async.export.jobs needs arq: pip install 'ghl-async[arq]'") from exc

from ghl_async import errors
from ghl_async._params import CHANNELS, check_since
from ghl_async._validation import check_id
from ghl_async.client import DEFAULT_BASE_URL, Client
from ghl_async.export.pipeline import ExportResult
from ghl_async.export.pipeline import export_location as _export_into
from ghl_async.export.sink import Batch, ExportState, Sink
from ghl_async.export.targets import describe, sink_for
from ghl_async.ratelimit import RateLimit
from ghl_async.ratelimit.protocol import Limiter, Reply
from ghl_async.ratelimit.redis import RedisLimiter
from ghl_async.stats import ClientStats

__all__ = [
    "EXPORT_LOCATION",
    "JobMetrics",
    "REDIS_DOWN",
    "LocationState",
    "RedisGone",
    "RideOut",
    "RunState",
    "Tokens",
    "enqueue_locations",
    "export_location",
    "functions",
    "job_id",
    "latest_run",
    "part_path",
    "read_run",
    "startup",
    "worker_settings",
]

EXPORT_LOCATION = "ghl_async.export_location"
"""The arq function name of :func:`export_location`."""

Tokens = Mapping[str, str] | Callable[[str], Awaitable[str]]
"""Where a location's token comes from: a static map, or ``async (location_id) -> token``."""

Mode = Literal["new", "resume", "force"]

_PREFIX = "ghl_async:"
_RUNS = f"{_PREFIX}runs"  # sorted set: run id scored by its start time
_KEEP = 7 * 86400  # a run's status keys expire a week after their last write
_CTX = "ghl_async"
_REDIS_TIMEOUT = 10.0
_WORKER = f"{socket.gethostname()}:{os.getpid()}"
_RIDE_OUT = 60.0  # seconds a Redis outage is waited out by default

logger = logging.getLogger("ghl_async.jobs")

T = TypeVar("T")

REDIS_DOWN: tuple[type[BaseException], ...] = (
    _RedisConnectionError,  # refused, reset, and LOADING after a restart
    _RedisTimeoutError,
    OSError,
    asyncio.TimeoutError,
)
"""What a Redis that is down (or restarting) raises: waited out by :class:`RideOut`."""


# Reconnecting during an outage: 0.1 s, doubling, at most 0.5 s apart. A worker is back
# at work within half a second of Redis (a few connection attempts a second cost nothing).
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 0.5


class RedisGone(Exception):
    """Redis stayed unreachable longer than the outage a :class:`RideOut` waits out."""


class RideOut:
    """Waits out a Redis outage of up to ``seconds``: one line when it starts, one when
    it ends, no traceback.

    One per process, shared by everything that talks to Redis there (a worker's poll
    loop and its jobs): an outage is one outage, said once. Past ``seconds`` every
    caller gets :class:`RedisGone`.

    ::

        ride = RideOut(60)
        run = await ride.call(lambda: read_run(redis, run_id))
    """

    def __init__(self, seconds: float = _RIDE_OUT, say: Callable[[str], None] | None = None):
        if not 0 <= seconds < float("inf"):
            raise ValueError("the outage to ride out must be a number of seconds, 0 or more")
        self.seconds = seconds
        self._say = say or logger.warning
        self._since: float | None = None  # when Redis stopped answering
        self.outages = 0

    @property
    def down(self) -> bool:
        """Redis is not answering now."""
        return self._since is not None

    def failed(self, exc: BaseException) -> float:
        """Note a call Redis did not answer; the seconds left to wait.

        Raises:
            RedisGone: the outage has lasted ``seconds``.
        """
        now = time.monotonic()
        if self._since is None:
            self._since = now
            self.outages += 1
            self._say(
                f"Redis is unavailable ({type(exc).__name__}): waiting up to "
                f"{self.seconds:g} s for it to come back"
            )
        left = self._since + self.seconds - now
        if left <= 0:
            raise RedisGone(f"Redis was unavailable for over {self.seconds:g} s")
        return left

    def answered(self) -> None:
        """Note a call Redis answered: an outage under way is over."""
        if self._since is not None:
            self._say(f"Redis is back after {time.monotonic() - self._since:.1f} s")
            self._since = None

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()``, again with backoff (0.1 s doubling to 0.5 s) while Redis is down."""
        backoff = FIRST_BACKOFF
        while True:
            try:
                result = await fn()
            except REDIS_DOWN as exc:
                left = self.failed(exc)
                await asyncio.sleep(min(backoff, left))
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            self.answered()
            return result


class LocationState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One location's job as the workers last reported it.

    Attributes:
        location_id: the location.
        state: ``queued``, ``running``, ``done`` or ``failed`` (the job gave up: see
            ``error``).
        messages: messages the sink holds for the location so far (its committed
            state's count: after a retry, those of the tries before too).
        pages: pages this try committed.
        fallback: the export route was refused: the location is paged conversation by
            conversation.
        tries: the arq try that last reported (2 and up: resumed after a failure).
        worker: ``host:pid`` of the worker that last reported.
        error: why the job failed (or why the try before was retried), one line.
        updated: when this was written (Unix time).
    """

    location_id: str
    state: Literal["queued", "running", "done", "failed"] = "queued"
    messages: int = 0
    pages: int = 0
    fallback: bool = False
    tries: int = 0
    worker: str | None = None
    error: str | None = None
    updated: float = 0.0

    @property
    def settled(self) -> bool:
        """Done or failed: nothing more will happen to it."""
        return self.state in ("done", "failed")


class RunState(msgspec.Struct, kw_only=True):
    """A run of :func:`enqueue_locations`: what it asked for and where each location is.

    Attributes:
        run_id: the run.
        where: where it writes: the part files' directory, or the sink URL with any
            password replaced by ``***``.
        started: when it was enqueued (Unix time).
        locations: each location's state, in the order enqueued.
    """

    run_id: str
    where: str
    started: float
    locations: list[LocationState] = msgspec.field(default_factory=list)

    @property
    def messages(self) -> int:
        """Messages written across every location."""
        return sum(s.messages for s in self.locations)

    @property
    def settled(self) -> int:
        """Locations done or failed."""
        return sum(1 for s in self.locations if s.settled)

    @property
    def finished(self) -> bool:
        """Every location settled."""
        return self.settled == len(self.locations)

    @property
    def ok(self) -> bool:
        """Every location done."""
        return all(s.state == "done" for s in self.locations)


class _Meta(msgspec.Struct, kw_only=True):
    """A run's record in Redis.

    ``to`` may hold a password: jobs read it from here rather than take it as an
    argument, because arq logs a job's arguments.
    """

    started: float
    locations: list[str]
    out_dir: str = ""
    to: str = ""
    where: str = ""


_state_decoder = msgspec.json.Decoder(LocationState)
_meta_decoder = msgspec.json.Decoder(_Meta)
_encoder = msgspec.json.Encoder()


def _meta_key(run_id: str) -> str:
    return f"{_PREFIX}run:{run_id}"


def _states_key(run_id: str) -> str:
    return f"{_PREFIX}run:{run_id}:locations"


def job_id(run_id: str, location_id: str) -> str:
    """The arq job id of a location in a run: enqueuing it twice runs it once."""
    return f"{_PREFIX}{run_id}:{location_id}"


def part_path(out_dir: str, location_id: str) -> str:
    """A location's JSON Lines part under ``out_dir`` (its checkpoint is beside it)."""
    return os.path.join(out_dir, f"{location_id}.jsonl")


def _with_cause(reason: str, last: str | None) -> str:
    """The reason arq gave up, after the cause the last try reported (HTTP status
    and message), when there is one.
    """
    if not last or last.startswith("waiting:"):
        return reason
    cause = last.removesuffix("; retrying")
    if cause.startswith("try ") and ": " in cause:
        cause = cause.split(": ", 1)[1]
    return f"{cause} ({reason})"


# A location's report, unless the location is done already and this report is not:
# a try that waited, or lost the location, says nothing over the try that finished it.
_REPORT = """
if ARGV[3] ~= 'done' then
  local current = redis.call('HGET', KEYS[1], ARGV[1])
  if current then
    local ok, was = pcall(cjson.decode, current)
    if ok and was['state'] == 'done' then return 0 end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


async def _write_state(redis: ArqRedis, run_id: str, state: LocationState) -> None:
    state.updated = time.time()
    await _eval(
        redis,
        _REPORT,
        _states_key(run_id),
        state.location_id,
        _encoder.encode(state).decode(),
        state.state,
        _KEEP,
    )


async def _read_meta(redis: ArqRedis, run_id: str) -> _Meta | None:
    raw = await redis.get(_meta_key(run_id))
    return None if raw is None else _meta_decoder.decode(raw)


def _iso(when: datetime | None, what: str) -> str | None:
    return None if when is None else check_since(when, what).isoformat()


async def enqueue_locations(
    redis: ArqRedis,
    locations: Iterable[str],
    out_dir: str | None = None,
    *,
    to: str | None = None,
    run_id: str | None = None,
    mode: Mode = "new",
    since: datetime | None = None,
    until: datetime | None = None,
    channel: str | None = None,
    contact_id: str | None = None,
    email_bodies: bool = False,
    base_url: str = DEFAULT_BASE_URL,
    rate_limit: RateLimit | None = None,
    concurrency: int = 4,
    queue_name: str | None = None,
) -> str:
    """Enqueue one :func:`export_location` job per location; returns the run id.

    Each job exports the whole location (the export pipeline, page by page) into a
    sink: either ``to``, a ``sqlite:///path.db`` or ``postgresql://...`` URL every
    worker reaches (each job opens its own connection; a location's export state lives
    in the database, so the job resumes wherever it stopped), or ``out_dir``, a
    directory every worker sees (a shared volume), one JSON Lines part per location
    (:func:`part_path`).

    ``mode`` is what a first try does with what a location already has there: with
    ``out_dir``, refuse an existing part (``new``), continue it (``resume``) or replace
    it (``force``); with ``to``, ``new`` and ``resume`` both go on from the state the
    database holds, ``force`` starts again from the first page (rows are upserted by
    id). A retry always resumes. ``since``/``until`` (timezone-aware, inclusive),
    ``channel``, ``contact_id`` and ``email_bodies`` filter as
    :func:`ghl_async.export.export_location` does. Tokens never travel through Redis:
    each worker gets them from its own :func:`startup`. The ``to`` URL is kept in the
    run's record in Redis, not in the jobs' arguments (which arq logs).

    Raises:
        TypeError, ValueError: not exactly one of ``out_dir`` and ``to``, a URL that
            names no sink, a naive date, ``since`` after ``until``, an unknown channel
            or a bad id; before anything is enqueued.
    """
    if (out_dir is None) == (to is None):
        raise ValueError("give exactly one of out_dir (JSON Lines parts) and to (a sink URL)")
    if to is not None:
        sink_for(to)  # a URL that names no sink is refused here, not by every job
        where = describe(to).strip("'")
    else:
        assert out_dir is not None
        where = out_dir
    if mode not in ("new", "resume", "force"):
        raise ValueError(f"mode must be 'new', 'resume' or 'force', not {mode!r}")
    if channel is not None and channel not in CHANNELS:
        raise ValueError(f"{channel!r} is not a channel; valid: {', '.join(CHANNELS)}")
    if contact_id is not None:
        check_id(contact_id, "contact_id")
    since_text, until_text = _iso(since, "since"), _iso(until, "until")
    if since is not None and until is not None and since > until:
        raise ValueError(f"since ({since_text}) is after until ({until_text})")
    run_id = run_id or time.strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(3)
    ids = [check_id(location_id, "location id") for location_id in dict.fromkeys(locations)]
    now = time.time()
    meta = _Meta(out_dir=out_dir or "", to=to or "", where=where, started=now, locations=ids)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(_meta_key(run_id), _encoder.encode(meta), ex=_KEEP)
        pipe.zadd(_RUNS, {run_id: now})
        if ids:
            pipe.hset(
                _states_key(run_id),
                mapping={
                    i: _encoder.encode(LocationState(location_id=i, updated=now)) for i in ids
                },
            )
            pipe.expire(_states_key(run_id), _KEEP)
        await pipe.execute()
    rate = None if rate_limit is None else [rate_limit.max_requests, rate_limit.interval]
    for location_id in ids:
        await redis.enqueue_job(
            EXPORT_LOCATION,
            location_id,
            run_id=run_id,
            mode=mode,
            since=since_text,
            until=until_text,
            channel=channel,
            contact_id=contact_id,
            email_bodies=email_bodies,
            base_url=base_url,
            rate=rate,
            concurrency=concurrency,
            _job_id=job_id(run_id, location_id),
            _queue_name=queue_name,
        )
    return run_id


async def latest_run(redis: ArqRedis) -> str | None:
    """The id of the run enqueued last, or ``None``."""
    newest = await redis.zrange(_RUNS, -1, -1)
    return newest[0].decode() if newest else None


async def read_run(
    redis: ArqRedis, run_id: str | None = None, *, ask_arq_after: float = 2.0
) -> RunState | None:
    """A run's state from Redis (the latest run by default); ``None`` when unknown.

    A job that arq itself gave up on (its tries used up by dying workers) never reports:
    such a location reads as ``failed`` with arq's reason. arq is asked only about a
    location unsettled and quiet for ``ask_arq_after`` seconds (a run of 500 locations
    is read several times a second).
    """
    run_id = run_id or await latest_run(redis)
    if run_id is None:
        return None
    meta = await _read_meta(redis, run_id)
    if meta is None:
        return None
    raw: dict[bytes, bytes] = await redis.hgetall(_states_key(run_id))  # type: ignore[misc]
    states = {k.decode(): _state_decoder.decode(v) for k, v in raw.items()}
    run = RunState(run_id=run_id, where=meta.where or meta.out_dir, started=meta.started)
    for location_id in meta.locations:
        state = states.get(location_id) or LocationState(location_id=location_id)
        # A job arq gave up on leaves its last report behind: ask arq about quiet ones.
        if not state.settled and time.time() - state.updated >= ask_arq_after:
            job = Job(job_id(run_id, location_id), redis)
            if await job.status() == JobStatus.complete:
                info = await job.result_info()
                if info is not None and not info.success:
                    state.state = "failed"
                    state.error = _with_cause(f"arq: {info.result}", state.error)
        run.locations.append(state)
    return run


# The location's owner: at most one try of a run writes a location at a time. 0 when the
# key is (now) this try's, else the milliseconds until it frees (the holder's lease).
_TAKE = """
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 0
end
local left = redis.call('PTTL', KEYS[1])
if left < 1 then left = tonumber(ARGV[2]) end
return left
"""
# Renewed only while it is still this try's: 1, else 0 (taken over, or gone).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


async def _eval(redis: ArqRedis, script: str, key: str, *args: str | int) -> int:
    # redis-py types an async reply as ``Awaitable[str] | str``; the pool awaits.
    reply = redis.eval(script, 1, key, *args)  # type: ignore[arg-type]
    return int(await cast("Awaitable[Any]", reply))


def _owner_key(run_id: str, location_id: str) -> str:
    return f"{_PREFIX}run:{run_id}:owner:{location_id}"


class _HandedOver(Exception):
    """The try lost the location to another (it was frozen past its lease)."""


class _Owner:
    """A try's hold on a location: taken, renewed every lease / 3, checked before a commit.

    A worker frozen past its lease (a long pause, a VM migration) finds on its return
    that another try holds the location: its next commit raises :class:`_HandedOver`
    instead of writing, and the try waits for the location like any other.
    """

    def __init__(self, redis: ArqRedis, key: str, lease: float, ride: RideOut) -> None:
        self._redis = redis
        self._key = key
        self._lease_ms = max(1, int(lease * 1000))
        self._lease = lease
        self._ride = ride
        self.token = f"{_WORKER}:{secrets.token_hex(4)}"
        self.held = False
        self.lost = False
        self._confirmed = 0.0  # monotonic time the hold was last confirmed

    async def take(self) -> float:
        """0 when the location is now this try's, else seconds until it frees."""
        left = await self._ride.call(
            lambda: _eval(self._redis, _TAKE, self._key, self.token, self._lease_ms)
        )
        self.held = int(left) == 0
        if self.held:
            self.lost = False
            self._confirmed = time.monotonic()
        return int(left) / 1000

    async def holder(self) -> str | None:
        raw = await self._ride.call(lambda: self._redis.get(self._key))
        if raw is None:
            return None
        return str(raw.decode() if isinstance(raw, bytes) else raw).rsplit(":", 1)[0]

    async def renew(self) -> None:
        """Keep the hold (called every lease / 3); note when another try has it."""
        if not self.held:
            return
        ours = await _eval(self._redis, _RENEW, self._key, self.token, self._lease_ms)
        if int(ours):
            self._confirmed = time.monotonic()
        else:
            self.held, self.lost = False, True

    async def confirm(self, *, now: bool = False) -> None:
        """Before a commit: still this try's (asked again when not confirmed lately, or
        ``now``).

        Raises:
            _HandedOver: another try holds the location now.
        """
        if self.held and (now or time.monotonic() - self._confirmed > self._lease / 4):
            await self._ride.call(self.renew)
        if not self.held:
            raise _HandedOver

    async def release(self) -> None:
        if self.held:
            self.held = False
            with contextlib.suppress(*REDIS_DOWN):
                await _eval(self._redis, _RELEASE, self._key, self.token)


class _Fenced:
    """A sink that commits only while its try holds the location (:class:`_Owner`)."""

    def __init__(self, sink: Sink, owner: _Owner) -> None:
        self._sink = sink
        self._owner = owner

    async def __aenter__(self) -> _Fenced:
        await self._sink.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._sink.__aexit__(exc_type, exc, tb)

    async def load(self, location_id: str) -> ExportState | None:
        return await self._sink.load(location_id)

    async def commit(self, batch: Batch) -> None:
        await self._owner.confirm()
        await self._sink.commit(batch)


async def _keep(redis: ArqRedis, key: str, lease: float, owner: _Owner) -> None:
    """The try's lease: its arq in-progress key and its hold on the location, renewed
    every lease / 3. A call Redis does not answer is tried again at the next renewal.
    """
    while True:
        with contextlib.suppress(*REDIS_DOWN):
            # PEXPIRE never recreates the key, so a renewal after arq deleted it is harmless.
            await redis.pexpire(key, int(lease * 1000))
            await owner.renew()
        await asyncio.sleep(lease / 3)


class _Resources:
    """What a worker's jobs share: the token source and options from :func:`startup`."""

    def __init__(
        self,
        tokens: Tokens,
        lease: float,
        report_every: float,
        *,
        max_tries: int | None = None,
        ride: RideOut | None = None,
        metrics: JobMetrics | None = None,
    ) -> None:
        self.tokens = tokens
        self.lease = lease
        self.report_every = report_every
        self.max_tries = max_tries
        self.ride = ride or RideOut()
        self.metrics = metrics

    async def token(self, location_id: str) -> str:
        if isinstance(self.tokens, Mapping):
            try:
                return self.tokens[location_id]
            except KeyError:
                raise errors.AuthenticationError(
                    f"this worker has no token for location {location_id}"
                ) from None
        return await self.tokens(location_id)


class JobMetrics(Protocol):
    """Where a worker's jobs report as they go (:class:`ghl_async.export.metrics.WorkerMetrics`
    serves them to Prometheus).
    """

    def location(self, state: str, change: int) -> None:
        """A location entering (+1) or leaving (-1) ``queued``, ``running``, ``done`` or
        ``failed``.
        """
        ...

    def client(
        self, stats: ClientStats, messages: int, before: tuple[int, ...]
    ) -> tuple[int, ...]:
        """A job's client counts and messages written, against what the last call
        returned (``()`` at first); returns what to pass next time.
        """
        ...

    def waited(self, seconds: float) -> None:
        """A request waited ``seconds`` for a slot of its location's budget."""
        ...


class _Timed:
    """A limiter whose every acquire's wait is reported to the worker's metrics."""

    def __init__(self, limiter: RedisLimiter, metrics: JobMetrics) -> None:
        self._limiter = limiter
        self._metrics = metrics

    async def acquire(
        self, *, max_wait: float | None = None, max_pause: float | None = None
    ) -> object:
        started = time.monotonic()
        try:
            return await self._limiter.acquire(max_wait=max_wait, max_pause=max_pause)
        finally:
            self._metrics.waited(time.monotonic() - started)

    async def release(self, ticket: object, reply: Reply | None) -> None:
        await self._limiter.release(ticket, reply)


async def startup(
    ctx: dict[str, Any],
    *,
    tokens: Tokens,
    lease: float = 30.0,
    report_every: float = 0.5,
    max_tries: int | None = None,
    ride_out: float = _RIDE_OUT,
    ride: RideOut | None = None,
    metrics: JobMetrics | None = None,
) -> None:
    """Prepare a worker's ``ctx`` for ghl_async's jobs; call it from your ``on_startup``.

    Args:
        ctx: arq's worker context.
        tokens: a location's token: a map, or an async provider (OAuth minting).
        lease: seconds after which a dead worker's job is run again elsewhere.
        report_every: seconds between a job's progress writes to Redis.
        max_tries: the jobs' ``max_tries`` (as given to :func:`functions`): the last try
            of a location that keeps failing fails it with the HTTP cause rather than
            leave arq's "max retries exceeded".
        ride_out: seconds a Redis outage is waited out (with backoff) before a job gives
            up.
        ride: the process's :class:`RideOut`, to share one instead (one line per outage).
        metrics: where jobs report their counts (``None``: nowhere).
    """
    if not (0 < lease < float("inf")) or not (0 < report_every < float("inf")):
        raise ValueError("lease and report_every must be positive")
    ctx[_CTX] = _Resources(
        tokens,
        lease,
        report_every,
        max_tries=max_tries,
        ride=ride or RideOut(ride_out),
        metrics=metrics,
    )


def _open_sink(meta: _Meta, location_id: str, mode: Mode) -> Sink:
    """The sink a job writes ``location_id`` into, not yet opened."""
    if meta.to:
        return sink_for(meta.to)
    from ghl_async.export.jsonl import JsonlSink

    os.makedirs(meta.out_dir, exist_ok=True)
    return JsonlSink(part_path(meta.out_dir, location_id), mode=mode)


def _parse_date(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


async def export_location(
    ctx: dict[str, Any],
    location_id: str,
    *,
    run_id: str,
    mode: Mode = "new",
    since: str | None = None,
    until: str | None = None,
    channel: str | None = None,
    contact_id: str | None = None,
    email_bodies: bool = False,
    base_url: str = DEFAULT_BASE_URL,
    rate: Sequence[float] | None = None,
    concurrency: int = 4,
) -> dict[str, Any]:
    """The arq job: every message of one location into the run's sink, resumably.

    The sink is the one the run names (:func:`enqueue_locations`); ``since`` and
    ``until`` are ISO 8601 texts. A retry (``job_try`` 2 and up, after a worker died or
    a transient failure) resumes from the state the sink committed. One try at a time
    writes a location: a try that finds another alive on it waits for it (and gives its
    try back to arq: contention is no failure); a try frozen past its lease hands over
    at its next commit and waits too. Returns the location's final
    :class:`LocationState` as a dict.
    """
    resources: _Resources = ctx[_CTX]
    redis: ArqRedis = ctx["redis"]
    ride = resources.ride
    try_number = int(ctx.get("job_try") or 1)
    owner = _Owner(redis, _owner_key(run_id, location_id), resources.lease, ride)
    keeper = asyncio.create_task(
        _keep(redis, in_progress_key_prefix + str(ctx["job_id"]), resources.lease, owner)
    )
    state = LocationState(
        location_id=location_id, state="running", tries=try_number, worker=_WORKER
    )
    metrics = resources.metrics
    shown = "queued"
    meta: _Meta | None = None
    pending: set[asyncio.Task[None]] = set()  # progress writes under way

    def show(now: str) -> None:
        nonlocal shown
        if metrics is not None and now != shown:
            metrics.location(shown, -1)
            metrics.location(now, +1)
        shown = now

    async def report() -> None:
        # A report must not be overtaken by an earlier one still under way.
        await asyncio.gather(*pending, return_exceptions=True)
        await ride.call(lambda: _write_state(redis, run_id, state))

    show("running")
    try:
        meta = await ride.call(lambda: _read_meta(redis, run_id))
        if meta is None:
            raise _Failed(f"run {run_id} is no longer in Redis (kept {_KEEP // 86400} days)")
        # A first try whose lease ran out before it opened the sink (its loop stalled)
        # may start after a later try wrote the location: it must resume, not refuse
        # ("new") or start again ("force").
        retrying = try_number > 1 or await ride.call(
            lambda: _tried_since(redis, run_id, location_id)
        )
        token = await resources.token(location_id)
        limiter = _limiter(redis, location_id, rate, resources)
        gave_back = False
        waited_for: str | None = None
        while True:
            wait = await owner.take()
            if wait:
                # Another try is alive on the location: wait for it, without using a try.
                if try_number > 1 and not gave_back:
                    gave_back = True
                    await ride.call(lambda: _give_back_try(redis, str(ctx["job_id"])))
                stored = await ride.call(lambda: _read_state(redis, run_id, location_id))
                if stored is not None and stored.state == "done":
                    # The other try finished (it lets go before it says so): so is this
                    # (counted where it was done).
                    show("queued")
                    await _finish(keeper, owner)
                    return msgspec.to_builtins(stored)  # type: ignore[no-any-return]
                holder = await owner.holder()
                if holder is not None and holder != waited_for:
                    waited_for = holder
                    # Said on the state as the holder last reported it: its progress stays.
                    shown_state = stored or state
                    shown_state.error = f"waiting: {holder} is writing the location"
                    await ride.call(functools.partial(_write_state, redis, run_id, shown_state))
                await asyncio.sleep(min(wait + 0.01, resources.lease / 3))
                continue
            if gave_back:
                # The location is this try's now: it counts again.
                gave_back = False
                await ride.call(lambda: _take_back_try(redis, str(ctx["job_id"])))
            first_mode: Mode = "resume" if retrying or waited_for else mode
            # With a database, "force" starts the location again; JSON Lines does it itself.
            resume = not (meta.to and first_mode == "force")
            sink = _Fenced(_open_sink(meta, location_id, first_mode), owner)
            try:
                result = await _export_held(
                    sink,
                    location_id,
                    token=token,
                    base_url=base_url,
                    limiter=limiter if metrics is None else _Timed(limiter, metrics),
                    concurrency=concurrency,
                    resume=resume,
                    state=state,
                    run_id=run_id,
                    redis=redis,
                    report=report,
                    pending=pending,
                    every=resources.report_every,
                    metrics=metrics,
                    options={
                        "since": _parse_date(since),
                        "until": _parse_date(until),
                        "channel": channel,
                        "contact_id": contact_id,
                        "email_bodies": email_bodies,
                    },
                )
            except _HandedOver:
                # Frozen past the lease: another try has the location. Wait for it and
                # resume from what the sink holds then (done, most often).
                retrying = True
                waited_for = None
                continue
            except errors.SinkError as exc:
                if not _locked_out(exc):
                    if await _lost(owner):
                        # Frozen mid-commit past its lease: the database ended the
                        # transaction; another try has the location. Not a failure.
                        retrying, waited_for = True, None
                        continue
                    raise
                # The part's lock is held by a try that lost the location but has not
                # yet seen it (it was frozen): it lets go at its next commit.
                await owner.release()
                retrying = True
                state.error = f"waiting: {exc}"
                await report()
                await asyncio.sleep(resources.lease / 3)
                continue
            break
        state.error = None
        if result.state is not None:
            state.messages, state.fallback = result.state.messages, result.state.fallback
        state.pages = result.pages
        state.state = "done"
    except _Failed as exc:
        state.state, state.error = "failed", str(exc)
    except ValueError as exc:  # the sink holds this location exported with other filters
        again = (
            "export it into another database"
            if meta and meta.to
            else "start again with --force (mode='force')"
        )
        state.state, state.error = (
            "failed",
            str(exc).replace("pass resume=False to start again", again),
        )
    except errors.SinkError as exc:
        state.state, state.error = "failed", str(exc)
    except errors.GHLError as exc:
        last = resources.max_tries is not None and try_number >= resources.max_tries
        if exc.stops_fan_out or last:
            # A refused token, a spent day; or the last try: fail with the cause, not
            # arq's "max retries exceeded".
            state.state, state.error = "failed", str(exc)
        else:
            # A request failed for now: run again later, from the sink's state.
            state.state, state.error = "running", f"try {try_number}: {exc}; retrying"
            show("queued")
            await _finish(keeper, owner)
            await report()
            raise Retry(defer=min(60, 2**try_number)) from None
    except RedisGone:
        # The worker ends too: the location stays as the sink left it, for a later try.
        show("queued")
        await _finish(keeper, owner)
        raise asyncio.CancelledError from None
    except BaseException:
        show("queued")
        await _finish(keeper, owner)
        raise
    show(state.state)
    await _finish(keeper, owner)
    await report()
    return msgspec.to_builtins(state)  # type: ignore[no-any-return]


def _limiter(
    redis: ArqRedis, location_id: str, rate: Sequence[float] | None, resources: _Resources
) -> RedisLimiter:
    """The location's budget, shared by every worker through Redis."""
    limit = RateLimit(int(rate[0]), float(rate[1])) if rate else None
    # A worker running many locations can keep a Redis reply waiting on its own loop for
    # over a second: a 1 s timeout would fail requests of a healthy Redis. The slot of a
    # request a dead worker sent frees within its lease (when no reply announced the
    # budget, it is the one probe: every worker waits for it); an outage of Redis is
    # waited out as long as the worker waits it out.
    return RedisLimiter(
        redis,
        key=f"location:{location_id}",
        rate_limit=limit,
        timeout=_REDIS_TIMEOUT,
        in_flight_timeout=resources.lease,
        ride_out=resources.ride.seconds,
    )


async def _lost(owner: _Owner) -> bool:
    """The try no longer holds its location (asked of Redis now)."""
    try:
        await owner.confirm(now=True)
    except _HandedOver:
        return True
    return False


async def _finish(keeper: asyncio.Task[None], owner: _Owner) -> None:
    # Cancelled until it is done: a cancellation that lands inside a Redis call can come
    # out as a TimeoutError (async-timeout before Python 3.11), which the keeper waits
    # out like any Redis trouble, and one cancel() alone would then leave it running.
    while not keeper.done():
        keeper.cancel()
        await asyncio.wait({keeper}, timeout=0.1)
    if not keeper.cancelled():
        keeper.exception()  # retrieved: never "exception was never retrieved"
    await owner.release()


async def _export_held(
    sink: _Fenced,
    location_id: str,
    *,
    token: str,
    base_url: str,
    limiter: Limiter,
    concurrency: int,
    resume: bool,
    state: LocationState,
    run_id: str,
    redis: ArqRedis,
    report: Callable[[], Awaitable[None]],
    pending: set[asyncio.Task[None]],
    every: float,
    metrics: JobMetrics | None,
    options: dict[str, Any],
) -> ExportResult:
    """One export of the location while this try holds it, into ``sink``."""
    last_write = time.monotonic()
    client: Client | None = None
    counted: tuple[int, ...] = (0, 0, 0, 0)
    written = 0

    def progress(result: ExportResult) -> None:
        nonlocal last_write, counted, written
        written = result.messages
        if result.state is not None:
            state.messages = result.state.messages
            state.fallback = result.state.fallback
        state.pages = result.pages
        if metrics is not None and client is not None:
            counted = metrics.client(client.stats, result.messages, counted)
        if time.monotonic() - last_write >= every and not pending:
            last_write = time.monotonic()
            task = asyncio.ensure_future(_report_quietly(redis, run_id, state))
            pending.add(task)
            task.add_done_callback(pending.discard)

    async with sink:
        held = await sink.load(location_id) if resume else None
        if held is not None:
            state.messages, state.fallback = held.messages, held.fallback
        state.error = None
        await report()
        last_write = time.monotonic()
        async with Client(
            token, base_url=base_url, limiter=limiter, max_concurrency=concurrency
        ) as client:
            try:
                result = await _export_into(
                    client, location_id, sink, resume=resume, on_batch=progress, **options
                )
                progress(result)
            finally:
                if metrics is not None:  # the requests of a try that failed count too
                    counted = metrics.client(client.stats, written, counted)
    return result


async def _report_quietly(redis: ArqRedis, run_id: str, state: LocationState) -> None:
    # A progress report lost to an outage of Redis is replaced by the next one.
    with contextlib.suppress(*REDIS_DOWN):
        await _write_state(redis, run_id, msgspec.structs.replace(state))


async def _give_back_try(redis: ArqRedis, job_id: str) -> None:
    """Undo arq's count of this start: contention with a live try is no try."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.decr(retry_key_prefix + job_id)
        pipe.expire(retry_key_prefix + job_id, 88400)
        await pipe.execute()


async def _take_back_try(redis: ArqRedis, job_id: str) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(retry_key_prefix + job_id)
        pipe.expire(retry_key_prefix + job_id, 88400)
        await pipe.execute()


async def _read_state(redis: ArqRedis, run_id: str, location_id: str) -> LocationState | None:
    raw = await redis.hget(_states_key(run_id), location_id)  # type: ignore[misc]
    return None if raw is None else _state_decoder.decode(raw)


async def _tried_since(redis: ArqRedis, run_id: str, location_id: str) -> bool:
    """A try after the first already reported on the location."""
    raw = await redis.hget(_states_key(run_id), location_id)  # type: ignore[misc]
    return raw is not None and _state_decoder.decode(raw).tries > 1


class _Failed(Exception):
    """The job cannot run at all: the location fails with this reason."""


def _locked_out(exc: errors.SinkError) -> bool:
    # JsonlSink's refusal when another process holds the part's lock.
    return "another export is writing" in str(exc)


def functions(*, max_tries: int = 10, timeout: float = 7 * 86400) -> list[Function]:
    """ghl_async's arq functions, to add to your own ``WorkerSettings.functions``.

    ``timeout`` is arq's per-job limit: a whole location's export; a dead worker's job
    is re-run after the job's lease, not after this. ``max_tries`` counts dying workers
    and transient failures alike.
    """
    return [func(export_location, name=EXPORT_LOCATION, max_tries=max_tries, timeout=timeout)]


def worker_settings(
    *,
    tokens: Tokens,
    lease: float = 30.0,
    report_every: float = 0.5,
    max_tries: int = 10,
    ride_out: float = _RIDE_OUT,
    ride: RideOut | None = None,
    metrics: JobMetrics | None = None,
    extra_functions: Sequence[Any] = (),
    on_startup: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    **worker_options: Any,
) -> dict[str, Any]:
    """The arq ``WorkerSettings`` (a dict, which arq accepts) running ghl_async's jobs.

    ``extra_functions`` and ``on_startup`` are yours, run beside ours; any other arq
    ``Worker`` option passes through (``redis_settings``, ``max_jobs``, ``queue_name``).
    ``ride_out``, ``ride`` and ``metrics`` are :func:`startup`'s.
    """

    async def _startup(ctx: dict[str, Any]) -> None:
        await startup(
            ctx,
            tokens=tokens,
            lease=lease,
            report_every=report_every,
            max_tries=max_tries,
            ride_out=ride_out,
            ride=ride,
            metrics=metrics,
        )
        if on_startup is not None:
            await on_startup(ctx)

    return {
        "functions": [*functions(max_tries=max_tries), *extra_functions],
        "on_startup": _startup,
        **worker_options,
    }
