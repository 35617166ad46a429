"""``ghl-async export --location ID --to URL``: a location mirrored into a database.

The library's pipeline (:func:`ghl_async.export.export_location`) does the work: every
page is committed with the export's state, so running the same command again after an
interruption goes on where the database says, with nothing lost or written twice.
"""

from __future__ import annotations

import argparse
import os
from functools import partial
from typing import NamedTuple

from ghl_async.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_OUTPUT, say
from ghl_async.cli.location import email_failures, run_pipeline
from ghl_async.cli.preflight import check_access
from ghl_async.client import Client
from ghl_async.export.pipeline import ExportResult
from ghl_async.export.sink import Sink
from ghl_async.export.targets import describe, sink_for

__all__ = ["SinkTarget", "mirror_location", "sink_url_arg", "to_flags_problem"]


class SinkTarget(NamedTuple):
    """A ``--to`` URL and the sink it names, built once as the command line is read."""

    url: str
    sink: Sink

    def __repr__(self) -> str:
        return f"SinkTarget({describe(self.url)})"  # never a password


def sink_url_arg(text: str) -> SinkTarget:
    """A ``--to`` URL, checked before anything runs (the sink is opened later)."""
    try:
        return SinkTarget(text, sink_for(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    except ImportError as exc:  # the postgres extra is not installed
        raise argparse.ArgumentTypeError(f"{exc}") from None


def to_flags_problem(args: argparse.Namespace, default_out: str) -> str | None:
    """Why ``--to`` cannot go with the rest of the command line, or ``None``."""
    if args.to is None:
        return None
    if not args.location:
        return "--to mirrors a whole location: use it with --location"
    if args.resume or args.force or args.out != default_out:
        return (
            "--to writes to the database (it resumes by itself): leave out --out, "
            "--resume and --force"
        )
    return None


def _new_sqlite_file(url: str) -> bool:
    """A ``sqlite:///`` URL whose file does not exist yet (opening the sink creates it)."""
    if not url.startswith("sqlite:///"):
        return False
    try:
        os.stat(url.removeprefix("sqlite:///"))
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


async def mirror_location(client: Client, args: argparse.Namespace, token: str) -> int:
    """Mirror ``args.location`` into the sink ``args.to`` names; one summary line.

    The server is asked once before a new SQLite file is created (a wrong URL or token
    leaves no database behind); an existing database is opened first, so that what it
    refuses is said without the network.
    """
    target: SinkTarget = args.to
    where = describe(target.url)

    result = await run_pipeline(
        client,
        args,
        target.sink,
        where=where,
        refused_code=EXIT_OUTPUT,
        sink_error=f"cannot write {where}: ",
        again="run the same command again",
        restart="use another database",
        check=partial(check_access, token, args.base_url, location_id=args.location),
        check_first=_new_sqlite_file(target.url),
    )
    say(_summary(result, where) + email_failures(result, "the same command run again"))
    return EXIT_FAILED if result.failed_emails else EXIT_OK


def _summary(result: ExportResult, where: str) -> str:
    how = (
        "conversation by conversation (the export route was refused)"
        if result.fallback
        else ("through the export route")
    )
    if result.resumed and result.messages == 0 and result.pages == 0:
        return f"export: {where} already holds the whole location; nothing to do"
    resumed = ", resumed" if result.resumed else ""
    emails = f" and {result.emails} email bodies" if result.emails else ""
    return (
        f"export: {result.messages} messages{emails} into {where} in {result.pages} "
        f"pages, {how}{resumed}"
    )
