"""The commands on arq: ``worker`` and ``status``, and the runner of ``export --queue``.

``ghl-async worker`` runs an arq worker with ghl_async's jobs; ``export --queue``
enqueues one job per location and follows the run until every location is settled;
``status`` shows a run from anywhere that reaches the Redis. Needs the ``arq`` extra,
imported (with :mod:`ghl_async.export.jobs`, which needs it) when a command runs, so the
other commands work without it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import sys
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any, Literal, TextIO

from ghl_async._validation import check_id
from ghl_async.cli.args import Subparsers, count_arg
from ghl_async.cli.exits import EXIT_FAILED, EXIT_OK, UsageError

_OUT = "messages.jsonl"  # export's --out default: with --to, --out is left out

if TYPE_CHECKING:
    from arq.connections import ArqRedis
    from arq.worker import Worker

    from ghl_async.export.jobs import RideOut, RunState

__all__ = [
    "parse_location_ids",
    "print_run",
    "queue_flags_problem",
    "read_tokens",
    "register",
    "seconds_arg",
    "run_queue_export",
    "run_status",
    "run_worker",
]


def register(subparsers: Subparsers) -> None:
    """The ``worker`` and ``status`` commands (``export --queue`` is on ``export``)."""
    worker = subparsers.add_parser(
        "worker",
        help="run an arq worker for export --queue",
        description="Run an arq worker with ghl_async's jobs (pip install 'ghl-async[arq]').",
    )
    worker.add_argument("--redis", required=True, metavar="URL", help="the queue's Redis")
    worker.add_argument(
        "--tokens-file",
        required=True,
        metavar="FILE",
        help='location tokens as JSON: {"LOCATION_ID": "TOKEN", ...}',
    )
    worker.add_argument(
        "--max-jobs", type=count_arg(1, 10_000), default=10, help="locations at once (10)"
    )
    worker.add_argument(
        "--max-tries", type=count_arg(1, 1000), default=10, help="tries per location (10)"
    )
    worker.add_argument(
        "--lease",
        type=seconds_arg(positive=True),
        default=30.0,
        help="seconds after which a dead worker's job runs elsewhere (30)",
    )
    worker.add_argument(
        "--poll-delay",
        type=seconds_arg(positive=True),
        default=0.5,
        help="seconds between queue polls (0.5)",
    )
    worker.add_argument("--burst", action="store_true", help="stop when the queue is empty")
    _ride_out_flag(worker)
    worker.add_argument(
        "--metrics-port",
        type=count_arg(0, 65535),
        metavar="PORT",
        help="serve Prometheus metrics on this port (0: any free port, said on stderr)",
    )
    worker.set_defaults(handler=run_worker)

    status = subparsers.add_parser("status", help="show a queued export's progress")
    status.add_argument("--queue", required=True, metavar="REDIS_URL", help="the queue's Redis")
    status.add_argument("--run", help="the run id (the latest by default)")
    _ride_out_flag(status)
    status.set_defaults(handler=run_status)


RIDE_OUT = 60.0
"""Seconds the commands on arq wait out a Redis outage by default."""


def seconds_arg(*, positive: bool) -> type[float]:
    """A float type for argparse: a finite number of seconds, above 0 or at least 0."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            least = "above 0" if positive else "0 or more"
            raise argparse.ArgumentTypeError(f"must be a number of seconds {least}, got {text}")
        return value

    return parse  # type: ignore[return-value]


def _ride_out_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ride-out",
        type=seconds_arg(positive=False),
        default=RIDE_OUT,
        metavar="SECONDS",
        help="wait out a Redis outage this long, reconnecting with backoff (60)",
    )


def _say(text: str) -> None:
    print(f"ghl-async: {text}", file=sys.stderr, flush=True)


def _arq() -> Any:
    try:
        import arq.connections
    except ImportError:
        raise UsageError("this command needs arq: pip install 'ghl-async[arq]'") from None
    return arq.connections


async def _pool(url: str) -> ArqRedis:
    connections = _arq()
    from redis.exceptions import RedisError

    try:
        settings = connections.RedisSettings.from_dsn(url)
        settings.conn_retries = 0
        pool: ArqRedis = await connections.create_pool(settings)
    except (RedisError, OSError, ValueError) as exc:
        raise UsageError(f"cannot reach Redis at {_safe_url(url)}: {exc}") from None
    return pool


def _safe_url(url: str) -> str:
    # A password in the URL never reaches a message.
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return scheme + sep + rest


