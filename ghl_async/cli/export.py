"""``ghl-async export``: messages to JSON Lines, by conversation, location or queue.

Conversations named on the command line (or in ``--ids-file``) are exported here;
``--location`` (into ``--out`` or ``--to``) goes through the export pipeline
(:mod:`ghl_async.cli.location`), and ``--locations-file`` with ``--queue`` through
:mod:`ghl_async.cli.queue`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterable

from ghl_async import errors
from ghl_async._validation import check_id
from ghl_async.cli.args import (
    ENV_BASE_URL,
    ENV_LOCATION,
    Subparsers,
    base_url_arg,
    base_url_from,
    count_arg,
    location_arg,
    location_from_env,
    rate_arg,
    read_token,
)
from ghl_async.cli.exits import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_USAGE,
    CommandExit,
    UsageError,
    resets_when,
    say,
)
from ghl_async.cli.location import (
    add_export_flags,
    dates_problem,
    export_to_file,
    location_flags_problem,
    output_gone,
    remove_if_empty,
    without_resume,
)
from ghl_async.cli.mirror import mirror_location, sink_url_arg, to_flags_problem
from ghl_async.cli.preflight import check_access
from ghl_async.cli.progress import budget_of, export_with_progress, summary_table
from ghl_async.cli.queue import run_queue_export
from ghl_async.client import DEFAULT_BASE_URL, Client
from ghl_async.export.files import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    ExportOptions,
    ExportRefused,
    OutputError,
    check_output,
    ids_source,
)
from ghl_async.models import FilterType

__all__ = ["interrupted", "parse_ids", "read_ids", "register", "run", "types_arg"]

_FILTERS = tuple(member.value for member in FilterType)
_OUT = "messages.jsonl"


def types_arg(text: str) -> str:
    """A comma list of ``type`` filters, any case, ``TYPE_`` optional: ``sms,TYPE_CALL``."""
    names: list[str] = []
    for part in text.split(","):
        name = part.strip().upper()
        if not name:
            continue
        if not name.startswith("TYPE_"):
            name = "TYPE_" + name
        if name not in _FILTERS:
            raise argparse.ArgumentTypeError(
                f"{part.strip()!r} is not a message type filter; valid: {', '.join(_FILTERS)}"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise argparse.ArgumentTypeError("no message type given")
    return ",".join(names)


def _refuse_token(text: str) -> str:
    # Never echo the value: it is a secret that just landed in shell history.
    raise argparse.ArgumentTypeError(
        "the token is not taken on the command line (ps and shell history would show it); "
        "set GHL_TOKEN or use --token-file"
    )


def register(subparsers: Subparsers) -> None:
    """The ``export`` command, with the location export's flags."""
    export = subparsers.add_parser(
        "export",
        help="export messages to JSON Lines",
        description="Export messages as JSON Lines, resumably. The token comes from "
        "GHL_TOKEN or --token-file, never from the command line.",
    )
    # Not required: with none of them, the location is GHL_LOCATION_ID's.
    source = export.add_mutually_exclusive_group()
    source.add_argument(
        "ids", nargs="*", default=[], metavar="CONVERSATION_ID", help="conversations to export"
    )
    source.add_argument(
        "--ids-file", metavar="FILE", help="one id per line, # comments; - for stdin"
    )
    source.add_argument(
        "--location",
        type=location_arg,
        metavar="LOCATION_ID",
        help=f"every conversation of this location (default: ${ENV_LOCATION}, when no "
        "conversation id, --ids-file or --locations-file is given)",
    )
    source.add_argument(
        "--locations-file",
        metavar="FILE",
        help="every conversation of these locations, one id a line; with --queue",
    )
    export.add_argument(
        "--queue",
        metavar="REDIS_URL",
        help="run one job per location on the arq workers of this Redis; --out is a directory",
    )
    export.add_argument(
        "--types", type=types_arg, help="only these types, any case: sms,call or TYPE_EMAIL"
    )
    export.add_argument(
        "--out",
        default=_OUT,
        help=f"output file; - for stdout (default: {_OUT}). Its checkpoint OUT.checkpoint "
        "stays after the export: --resume of a finished export then does nothing, and "
        "the next --resume fetches again the email bodies that failed; delete it with "
        "the output",
    )
    export.add_argument(
        "--to",
        type=sink_url_arg,
        metavar="URL",
        help="with --location: mirror into sqlite:///path.db or postgresql://...",
    )
    replace = export.add_mutually_exclusive_group()
    replace.add_argument("--resume", action="store_true", help="continue a stopped export")
    replace.add_argument("--force", action="store_true", help="replace an existing output")
    export.add_argument(
        "--concurrency", type=count_arg(1, 256), default=16, help="requests in flight (16)"
    )
    export.add_argument(
        "--base-url",
        type=base_url_arg,
        help=f"the API root (default: ${ENV_BASE_URL}, else {DEFAULT_BASE_URL})",
    )
    export.add_argument(
        "--token-file", metavar="FILE", help="read the token from this file (else from $GHL_TOKEN)"
    )
    export.add_argument("--token", type=_refuse_token, help=argparse.SUPPRESS)
    export.add_argument(
        "--rate", type=rate_arg, help="cap the budget below the server's, e.g. 100/10s"
    )
    add_export_flags(export)
    progress = export.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress",
        action="store_true",
        default=None,
        help="show progress even when stderr is not a terminal",
    )
    progress.add_argument(
        "--no-progress", dest="progress", action="store_false", help="never show progress"
    )
    export.set_defaults(handler=run, on_interrupt=interrupted)


