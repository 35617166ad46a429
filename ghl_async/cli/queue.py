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

    from ghl_async.export.jobs import RunState

__all__ = [
    "parse_location_ids",
    "print_run",
    "queue_flags_problem",
    "read_tokens",
    "register",
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
        type=float,
        default=30.0,
        help="seconds after which a dead worker's job runs elsewhere (30)",
    )
    worker.add_argument(
        "--poll-delay", type=float, default=0.5, help="seconds between queue polls (0.5)"
    )
    worker.add_argument("--burst", action="store_true", help="stop when the queue is empty")
    worker.set_defaults(handler=run_worker)

    status = subparsers.add_parser("status", help="show a queued export's progress")
    status.add_argument("--queue", required=True, metavar="REDIS_URL", help="the queue's Redis")
    status.add_argument("--run", help="the run id (the latest by default)")
    status.set_defaults(handler=run_status)


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

    With ``--burst``, until the queue is empty.
    """
    _arq()
    from arq.worker import Worker

    from ghl_async.export.jobs import worker_settings

    tokens = read_tokens(args.tokens_file)
    pool = await _pool(args.redis)
    settings = worker_settings(
        tokens=tokens,
        lease=args.lease,
        max_tries=args.max_tries,
        max_jobs=args.max_jobs,
        burst=args.burst,
        poll_delay=args.poll_delay,
    )
    # arq's SIGINT/SIGTERM handlers need the main thread (an embedding may run us in another).
    main_thread = threading.current_thread() is threading.main_thread()
    worker = Worker(**settings, redis_pool=pool, handle_signals=main_thread)
    print(
        f"ghl-async worker: {len(tokens)} location token(s), up to {args.max_jobs} jobs "
        f"at once, on {_safe_url(args.redis)}",
        file=sys.stderr,
        flush=True,
    )
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        pass  # arq's own SIGINT/SIGTERM handler stops the worker this way
    finally:
        with warnings.catch_warnings():
            # arq closes its pool with redis-py's deprecated close(): not ours to show.
            warnings.simplefilter("ignore", DeprecationWarning)
            await worker.close()
    return EXIT_OK


def _prepare_out(out: str, locations: list[str], *, resume: bool, force: bool) -> str:
    """The output directory, absolute (workers run elsewhere), refused as export would."""
    from ghl_async.export.jobs import part_path

    out_dir = os.path.abspath(out)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UsageError(f"--out {out} is not a directory; --queue writes one file a location")
    with contextlib.suppress(FileExistsError):
        os.makedirs(out_dir)
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
    """``ghl-async export --locations-file FILE --queue URL (--out DIR | --to URL)``."""
    from ghl_async.export.jobs import enqueue_locations, read_run

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
        while True:
            run = await read_run(pool, run_id)
            assert run is not None  # written by enqueue_locations just now
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
    from ghl_async.export.jobs import read_run

    pool = await _pool(args.queue)
    try:
        run = await read_run(pool, args.run)
    finally:
        await pool.aclose()
    if run is None:
        raise UsageError(f"no run {args.run} in this Redis" if args.run else "no run yet")
    print_run(run, sys.stdout)
    failed = any(s.state == "failed" for s in run.locations)
    return EXIT_FAILED if failed else EXIT_OK