def parse_location_ids(path: str) -> list[str]:
    """Location ids from a file: one a line, ``#`` comments, duplicates once."""
    try:
        with open(path, encoding="utf-8-sig") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"cannot read {path}: not UTF-8 text") from None
    ids: list[str] = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            ids.append(check_id(text, "location id"))
        except ValueError as exc:
            raise UsageError(f"{path} line {number}: {exc}") from None
    if not ids:
        raise UsageError(f"{path} names no location")
    return list(dict.fromkeys(ids))


def read_tokens(path: str) -> dict[str, str]:
    """Location tokens from a JSON file.

    Either ``{"LOCATION_ID": "TOKEN", ...}`` or a list of ``{"id", "token"}`` objects,
    bare or under ``"locations"`` (what ``serve-fake --locations N --info FILE`` writes).
    """
    try:
        with open(path, encoding="utf-8-sig") as handle:
            data = json.load(handle)
    except OSError as exc:
        raise UsageError(f"cannot read the tokens file: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UsageError("the tokens file is not JSON") from None
    if isinstance(data, dict) and "locations" in data:
        data = data["locations"]
    tokens: dict[str, str] = {}
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = [
            (entry.get("id"), entry.get("token")) for entry in data if isinstance(entry, dict)
        ]
    else:
        items = []
    for location_id, token in items:
        if isinstance(location_id, str) and isinstance(token, str) and token:
            tokens[location_id] = token
    if not tokens:
        raise UsageError('the tokens file holds no location token; write {"LOCATION_ID": "TOKEN"}')
    return tokens


async def run_worker(args: argparse.Namespace) -> int:
    """``ghl-async worker``: run ghl_async's jobs until SIGINT or SIGTERM.

    With ``--burst``, until the queue is empty. A Redis outage of up to ``--ride-out``
    seconds is waited out (one line when it starts, one when it ends); a longer one ends
    the worker in one line, its locations left for the next worker to resume.
    """
    _arq()
    from ghl_async.export.jobs import RedisGone, RideOut, worker_settings

    tokens = read_tokens(args.tokens_file)
    pool = await _pool(args.redis)
    ride = RideOut(args.ride_out, say=_say)
    metrics = None
    if args.metrics_port is not None:
        from ghl_async.export.metrics import WorkerMetrics

        try:
            metrics = WorkerMetrics()
            port = metrics.serve(args.metrics_port)
        except ImportError:
            await pool.aclose()
            raise UsageError(
                "--metrics-port needs prometheus-client: pip install 'ghl-async[metrics]'"
            ) from None
        except OSError as exc:
            await pool.aclose()
            raise UsageError(
                f"cannot serve metrics on port {args.metrics_port}: {exc.strerror}"
            ) from None
        _say(f"worker metrics on http://127.0.0.1:{port}/metrics")
    settings = worker_settings(
        tokens=tokens,
        lease=args.lease,
        max_tries=args.max_tries,
        ride=ride,
        metrics=metrics,
        max_jobs=args.max_jobs,
        burst=args.burst,
        poll_delay=args.poll_delay,
    )
    # arq's SIGINT/SIGTERM handlers need the main thread (an embedding may run us in another).
    main_thread = threading.current_thread() is threading.main_thread()
    worker = _riding_worker(ride, args.lease)(
        **settings, redis_pool=pool, handle_signals=main_thread
    )
    print(
        f"ghl-async worker: {len(tokens)} location token(s), up to {args.max_jobs} jobs "
        f"at once, on {_safe_url(args.redis)}",
        file=sys.stderr,
        flush=True,
    )
    quiet = _QuietLimiterOutages()
    logging.getLogger("ghl_async").addFilter(quiet)
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        pass  # arq's own SIGINT/SIGTERM handler stops the worker this way
    except RedisGone as exc:
        _say(
            f"worker stopped: {exc}; its locations resume on the next worker from what "
            "their sinks hold"
        )
        for task in worker.tasks.values():
            task.cancel()
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        with contextlib.suppress(Exception):
            await pool.aclose()
        return EXIT_FAILED
    finally:
        logging.getLogger("ghl_async").removeFilter(quiet)
        if metrics is not None:
            metrics.close()
    with warnings.catch_warnings():
        # arq closes its pool with redis-py's deprecated close(): not ours to show.
        warnings.simplefilter("ignore", DeprecationWarning)
        await worker.close()
    return EXIT_OK


class _QuietLimiterOutages(logging.Filter):
    """Each job's limiter says an outage of Redis once: the worker says it once for all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.pathname.endswith(os.path.join("ratelimit", "redis.py")):
            return True
        text = str(record.msg)
        return not text.startswith(("Redis is unavailable", "Redis is back", "could not report"))


def _riding_worker(ride: RideOut, lease: float) -> type[Worker]:
    """Arq's ``Worker``, riding out an outage of Redis instead of dying of it."""
    from arq.constants import in_progress_key_prefix
    from arq.worker import Worker
    from redis.exceptions import WatchError

    from ghl_async.export.jobs import FIRST_BACKOFF, MAX_BACKOFF, REDIS_DOWN, RedisGone

    class RidingWorker(Worker):
        backoff = FIRST_BACKOFF

        async def _poll_iteration(self) -> None:
            try:
                await super()._poll_iteration()
            except REDIS_DOWN as exc:
                left = ride.failed(exc)  # past the ride-out: RedisGone ends the worker
                await asyncio.sleep(min(self.backoff, left))
                self.backoff = min(self.backoff * 2, MAX_BACKOFF)
                return
            self.backoff = FIRST_BACKOFF
            ride.answered()

        async def start_jobs(self, job_ids: list[bytes]) -> None:
            for job_id in job_ids:
                running = self.tasks.get(job_id.decode())
                if running is not None and not running.done():
                    # Its in-progress key expired during an outage: it is still ours.
                    continue
                counter = self.job_counter
                try:
                    await super().start_jobs([job_id])
                except (*REDIS_DOWN, WatchError) as exc:  # type: ignore[misc]
                    # (redis-py says WatchError of a connection lost during a WATCH.)
                    if self.job_counter > counter and job_id.decode() not in self.tasks:
                        self._release_sem_dec_counter_on_complete()  # arq took a slot
                    ride.failed(exc)
                    # Back once Redis is (RedisGone past the ride-out ends the worker).
                    await self._unhold(job_id.decode(), suppress=False)
                    return

        async def run_job(self, job_id: str, score: int) -> None:
            try:
                await super().run_job(job_id, score)
            except (*REDIS_DOWN, RedisGone):  # type: ignore[misc]
                # arq could not start or finish the job (the job itself is not running):
                # let it run again at once, on any worker, from what its sink holds.
                await self._unhold(job_id)

        async def _unhold(self, job_id: str, *, suppress: bool = True) -> None:
            # An in-progress key arq may have set would keep the job a week (its
            # timeout): the location's owner key, not this, keeps two tries apart.
            key = in_progress_key_prefix + job_id
            with contextlib.suppress(*((RedisGone,) if suppress else ())):
                await ride.call(lambda: self.pool.delete(key))

    return RidingWorker


def _prepare_out(out: str, locations: list[str], *, resume: bool, force: bool) -> str:
    """The output directory, absolute (workers run elsewhere), refused as export would."""
    from ghl_async.export.jobs import part_path

    out_dir = os.path.abspath(out)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"--out {out} is not a directory; --queue writes one file a location")
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:  # a file on the way (FILE/x), no permission
        raise UsageError(f"cannot create --out {out}: {exc.strerror}") from None
    if resume or force:
        return out_dir
    for location_id in locations:
        path = part_path(out_dir, location_id)
        if os.path.exists(path) and os.path.getsize(path):
            raise UsageError(
                f"{path} exists; pass --resume to continue that export or --force to replace it"
            )
    return out_dir


