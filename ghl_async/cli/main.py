"""The ``ghl-async`` command: ``export``, ``sync``, ``demo`` and ``serve-fake``.

Every error ends in one line on stderr (``ghl-async: ...``), never a traceback.

Exit codes:
    0    done.
    1    some conversations failed (their ids are in ``OUT.failed``), the daily budget
         ran out, or listing a location failed part way; ``--resume`` continues.
    2    bad usage, nothing written: a bad flag or id, a refused token, an unknown
         location, an output that cannot be opened, exists (``--force``), is locked by
         another export, or does not match its checkpoint on ``--resume``; a busy port.
    3    the output could not be written part way (a full disk, an I/O error);
         everything before the error is kept and ``--resume`` continues.
    130  interrupted (Ctrl-C); ``--resume`` continues.
    141  the reader of ``--out -`` went away (``| head``), as for SIGPIPE.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ghl_async import errors
from ghl_async.cli.args import UsageError, build_parser, read_ids, read_token
from ghl_async.cli.location import export_location, location_flags_problem, sync_command
from ghl_async.cli.progress import Progress, budget_of, summary_table
from ghl_async.client import Client
from ghl_async.export.files import ExportRefused, ExportSummary, OutputError, export_messages
from ghl_async.retry import RetryPolicy

if TYPE_CHECKING:
    from ghl_async.testing import FakeAgency, FakeHighLevel

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_OUTPUT = 0, 1, 2, 3
EXIT_INTERRUPTED, EXIT_PIPE = 130, 141


class _Exit(Exception):
    """Stop with this exit code after saying ``message`` (one line)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _write_lines(path: str, lines: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in lines)


def _count_lines(path: str) -> int:
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


async def _run_export(
    client: Client, ids: Any, *, total: int | None, show: bool | None, **options: Any
) -> ExportSummary:
    """``export_messages`` with the progress display, shared by export and demo."""
    enabled = sys.stderr.isatty() if show is None else show
    progress = Progress(enabled, total, client, sys.stderr)
    try:
        return await export_messages(client, ids, on_progress=progress.update, **options)
    finally:
        progress.close()


async def _conversation_ids(client: Client, location: str) -> AsyncIterator[str]:
    async for conversation in client.iter_conversations(location):
        yield conversation.id


def _output_failed(exc: OutputError) -> _Exit:
    if exc.broken_pipe:
        # Later writes to the closed pipe (Python's flush at exit) would print again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):  # pragma: no cover - stdout replaced (tests)
            pass
        return _Exit(EXIT_PIPE, "the reader of the output went away; export stopped")
    then = "; free some space, then run the same command with --resume" if exc.resumable else ""
    return _Exit(EXIT_OUTPUT, f"{exc}{then}")


async def _export(args: argparse.Namespace) -> int:
    token = read_token(args.token_file)
    ids = read_ids(args)
    problem = location_flags_problem(args)
    if problem is not None:
        raise UsageError(problem)
    client = Client(
        token, base_url=args.base_url, max_concurrency=args.concurrency, rate_limit=args.rate
    )
    async with client:
        if ids is None:
            source: Any = _conversation_ids(client, args.location)
            origin = f"location:{args.location}"
        else:
            source, origin = ids, None
        try:
            if ids is None:
                # The location export, falling back to search + fan-out when refused.
                summary = await export_location(client, args, _run_export)
            else:
                summary = await _run_export(
                    client,
                    source,
                    total=len(ids),
                    show=args.progress,
                    out=args.out,
                    resume=args.resume,
                    force=args.force,
                    types=args.types,
                    source=origin,
                    concurrency=args.concurrency,
                    since=args.since,
                    email_bodies=args.email_bodies,
                )
        except ExportRefused as exc:
            raise UsageError(str(exc)) from None
        except OutputError as exc:
            raise _output_failed(exc) from None
        except errors.AuthenticationError as exc:
            raise _Exit(
                EXIT_USAGE, f"the token was refused ({exc.message}); check GHL_TOKEN"
            ) from None
        except errors.DailyLimitExceeded as exc:
            when = (
                dt.datetime.fromtimestamp(exc.resets_at).astimezone().isoformat(timespec="minutes")
                if exc.resets_at
                else "at the start of the next day"
            )
            raise _Exit(
                EXIT_FAILED,
                f"the daily request budget is spent; it resets {when}. "
                f"Resume then with the same command plus --resume.",
            ) from None
        except (errors.PermissionDeniedError, errors.NotFoundError) as exc:
            # Raised only by the listing: a conversation's own 403/404 is in the summary.
            raise _Exit(
                EXIT_USAGE, f"cannot list location {args.location}: {exc.message}"
            ) from None
        except errors.GHLError as exc:
            raise _Exit(
                EXIT_FAILED,
                f"listing location {args.location} failed ({exc}); "
                f"run the same command with --resume to continue",
            ) from None
    _say(
        "export finished\n"
        + summary_table(summary, client, budget_of(client), {"output": args.out})
    )
    if summary.failed:
        failed_path = (args.out if args.out != "-" else "messages") + ".failed"
        _write_lines(failed_path, summary.failed)
        for conversation_id, error in summary.failed.items():
            _say(f"  failed: {conversation_id}: {error}")
        _say(f"ghl-async: {len(summary.failed)} conversation(s) failed; ids in {failed_path}")
        return EXIT_FAILED
    return EXIT_OK