async def run(args: argparse.Namespace) -> int:
    """Run ``ghl-async export``; returns the exit code."""
    args.base_url = base_url_from(args.base_url, DEFAULT_BASE_URL)
    if not (args.ids or args.ids_file or args.location or args.locations_file):
        args.location = location_from_env()
        if args.location is None:
            raise UsageError(
                "one of the arguments CONVERSATION_ID --ids-file --location --locations-file "
                f"is required (or set {ENV_LOCATION} for --location; see ghl-async export --help)"
            )
    problem = dates_problem(args)
    if problem is not None:
        raise UsageError(problem)
    if args.queue or args.locations_file:
        if not (args.queue and args.locations_file):
            raise UsageError("--locations-file and --queue go together")
        return await run_queue_export(args)
    return await _export(args)


def interrupted(args: argparse.Namespace) -> str:
    """What to say on Ctrl-C: how to continue."""
    if args.queue:
        return "\nInterrupted. The jobs keep running on the workers: ghl-async status"
    if args.to is not None:
        return (
            "\nInterrupted. What was committed is kept; to continue, run the same command again."
        )
    if args.out != "-" and not _exists(args.out):
        return "\nInterrupted before anything was written: nothing to resume."
    return (
        f"\nInterrupted. Everything written so far is kept; to continue, run the "
        f"same command with --resume (output: {args.out})."
    )


def parse_ids(lines: Iterable[str], where: str) -> list[str]:
    """Ids from lines: ``#`` starts a comment anywhere, blanks skipped, duplicates once."""
    ids: list[str] = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            ids.append(check_id(text, "conversation id"))
        except ValueError as exc:
            raise UsageError(f"{where} line {number}: {exc}") from None
    return list(dict.fromkeys(ids))


