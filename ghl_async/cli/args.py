"""The command line's grammar: flags, their checks, and the id and token sources.

Every check that can be done before a request is done here, and every error names the
flag as typed (``--rate``), never a Python argument, in one line.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable
from typing import NoReturn

from ghl_async._validation import check_base_url, check_id
from ghl_async._version import __version__
from ghl_async.cli.location import add_export_flags, add_sync_parser
from ghl_async.client import DEFAULT_BASE_URL
from ghl_async.models import FilterType
from ghl_async.ratelimit import RateLimit

__all__ = [
    "UsageError",
    "build_parser",
    "parse_ids",
    "parse_location_ids",
    "read_ids",
    "read_token",
]


class UsageError(Exception):
    """A problem with how the command was called (exit code 2), in one line."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and no abbreviated long options."""

    def __init__(self, **kwargs: object) -> None:
        # "--token" must never be read as "--token-file": no prefix matching, anywhere.
        kwargs["allow_abbrev"] = False
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?|\.\d+)?\s*(ms|s|m|h)\s*")
_FILTERS = tuple(member.value for member in FilterType)


def rate_arg(text: str) -> RateLimit:
    """``100/10s``: requests per interval, the unit required (ms, s, m or h)."""
    match = _RATE.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a rate; write requests/interval with its unit, e.g. 100/10s"
        )
    count, span, unit = match.groups()
    try:
        return RateLimit(int(count), float(span or 1) * _UNITS[unit])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


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