async def _demo(args: argparse.Namespace) -> int:
    from ghl_async.testing import FakeHighLevel, Faults

    budget = args.rate
    _say(
        f"Starting a fake HighLevel with {args.conversations} conversations and a budget of "
        f"{budget.max_requests} requests per {budget.interval:g} s (a few faults injected)..."
    )
    faults = Faults(server_error=0.02, reset=0.01, truncate=0.01, html=0.01)
    async with FakeHighLevel(
        conversations=args.conversations, seed=args.seed, rate_limit=budget, faults=faults
    ) as fake:
        retry = RetryPolicy(backoff_base=0.05, backoff_cap=0.5)
        async with Client(fake.token, base_url=fake.url, retry=retry) as client:
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "messages.jsonl")
                summary = await _run_export(
                    client,
                    fake.conversation_ids,
                    total=len(fake.conversation_ids),
                    show=args.progress,
                    out=out,
                )
                lines = _count_lines(out)
        extra = {
            "lines written": f"{lines} (server holds {fake.total_messages})",
            "most requests in any window": f"{fake.stats.max_in_window} "
            f"(budget {budget.max_requests})",
            "server 429s": f"{fake.stats.throttled}",
            "faults injected": ", ".join(f"{k} {v}" for k, v in sorted(fake.stats.faults.items()))
            or "none",
        }
        _say("demo finished\n" + summary_table(summary, client, budget, extra))
    ok = lines == fake.total_messages and fake.stats.max_in_window <= budget.max_requests
    return EXIT_OK if ok and not summary.failed else EXIT_FAILED


async def _serve(args: argparse.Namespace) -> int:
    from ghl_async.testing import FakeAgency, FakeHighLevel, Faults

    faults = args.faults if args.faults is not None else Faults()
    versions = args.accept_version or ["2021-04-15"]
    fake: FakeHighLevel | FakeAgency
    try:
        if args.locations is None:
            fake = FakeHighLevel(
                conversations=args.conversations,
                seed=args.seed,
                messages=args.messages,
                rate_limit=args.rate,
                daily_limit=args.daily,
                faults=faults,
                token=args.token,
                accept_versions=versions,
                host=args.host,
                port=args.port,
            )
        else:
            if args.token is not None:
                raise UsageError("--token is for one location; an agency's tokens are minted")
            fake = FakeAgency(
                args.locations,
                conversations=args.conversations,
                seed=args.seed,
                messages=args.messages,
                uninstalled=args.uninstalled,
                rate_limit=args.rate,
                daily_limit=args.daily,
                token_ttl=args.token_ttl,
                location_options={"faults": faults, "accept_versions": versions},
                host=args.host,
                port=args.port,
            )
        await fake.start()
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from None
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    try:
        info = _fake_info(fake)
        if args.info is not None:
            _write_info(Path(args.info), info)
        print(f"FakeHighLevel listening on {fake.url}", flush=True)
        if isinstance(fake, FakeAgency):
            print(f"company: {fake.company_id}", flush=True)
            print(f"app: {fake.app_id}", flush=True)
            print(f"agency token: {fake.agency_token}", flush=True)
            for location in info["locations"]:
                print(f"location: {location['id']} token: {location['token']}", flush=True)
            print(
                f"locations: {len(fake.locations)}, messages: {fake.total_messages}",
                flush=True,
            )
        else:
            print(f"token: {fake.token}", flush=True)
            print(f"location: {fake.location_id}", flush=True)
            print(
                f"conversations: {len(fake.conversation_ids)}, messages: {fake.total_messages}",
                flush=True,
            )
        await asyncio.Event().wait()
    finally:
        await fake.close()
    return EXIT_OK  # pragma: no cover - runs until interrupted


def _fake_info(fake: FakeHighLevel | FakeAgency) -> dict[str, Any]:
    """What a test in another process needs: URL, tokens, ids (one location or many)."""
    from ghl_async.testing import FakeAgency

    if isinstance(fake, FakeAgency):
        return fake.info()
    return {
        "url": fake.url,
        "token": fake.token,
        "locations": [
            {
                "id": fake.location_id,
                "token": fake.token,
                "conversations": len(fake.conversation_ids),
                "messages": fake.total_messages,
            }
        ],
    }


def _write_info(path: Path, info: dict[str, Any]) -> None:
    """Write ``info`` whole or not at all: a test polling for the file never reads half."""
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_bytes(json.dumps(info, indent=2).encode() + b"\n")
        partial.replace(path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None


_Runner = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def _queue_runner(args: argparse.Namespace) -> _Runner:
    """``worker``, ``status`` and ``export --queue``: on arq (``_cli_queue``)."""
    from ghl_async.cli import queue as _cli_queue

    if args.command == "worker":
        return _cli_queue.run_worker
    if args.command == "status":
        return _cli_queue.run_status
    if not (args.queue and args.locations_file):
        raise UsageError("--locations-file and --queue go together")
    return _cli_queue.run_queue_export


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        _say(f"ghl-async: {exc}")
        return EXIT_USAGE
    runners: dict[str, _Runner] = {
        "export": _export,
        "demo": _demo,
        "serve-fake": _serve,
        "sync": sync_command,
    }
    try:
        runner = runners.get(args.command)
        if runner is None or (args.command == "export" and (args.queue or args.locations_file)):
            runner = _queue_runner(args)
        return asyncio.run(runner(args))
    except UsageError as exc:
        _say(f"ghl-async: {exc}")
        return EXIT_USAGE
    except _Exit as exc:
        _say(f"ghl-async: {exc}")
        return exc.code
    except KeyboardInterrupt:
        if args.command == "export" and args.queue:
            _say("\nInterrupted. The jobs keep running on the workers: ghl-async status")
        elif args.command == "export":
            _say(
                f"\nInterrupted. Everything written so far is kept; to continue, run the "
                f"same command with --resume (output: {args.out})."
            )
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
