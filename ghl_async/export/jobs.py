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
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import msgspec

try:
    from arq.connections import ArqRedis
    from arq.constants import in_progress_key_prefix
    from arq.jobs import Job, JobStatus
    from arq.worker import Function, Retry, func
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError("ghl_async.export.jobs needs arq: pip install 'ghl-async[arq]'") from exc

from ghl_async import errors
from ghl_async._params import CHANNELS, check_since
from ghl_async._validation import check_id
from ghl_async.client import DEFAULT_BASE_URL, Client
from ghl_async.export.pipeline import ExportResult
from ghl_async.export.pipeline import export_location as _export_into
from ghl_async.export.sink import Sink
from ghl_async.export.targets import describe, sink_for
from ghl_async.ratelimit import RateLimit
from ghl_async.ratelimit.redis import RedisLimiter

__all__ = [
    "EXPORT_LOCATION",
    "LocationState",
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


async def _write_state(redis: ArqRedis, run_id: str, state: LocationState) -> None:
    state.updated = time.time()
    key = _states_key(run_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, state.location_id, _encoder.encode(state).decode())
        pipe.expire(key, _KEEP)
        await pipe.execute()


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
                    state.error = f"arq: {info.result}"
        run.locations.append(state)
    return run


async def _lease(redis: ArqRedis, key: str, lease: float) -> None:
    # PEXPIRE never recreates the key, so a renewal after arq deleted it is harmless.
    while True:
        await redis.pexpire(key, int(lease * 1000))
        await asyncio.sleep(lease / 3)


class _Resources:
    """What a worker's jobs share: the token source and options from :func:`startup`."""

    def __init__(self, tokens: Tokens, lease: float, report_every: float) -> None:
        self.tokens = tokens
        self.lease = lease
        self.report_every = report_every

    async def token(self, location_id: str) -> str:
        if isinstance(self.tokens, Mapping):
            try:
                return self.tokens[location_id]
            except KeyError:
                raise errors.AuthenticationError(
                    f"this worker has no token for location {location_id}"
                ) from None
        return await self.tokens(location_id)


async def startup(
    ctx: dict[str, Any], *, tokens: Tokens, lease: float = 30.0, report_every: float = 0.5
) -> None:
    """Prepare a worker's ``ctx`` for ghl_async's jobs; call it from your ``on_startup``.

    Args:
        ctx: arq's worker context.
        tokens: a location's token: a map, or an async provider (OAuth minting).
        lease: seconds after which a dead worker's job is run again elsewhere.
        report_every: seconds between a job's progress writes to Redis.
    """
    if lease <= 0 or report_every <= 0:
        raise ValueError("lease and report_every must be positive")
    ctx[_CTX] = _Resources(tokens, lease, report_every)


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
    a transient failure) resumes from the state the sink committed. Returns the
    location's final :class:`LocationState` as a dict.
    """
    resources: _Resources = ctx[_CTX]
    redis: ArqRedis = ctx["redis"]
    try_number = int(ctx.get("job_try") or 1)
    lease = asyncio.create_task(
        _lease(redis, in_progress_key_prefix + str(ctx["job_id"]), resources.lease)
    )
    state = LocationState(
        location_id=location_id, state="running", tries=try_number, worker=_WORKER
    )
    meta: _Meta | None = None
    pending: set[asyncio.Task[None]] = set()  # progress writes under way

    async def report() -> None:
        # A report must not be overtaken by an earlier one still under way.
        await asyncio.gather(*pending, return_exceptions=True)
        await _write_state(redis, run_id, state)

    try:
        meta = await _read_meta(redis, run_id)
        if meta is None:
            raise _Failed(f"run {run_id} is no longer in Redis (kept {_KEEP // 86400} days)")
        # A first try whose lease ran out before it opened the sink (its loop stalled)
        # may start after a later try wrote the location: it must resume, not refuse
        # ("new") or start again ("force").
        retrying = try_number > 1 or await _tried_since(redis, run_id, location_id)
        first_mode: Mode = "resume" if retrying else mode
        sink = _open_sink(meta, location_id, first_mode)
        # With a database, "force" starts the location again; JSON Lines does it itself.
        resume = not (meta.to and first_mode == "force")
        token = await resources.token(location_id)
        limit = RateLimit(int(rate[0]), float(rate[1])) if rate else None
        # A worker running many locations can keep a Redis reply waiting on its own loop
        # for over a second: a 1 s timeout would fail requests of a healthy Redis.
        limiter = RedisLimiter(
            redis, key=f"location:{location_id}", rate_limit=limit, timeout=_REDIS_TIMEOUT
        )
        last_write = time.monotonic()

        def progress(result: ExportResult) -> None:
            nonlocal last_write
            if result.state is not None:
                state.messages = result.state.messages
                state.fallback = result.state.fallback
            state.pages = result.pages
            if time.monotonic() - last_write >= resources.report_every and not pending:
                last_write = time.monotonic()
                task = asyncio.ensure_future(_write_state(redis, run_id, state))
                pending.add(task)
                task.add_done_callback(pending.discard)

        async with sink:
            held = await sink.load(location_id) if resume else None
            if held is not None:
                state.messages, state.fallback = held.messages, held.fallback
            await _write_state(redis, run_id, state)
            last_write = time.monotonic()
            async with Client(
                token, base_url=base_url, limiter=limiter, max_concurrency=concurrency
            ) as client:
                result = await _export_into(
                    client,
                    location_id,
                    sink,
                    since=_parse_date(since),
                    until=_parse_date(until),
                    channel=channel,
                    contact_id=contact_id,
                    email_bodies=email_bodies,
                    resume=resume,
                    on_batch=progress,
                )
        progress(result)
        state.state, state.error = "done", None
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
        if _locked_out(exc):
            # The lease ran out while the first run is alive (its loop stalled): the
            # part's lock keeps this run out; come back after another lease.
            state.error = f"try {try_number}: {exc}; retrying"
            await report()
            raise Retry(defer=resources.lease) from None
        state.state, state.error = "failed", str(exc)
    except errors.GHLError as exc:
        if exc.stops_fan_out:
            state.state, state.error = "failed", str(exc)  # a refused token, a spent day
        else:
            # A request failed for now: run again later, from the sink's state.
            state.state, state.error = "running", f"try {try_number}: {exc}; retrying"
            await report()
            raise Retry(defer=min(60, 2**try_number)) from None
    finally:
        lease.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lease
    await report()
    return msgspec.to_builtins(state)  # type: ignore[no-any-return]


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
    extra_functions: Sequence[Any] = (),
    on_startup: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    **worker_options: Any,
) -> dict[str, Any]:
    """The arq ``WorkerSettings`` (a dict, which arq accepts) running ghl_async's jobs.

    ``extra_functions`` and ``on_startup`` are yours, run beside ours; any other arq
    ``Worker`` option passes through (``redis_settings``, ``max_jobs``, ``queue_name``).
    """

    async def _startup(ctx: dict[str, Any]) -> None:
        await startup(ctx, tokens=tokens, lease=lease, report_every=report_every)
        if on_startup is not None:
            await on_startup(ctx)

    return {
        "functions": [*functions(max_tries=max_tries), *extra_functions],
        "on_startup": _startup,
        **worker_options,
    }