def _line(run: RunState) -> str:
    running = sum(1 for s in run.locations if s.state == "running")
    failed = sum(1 for s in run.locations if s.state == "failed")
    retried = sum(1 for s in run.locations if s.tries > 1)
    elapsed = max(1e-6, time.time() - run.started)
    return (
        f"export: {run.settled}/{len(run.locations)} locations, {run.messages} messages "
        f"({run.messages / elapsed:.0f}/s), {running} running, {retried} resumed, "
        f"{failed} failed"
    )


def print_run(run: RunState, stream: TextIO) -> None:
    """A run's table: one line per location, then the totals."""
    print(f"run {run.run_id} -> {run.where}", file=stream)
    for s in run.locations:
        extra = f" tries={s.tries}" if s.tries > 1 else ""
        if s.fallback:
            extra += " conversation by conversation (export route refused)"
        if s.worker and s.state == "running":
            extra += f" on {s.worker}"
        if s.error:
            extra += f" ({s.error})"
        print(f"  {s.location_id:24} {s.state:8} {s.messages:>9} messages{extra}", file=stream)
    print(_line(run), file=stream, flush=True)


def queue_flags_problem(args: argparse.Namespace) -> str | None:
    """Why the command line cannot go with ``--queue``, or ``None``.

    Every location flag of ``export --location`` is honoured by the jobs; ``--types``
    filters a conversation export, and ``--to`` resumes by itself, as with
    ``--location``.
    """
    if args.types:
        return "--types filters a conversation export; with --queue use --channel"
    if args.since is not None and args.until is not None and args.since > args.until:
        return f"--since ({args.since.isoformat()}) is after --until ({args.until.isoformat()})"
    if args.to is not None and (args.resume or args.force or args.out != _OUT):
        return (
            "--to writes to the database (it resumes by itself): leave out --out, "
            "--resume and --force"
        )
    return None


