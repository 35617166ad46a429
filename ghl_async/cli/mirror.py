"""``ghl-async export --location ID --to URL``: a location mirrored into a database.

The library's pipeline (:func:`ghl_async.export.export_location`) does the work: every
page is committed with the export's state, so running the same command again after an
interruption goes on where the database says, with nothing lost or written twice.
"""

from __future__ import annotations

import argparse

from ghl_async import errors
from ghl_async.cli.exits import EXIT_FAILED, EXIT_OK, EXIT_OUTPUT, CommandExit, UsageError, say
from ghl_async.client import Client
from ghl_async.export.pipeline import ExportResult, export_location
from ghl_async.export.sink import Sink
from ghl_async.export.targets import describe, sink_for

__all__ = ["mirror_location", "sink_url_arg", "to_flags_problem"]


def sink_url_arg(text: str) -> str:
    """A ``--to`` URL, checked before anything runs (the sink is opened later)."""
    try:
        sink_for(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    except ImportError as exc:  # the postgres extra is not installed
        raise argparse.ArgumentTypeError(f"{exc}") from None
    return text


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


async def mirror_location(client: Client, args: argparse.Namespace) -> int:
    """Mirror ``args.location`` into the sink ``args.to`` names; one summary line."""
    where = describe(args.to)
    sink: Sink = sink_for(args.to)
    try:
        async with sink:
            result = await export_location(
                client,
                args.location,
                sink,
                since=args.since,
                until=args.until,
                channel=args.channel,
                contact_id=args.contact,
                email_bodies=args.email_bodies,
            )
    except errors.SinkError as exc:
        raise CommandExit(
            EXIT_OUTPUT, f"cannot write {where}: {exc}; what was committed stands"
        ) from None
    except ValueError as exc:  # a state left by other arguments
        raise UsageError(str(exc).replace("pass resume=False", "use another database")) from None
    except errors.AuthenticationError:
        raise  # the command's own one line: the token was refused
    except errors.GHLError as exc:
        raise CommandExit(
            EXIT_FAILED,
            f"export of location {args.location} stopped ({exc}); what was committed "
            f"stands: run the same command again to continue",
        ) from None
    say(_summary(result, where))
    return EXIT_OK


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