def count_arg(low: int, high: int) -> type[int]:
    """An int type for argparse that must lie in ``low..high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, got {value}")
        return value

    return parse  # type: ignore[return-value]


def base_url_arg(text: str) -> str:
    """An http(s) API root; plain http only on loopback (the token would travel in clear)."""
    try:
        return check_base_url(text, allow_insecure=False)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("base_url ", "", 1)) from None


def location_arg(text: str) -> str:
    """A location id."""
    try:
        return check_id(text, "location id")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _refuse_token(text: str) -> str:
    # Never echo the value: it is a secret that just landed in shell history.
    raise argparse.ArgumentTypeError(
        "the token is not taken on the command line (ps and shell history would show it); "
        "set GHL_TOKEN or use --token-file"
    )


def messages_arg(text: str) -> int | tuple[int, int]:
    """Messages per conversation for the fake: ``N`` or ``LOW-HIGH``."""
    low, dash, high = text.partition("-")
    try:
        value: int | tuple[int, int] = (int(low), int(high)) if dash else int(low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not N or LOW-HIGH") from None
    bounds = value if isinstance(value, tuple) else (value, value)
    if bounds[0] < 0 or bounds[0] > bounds[1]:
        raise argparse.ArgumentTypeError(f"{text!r} is not N or LOW-HIGH with LOW <= HIGH")
    return value


def faults_arg(text: str) -> object:
    """The fake's faults: ``reset=0.02,server_error=0.05,latency=0.01``."""
    from ghl_async.testing import Faults

    try:
        return Faults.parse(text)
    except (TypeError, ValueError) as exc:
        if "unknown fault" in str(exc):
            raise argparse.ArgumentTypeError(str(exc)) from None
        raise argparse.ArgumentTypeError(
            f"{text!r} is not like reset=0.02,server_error=0.05"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    """The ``ghl-async`` parser with its ``export``, ``demo`` and ``serve-fake`` commands."""
    parser = _Parser(
        prog="ghl-async", description="Read HighLevel conversations fast, within budget."
    )
    parser.add_argument("--version", action="version", version=f"ghl-async {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    export = sub.add_parser(
        "export",
        help="export messages to JSON Lines",
        description="Export messages as JSON Lines, resumably. The token comes from "
        "GHL_TOKEN or --token-file, never from the command line.",
    )
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "ids", nargs="*", default=[], metavar="CONVERSATION_ID", help="conversations to export"
    )
    source.add_argument(
        "--ids-file", metavar="FILE", help="one id per line, # comments; - for stdin"
    )
    source.add_argument(
        "--location", type=location_arg, metavar="LOCATION_ID", help="every conversation"
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
    export.add_argument("--out", default="messages.jsonl", help="output file; - for stdout")
    replace = export.add_mutually_exclusive_group()
    replace.add_argument("--resume", action="store_true", help="continue a stopped export")
    replace.add_argument("--force", action="store_true", help="replace an existing output")
    export.add_argument(
        "--concurrency", type=count_arg(1, 256), default=16, help="requests in flight (16)"
    )
    export.add_argument(
        "--base-url", type=base_url_arg, default=DEFAULT_BASE_URL, help="the API root"
    )
    export.add_argument("--token-file", metavar="FILE", help="read the token from this file")
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

    add_sync_parser(sub)

    demo = sub.add_parser("demo", help="export from an in-process fake server")
    demo.add_argument(
        "--conversations", type=count_arg(1, 100_000), default=300, help="how many (300)"
    )
    demo.add_argument("--seed", type=int, default=7, help="the fake data's seed")
    demo.add_argument(
        "--rate", type=rate_arg, default=RateLimit(50, 2.0), help="the fake's budget (50/2s)"
    )
    demo.add_argument(
        "--progress", action="store_true", default=None, help="show progress when piped"
    )

    serve = sub.add_parser(
        "serve-fake",
        help="run the fake HighLevel server",
        description="Serve a fake HighLevel until Ctrl-C; prints its URL, token and location "
        "(with --locations: an agency's locations and its OAuth routes).",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument(
        "--port", type=count_arg(0, 65535), default=8080, help="port; 0 picks a free one"
    )
    serve.add_argument(
        "--conversations", type=count_arg(0, 1_000_000), default=200, help="how many (200)"
    )
    serve.add_argument(
        "--messages", type=messages_arg, default=(0, 150), help="per conversation: N or LOW-HIGH"
    )
    serve.add_argument("--seed", type=int, default=0, help="the fake data's seed")
    serve.add_argument(
        "--rate", type=rate_arg, default=RateLimit(100, 10.0), help="burst budget (100/10s)"
    )
    serve.add_argument(
        "--daily", type=count_arg(1, 10**9), default=200_000, help="daily budget (200000)"
    )
    serve.add_argument(
        "--faults", type=faults_arg, default=None, help="e.g. reset=0.02,server_error=0.05"
    )
    serve.add_argument("--token", help="the token to accept (random by default)")
    serve.add_argument(
        "--locations",
        type=count_arg(1, 100_000),
        default=None,
        help="serve an agency of N locations, each with its own budget and "
        "--conversations of its own, plus the OAuth routes",
    )
    serve.add_argument(
        "--uninstalled",
        type=count_arg(0, 100_000),
        default=0,
        help="with --locations: company locations without the app (listed, not served)",
    )
    serve.add_argument(
        "--token-ttl",
        type=float,
        default=86399.0,
        help="with --locations: seconds an OAuth token lives (86399)",
    )
    serve.add_argument(
        "--info",
        metavar="FILE",
        help="write the URL, tokens and ids as JSON to FILE once listening (for tests)",
    )
    serve.add_argument(
        "--accept-version",
        action="append",
        default=None,
        help="Version header values to accept (repeatable; 2021-04-15)",
    )
    _add_queue_commands(sub)
    return parser


def _add_queue_commands(sub: argparse._SubParsersAction[_Parser]) -> None:
    worker = sub.add_parser(
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

    status = sub.add_parser("status", help="show a queued export's progress")
    status.add_argument("--queue", required=True, metavar="REDIS_URL", help="the queue's Redis")
    status.add_argument("--run", help="the run id (the latest by default)")


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


def read_token(token_file: str | None) -> str:
    """The token from ``token_file`` or ``GHL_TOKEN``."""
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8-sig") as handle:
                token = handle.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise UsageError(f"cannot read the token file: {reason}") from None
    else:
        token = os.environ.get("GHL_TOKEN", "").strip()
    if not token:
        raise UsageError("no token: set GHL_TOKEN or pass --token-file")
    return token


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