def read_ids(args: argparse.Namespace) -> list[str] | None:
    """The ids the command names (``None`` for ``--location``), checked."""
    if args.location:
        return None
    if args.ids_file is None:
        try:
            for conversation_id in args.ids:
                check_id(conversation_id, "conversation id")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return list(dict.fromkeys(args.ids))
    where = "stdin" if args.ids_file == "-" else args.ids_file
    try:
        if args.ids_file == "-":
            text = sys.stdin.read()
        else:
            with open(args.ids_file, encoding="utf-8") as handle:
                text = handle.read()
    except OSError as exc:
        raise UsageError(f"cannot read {where}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"cannot read {where}: not UTF-8 text") from None
    return parse_ids(text.removeprefix("\ufeff").splitlines(), where)


def _first_to_read(args: argparse.Namespace, ids: list[str]) -> str | None:
    """The conversation to ask first: one a resume will read anyway (none: all done)."""
    done: set[str] = set()
    if args.resume and args.out != "-":
        with contextlib.suppress(OSError):
            done = Checkpoint.load(args.out + ".checkpoint").done
    return next((c for c in ids if c not in done), None)


def _write_lines(path: str, lines: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in lines)


def _output_failed(exc: OutputError) -> CommandExit:
    if exc.broken_pipe:
        return output_gone()
    then = "; free some space, then run the same command with --resume" if exc.resumable else ""
    return CommandExit(EXIT_OUTPUT, f"{exc}{then}")


async def _export(args: argparse.Namespace) -> int:
    token = read_token(args.token_file)
    ids = read_ids(args)
    problem = location_flags_problem(args) or to_flags_problem(args, _OUT)
    if problem is not None:
        raise UsageError(problem)
    if ids is not None:
        # What the output refuses is known without the network: said first, then one
        # request (a wrong URL or token), and only then is any file created.
        options = ExportOptions(
            format=CHECKPOINT_FORMAT,
            source=ids_source(ids),
            types=args.types,
            base_url=args.base_url,
        )
        try:
            check_output(args.out, options, resume=args.resume, force=args.force)
        except ExportRefused as exc:
            raise UsageError(str(exc)) from None
        await check_access(token, args.base_url, conversation_id=_first_to_read(args, ids))
    # An output this run creates and leaves without a line is removed, whatever stops it.
    created = ids is not None and args.out != "-" and not _exists(args.out)
    try:
        return await _run_export(token, ids, args)
    except CommandExit as exc:
        if created and remove_if_empty(args.out):
            raise CommandExit(exc.code, without_resume(str(exc))) from None
        raise
    except BaseException:
        if created:
            remove_if_empty(args.out)
        raise


def _exists(path: str) -> bool:
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


async def _run_export(token: str, ids: list[str] | None, args: argparse.Namespace) -> int:
    client = Client(
        token, base_url=args.base_url, max_concurrency=args.concurrency, rate_limit=args.rate
    )
    async with client:
        try:
            if args.to is not None:
                return await mirror_location(client, args, token)
            if ids is None:
                # The location export, falling back to search + fan-out when refused.
                return await export_to_file(client, args, token)
            summary = await export_with_progress(
                client,
                ids,
                total=len(ids),
                show=args.progress,
                out=args.out,
                resume=args.resume,
                force=args.force,
                types=args.types,
                concurrency=args.concurrency,
                since=args.since,
                email_bodies=args.email_bodies,
            )
        except ExportRefused as exc:
            raise UsageError(str(exc)) from None
        except OutputError as exc:
            raise _output_failed(exc) from None
        except errors.AuthenticationError as exc:
            raise CommandExit(
                EXIT_USAGE, f"the token was refused ({exc.message}); check GHL_TOKEN"
            ) from None
        except errors.DailyLimitExceeded as exc:
            when = resets_when(exc.resets_at)
            raise CommandExit(
                EXIT_FAILED,
                f"the daily request budget is spent; it resets {when}. "
                f"Resume then with the same command plus --resume.",
            ) from None
        except (errors.PermissionDeniedError, errors.NotFoundError) as exc:
            # Raised only by the listing: a conversation's own 403/404 is in the summary.
            raise CommandExit(
                EXIT_USAGE, f"cannot list location {args.location}: {exc.message}"
            ) from None
        except errors.GHLError as exc:
            raise CommandExit(
                EXIT_FAILED,
                f"listing location {args.location} failed ({exc}); "
                f"run the same command with --resume to continue",
            ) from None
    say(
        "export finished\n"
        + summary_table(summary, client, budget_of(client), {"output": args.out})
    )
    if summary.failed:
        failed_path = (args.out if args.out != "-" else "messages") + ".failed"
        _write_lines(failed_path, summary.failed)
        for conversation_id, error in summary.failed.items():
            say(f"  failed: {conversation_id}: {error}")
        say(f"ghl-async: {len(summary.failed)} conversation(s) failed; ids in {failed_path}")
        return EXIT_FAILED
    return EXIT_OK