async def run_queue_export(args: argparse.Namespace) -> int:
    """``ghl-async export --locations-file FILE --queue URL (--out DIR | --to URL)``.

    Follows the run until every location is settled, waiting out a Redis outage of up
    to ``--ride-out`` seconds (60).
    """
    from ghl_async.export.jobs import RedisGone, RideOut, enqueue_locations, read_run

    problem = queue_flags_problem(args)
    if problem is not None:
        raise UsageError(problem)
    locations = parse_location_ids(args.locations_file)
    # --to is read as the URL and the sink it names (cli.mirror.sink_url_arg): each job
    # opens its own sink from the URL.
    to: str | None = None if args.to is None else getattr(args.to, "url", args.to)
    out_dir = (
        None
        if to is not None
        else _prepare_out(args.out, locations, resume=args.resume, force=args.force)
    )
    pool = await _pool(args.queue)
    try:
        mode: Literal["new", "resume", "force"] = (
            "resume" if args.resume else "force" if args.force else "new"
        )
        try:
            run_id = await enqueue_locations(
                pool,
                locations,
                out_dir,
                to=to,
                mode=mode,
                since=args.since,
                until=args.until,
                channel=args.channel,
                contact_id=args.contact,
                email_bodies=args.email_bodies,
                base_url=args.base_url,
                rate_limit=args.rate,
                concurrency=args.concurrency,
            )
        except ValueError as exc:  # --since after --until
            raise UsageError(str(exc)) from None
        show = sys.stderr.isatty() if args.progress is None else args.progress
        print(
            f"ghl-async: run {run_id}: {len(locations)} location job(s) enqueued; "
            f"follow it anywhere with: ghl-async status --queue URL --run {run_id}",
            file=sys.stderr,
            flush=True,
        )
        last = 0.0
        ride = RideOut(getattr(args, "ride_out", RIDE_OUT), say=_say)
        while True:
            try:
                found = await ride.call(lambda: read_run(pool, run_id))
            except RedisGone as exc:
                _say(
                    f"stopped following run {run_id}: {exc}; the workers go on where "
                    f"Redis left it: ghl-async status --queue URL --run {run_id}"
                )
                return EXIT_FAILED
            if found is None:  # a Redis restarted without persistence lost it
                _say(f"run {run_id} is no longer in Redis (restarted without persistence?)")
                return EXIT_FAILED
            run = found
            if run.finished:
                break
            if show and time.monotonic() - last >= 1.0:
                last = time.monotonic()
                print(_line(run), file=sys.stderr, flush=True)
            await asyncio.sleep(0.25)
    finally:
        await pool.aclose()
    print_run(run, sys.stderr)
    return EXIT_OK if run.ok else EXIT_FAILED


async def run_status(args: argparse.Namespace) -> int:
    """``ghl-async status --queue URL [--run ID]``: a run's state, from anywhere."""
    from ghl_async.export.jobs import RedisGone, RideOut, read_run

    pool = await _pool(args.queue)
    ride = RideOut(args.ride_out, say=_say)
    try:
        run = await ride.call(lambda: read_run(pool, args.run))
    except RedisGone as exc:
        _say(str(exc))
        return EXIT_FAILED
    finally:
        with contextlib.suppress(Exception):
            await pool.aclose()
    if run is None:
        raise UsageError(f"no run {args.run} in this Redis" if args.run else "no run yet")
    print_run(run, sys.stdout)
    failed = any(s.state == "failed" for s in run.locations)
    return EXIT_FAILED if failed else EXIT_OK
