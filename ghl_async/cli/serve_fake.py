"""``ghl-async serve-fake``: run the fake HighLevel (one location or an agency) until Ctrl-C.

:mod:`ghl_async.testing` is imported when the command runs, not when the command line
starts: it loads aiohttp's server, which no other command needs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ghl_async.cli.args import Subparsers, count_arg, rate_arg
from ghl_async.cli.exits import EXIT_OK, UsageError
from ghl_async.ratelimit import RateLimit

if TYPE_CHECKING:
    from ghl_async.testing import FakeAgency, FakeHighLevel

__all__ = ["faults_arg", "messages_arg", "register", "run"]


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


def register(subparsers: Subparsers) -> None:
    """The ``serve-fake`` command."""
    serve = subparsers.add_parser(
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
    serve.set_defaults(handler=run)


async def run(args: argparse.Namespace) -> int:
    """Run ``ghl-async serve-fake`` until interrupted."""
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
