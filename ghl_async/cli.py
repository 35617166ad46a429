"""The ``ghl-async`` command: ``export``, ``demo`` and ``serve-fake``.

Exit codes: 0 done; 1 some conversations failed (listed in ``OUT.failed``) or the daily
budget ran out; 2 bad usage or a refused token; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from . import errors
from ._export import ExportSummary, export_messages
from ._validation import check_id, check_types
from ._version import __version__
from .client import DEFAULT_BASE_URL, Client
from .models import MessagesPage
from .ratelimit import RateLimit
from .retry import RetryPolicy

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A problem with how the command was called (exit code 2)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ghl-async", description="Read HighLevel conversations fast, within budget."
    )
    parser.add_argument("--version", action="version", version=f"ghl-async {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    export = sub.add_parser(
        "export",
        help="export messages to JSON Lines",
        description="Export messages as JSON Lines. The token comes from GHL_TOKEN or "
        "--token-file, never from the command line.",
    )
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument("ids", nargs="*", default=[], metavar="CONVERSATION_ID")
    source.add_argument("--ids-file", metavar="FILE", help="one id per line; - for stdin")
    source.add_argument("--location", metavar="LOCATION_ID", help="every conversation")
    export.add_argument("--types", help="comma list, e.g. TYPE_SMS,TYPE_EMAIL")
    export.add_argument("--out", default="messages.jsonl", help="output file; - for stdout")
    export.add_argument("--concurrency", type=int, default=16)
    export.add_argument("--resume", action="store_true", help="continue a stopped export")
    export.add_argument("--base-url", default=DEFAULT_BASE_URL)
    export.add_argument("--token-file", help="read the token from this file")
    export.add_argument("--rate", help="cap the budget, e.g. 100/10s")
    progress = export.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress",
        action="store_true",
        default=None,
        help="show progress even when stderr is not a terminal",
    )
    progress.add_argument("--no-progress", dest="progress", action="store_false")

    demo = sub.add_parser("demo", help="export from an in-process fake server")
    demo.add_argument("--conversations", type=int, default=300)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--rate", default="50/2s", help="the fake server's budget")
    demo.add_argument("--progress", action="store_true", default=None)

    serve = sub.add_parser("serve-fake", help="run the fake HighLevel server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--conversations", type=int, default=200)
    serve.add_argument("--messages", default="0-150", help="per conversation: N or LOW-HIGH")
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--rate", default="100/10s")
    serve.add_argument("--daily", type=int, default=200_000)
    serve.add_argument("--faults", default="", help="e.g. reset=0.02,server_error=0.05")
    serve.add_argument("--token", help="the token to accept (random by default)")
    serve.add_argument(
        "--accept-version",
        action="append",
        default=None,
        help="Version header values to accept (repeatable)",
    )
    return parser


def _write_lines(path: str, lines: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(line + "\n" for line in lines)


def _count_lines(path: str) -> int:
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _read_token(token_file: str | None) -> str:
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise UsageError(f"cannot read the token file: {exc.strerror}") from None
    else:
        token = os.environ.get("GHL_TOKEN", "").strip()
    if not token:
        raise UsageError("no token: set GHL_TOKEN or pass --token-file")
    return token


def _read_ids(args: argparse.Namespace) -> list[str] | None:
    if args.location:
        return None
    if args.ids_file:
        if args.ids_file == "-":
            lines = sys.stdin.read().splitlines()
        else:
            try:
                with open(args.ids_file, encoding="utf-8") as handle:
                    lines = handle.read().splitlines()
            except OSError as exc:
                raise UsageError(f"cannot read {args.ids_file}: {exc.strerror}") from None
        ids = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    else:
        ids = list(args.ids)
    try:
        for conversation_id in ids:
            check_id(conversation_id, "conversation id")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return list(dict.fromkeys(ids))


class _Progress:
    """A tqdm bar on stderr, or nothing."""

    def __init__(self, enabled: bool, total: int | None, client: Client) -> None:
        self._client = client
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, unit="conv", file=sys.stderr, dynamic_ncols=True, desc="export"
            )
        self._started = asyncio.get_running_loop().time()

    def page(self, conversation_id: str, page: MessagesPage) -> None:
        bar = self._bar
        if bar is None:
            return
        if page.is_last:
            bar.update(1)
        stats = self._client.stats
        elapsed = max(1e-6, asyncio.get_running_loop().time() - self._started)
        bar.set_postfix(
            messages=stats.messages,
            req_s=f"{stats.requests / elapsed:.1f}",
            throttled=stats.throttled,
            refresh=False,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _summary_table(
    summary: ExportSummary, client: Client, budget: RateLimit | None, extra: dict[str, str]
) -> str:
    stats = client.stats
    rate = stats.requests / summary.elapsed if summary.elapsed else 0.0
    rows = [
        (
            "conversations",
            f"{summary.conversations}"
            + (f" (+{summary.skipped} already done)" if summary.skipped else ""),
        ),
        ("messages", f"{summary.messages}"),
        ("failed conversations", f"{len(summary.failed)}"),
        ("requests", f"{stats.requests}"),
        ("retries", f"{stats.retries}"),
        ("429s", f"{stats.throttled}"),
        ("elapsed", f"{summary.elapsed:.1f} s"),
    ]
    if budget is not None and stats.requests and summary.elapsed:
        # The fastest a strict window allows: one full window per max_requests sends.
        ideal = ((stats.requests - 1) // budget.max_requests) * budget.interval
        use = f"{100 * min(1.0, ideal / summary.elapsed):.0f}% of ideal ({ideal:.1f} s)"
        budget_text = f"budget {budget.max_requests} per {budget.interval:g} s"
        rows.append(("requests/s", f"{rate:.1f} ({budget_text}; {use})"))
    else:
        rows.append(("requests/s", f"{rate:.1f}"))
    rows.extend(extra.items())
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name.ljust(width)}  {value}" for name, value in rows)


def _budget_of(client: Client) -> RateLimit | None:
    stats = client.stats
    if stats.server_max_requests and stats.server_interval:
        return RateLimit(stats.server_max_requests, stats.server_interval)
    return None


async def _conversation_ids(client: Client, location: str) -> AsyncIterator[str]:
    async for conversation in client.iter_conversations(location):
        yield conversation.id


async def _export(args: argparse.Namespace) -> int:
    token = _read_token(args.token_file)
    ids = _read_ids(args)
    try:
        types = check_types(args.types) if args.types else None
        rate = RateLimit.parse(args.rate) if args.rate else None
        client = Client(
            token, base_url=args.base_url, max_concurrency=args.concurrency, rate_limit=rate
        )
        if args.location:
            check_id(args.location, "location id")
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    show = sys.stderr.isatty() if args.progress is None else args.progress
    async with client:
        progress = _Progress(show, len(ids) if ids is not None else None, client)
        source = ids if ids is not None else _conversation_ids(client, args.location)
        try:
            try:
                summary = await export_messages(
                    client,
                    source,
                    out=args.out,
                    resume=args.resume,
                    types=types,
                    concurrency=args.concurrency,
                    on_page=progress.page,
                )
            finally:
                progress.close()
        except errors.AuthenticationError as exc:
            _say(f"ghl-async: the token was refused ({exc.message}); check GHL_TOKEN")
            return EXIT_USAGE
        except errors.DailyLimitExceeded as exc:
            when = (
                dt.datetime.fromtimestamp(exc.resets_at).astimezone().isoformat(timespec="minutes")
                if exc.resets_at
                else "at the start of the next day"
            )
            _say(
                f"ghl-async: the daily request budget is spent; it resets {when}.\n"
                f"Resume then with the same command plus --resume."
            )
            return EXIT_FAILED
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    extra: dict[str, str] = {"output": args.out}
    _say("export finished\n" + _summary_table(summary, client, _budget_of(client), extra))
    if summary.failed:
        failed_path = (args.out if args.out != "-" else "messages") + ".failed"
        _write_lines(failed_path, summary.failed)
        for conversation_id, error in summary.failed.items():
            _say(f"  failed: {conversation_id}: {error}")
        _say(f"ghl-async: {len(summary.failed)} conversation(s) failed; ids in {failed_path}")
        return EXIT_FAILED
    return EXIT_OK


async def _demo(args: argparse.Namespace) -> int:
    from .testing import FakeHighLevel, Faults

    budget = RateLimit.parse(args.rate)
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
            show = sys.stderr.isatty() if args.progress is None else args.progress
            progress = _Progress(show, len(fake.conversation_ids), client)
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "messages.jsonl")
                try:
                    summary = await export_messages(
                        client, fake.conversation_ids, out=out, on_page=progress.page
                    )
                finally:
                    progress.close()
                lines = _count_lines(out)
        extra = {
            "lines written": f"{lines} (server holds {fake.total_messages})",
            "most requests in any window": f"{fake.stats.max_in_window} "
            f"(budget {budget.max_requests})",
            "server 429s": f"{fake.stats.throttled}",
            "faults injected": ", ".join(f"{k} {v}" for k, v in sorted(fake.stats.faults.items()))
            or "none",
        }
        _say("demo finished\n" + _summary_table(summary, client, budget, extra))
    ok = lines == fake.total_messages and fake.stats.max_in_window <= budget.max_requests
    return EXIT_OK if ok and not summary.failed else EXIT_FAILED


async def _serve(args: argparse.Namespace) -> int:
    from .testing import FakeHighLevel, Faults

    low, _, high = args.messages.partition("-")
    messages: int | tuple[int, int] = (int(low), int(high)) if high else int(low)
    versions = args.accept_version or ["2021-04-15"]
    fake = FakeHighLevel(
        conversations=args.conversations,
        seed=args.seed,
        messages=messages,
        rate_limit=RateLimit.parse(args.rate),
        daily_limit=args.daily,
        faults=Faults.parse(args.faults),
        token=args.token,
        accept_versions=versions,
        host=args.host,
        port=args.port,
    )
    async with fake:
        print(f"FakeHighLevel listening on {fake.url}", flush=True)
        print(f"token: {fake.token}", flush=True)
        print(
            f"conversations: {len(fake.conversation_ids)}, messages: {fake.total_messages}",
            flush=True,
        )
        await asyncio.Event().wait()
    return EXIT_OK  # pragma: no cover - runs until interrupted


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = _parser().parse_args(argv)
    runner = {"export": _export, "demo": _demo, "serve-fake": _serve}[args.command]
    try:
        return asyncio.run(runner(args))
    except UsageError as exc:
        _say(f"ghl-async: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        if args.command == "export":
            out = getattr(args, "out", "messages.jsonl")
            _say(
                f"\nInterrupted. Everything written so far is kept; to continue, run the "
                f"same command with --resume (output: {out})."
            )
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
