"""``ghl-async export --location``: the location export, resumable, with its fallback.

The location export (``GET /conversations/messages/export``, 500 messages a request,
both passes) writes through the same sink as the conversation export: lines are
fsynced before the checkpoint record that covers them, and the record's cursor is the
page's resume token (:attr:`~ghl_async.LocationPage.resume`, which names the pass), so
after ``kill -9`` a ``--resume`` cuts the output back to the last record and goes on
from that token: every message exactly once.

When the token or plan lacks the endpoint, the same command falls back to conversation
search plus fan-out (saying so on stderr) and records that in the checkpoint, so a
``--resume`` of a fallback export resumes the fallback.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from datetime import datetime, timezone
from typing import Any

from ghl_async import errors
from ghl_async._http.export_route import LocationPage
from ghl_async._params import CHANNELS, format_export_date
from ghl_async.cli.args import location_arg
from ghl_async.cli.exits import say
from ghl_async.cli.progress import export_with_progress
from ghl_async.client import Client
from ghl_async.export.files import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    ExportOptions,
    ExportRefused,
    ExportSummary,
    _Sink,
    message_line,
)

__all__ = [
    "CHANNEL_TYPES",
    "EXPORT_KEY",
    "add_export_flags",
    "channel_arg",
    "date_arg",
    "export_location",
    "location_flags_problem",
]

#: The checkpoint key of the location export's records (not a conversation id: has ``@``).
EXPORT_KEY = "@export"

#: The ``type`` filter the fallback (the messages endpoint) uses for a ``--channel``.
CHANNEL_TYPES = {
    "Call": "TYPE_CALL",
    "SMS": "TYPE_SMS",
    "Email": "TYPE_EMAIL",
    "WhatsApp": "TYPE_WHATSAPP,TYPE_ACTIVITY_WHATSAPP",
    "Instagram": "TYPE_INSTAGRAM",
    "Facebook": "TYPE_FACEBOOK",
}


def date_arg(text: str) -> datetime:
    """An ISO 8601 date or date-time; without an offset it is UTC."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 date, e.g. 2025-06-01 or 2025-06-01T12:00:00Z"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def channel_arg(text: str) -> str:
    """A channel of the location export, any case: sms, Email, whatsapp..."""
    for name in CHANNELS:
        if name.lower() == text.strip().lower():
            return name
    raise argparse.ArgumentTypeError(f"{text!r} is not a channel; valid: {', '.join(CHANNELS)}")


def add_export_flags(export: argparse.ArgumentParser) -> None:
    """The location export's flags on ``ghl-async export``."""
    export.add_argument(
        "--contact", type=location_arg, metavar="CONTACT_ID", help="only this contact's messages"
    )
    export.add_argument("--channel", type=channel_arg, help=f"only one of {', '.join(CHANNELS)}")
    export.add_argument(
        "--since", type=date_arg, help="only messages created at or after (ISO 8601, UTC default)"
    )
    export.add_argument("--until", type=date_arg, help="only messages created at or before")
    export.add_argument(
        "--email-bodies", action="store_true", help="fetch each email's bodies into 'emails'"
    )


def location_flags_problem(args: argparse.Namespace) -> str | None:
    """Why the location flags cannot go with the rest of the command, or ``None``."""
    if args.location:
        if args.types:
            return "--types filters a conversation export; with --location use --channel"
        return None
    for flag in ("contact", "channel", "until"):
        if getattr(args, flag) is not None:
            return f"--{flag} needs --location (it filters the location export)"
    return None


def _describe(args: argparse.Namespace) -> str:
    """The export's ``source`` in the checkpoint: the location and every filter."""
    parts = [args.location]
    if args.contact:
        parts.append(f"contact={args.contact}")
    if args.channel:
        parts.append(f"channel={args.channel}")
    if args.since:
        parts.append(f"since={format_export_date(args.since)}")
    if args.until:
        parts.append(f"until={format_export_date(args.until)}")
    if args.email_bodies:
        parts.append("email-bodies")
    return ";".join(parts)


async def export_location(client: Client, args: argparse.Namespace) -> ExportSummary:
    """``export --location``: the location export, or the fallback when refused.

    The fallback is the CLI's conversation export (with its progress display).

    Raises:
        ExportRefused, OutputError, errors.GHLError: as the conversation export.
    """
    described = _describe(args)
    fallback_source = f"location:{described}"
    if args.resume and args.out != "-":
        recorded = Checkpoint.load(args.out + ".checkpoint").options
        if recorded is not None and recorded.source == fallback_source:
            return await _fallback(client, args, fallback_source, resume=True)
    options = ExportOptions(
        format=CHECKPOINT_FORMAT,
        source=f"export:{described}",
        types=None,
        base_url=client._base_url,
    )
    sink = _Sink(args.out, options, resume=args.resume, force=args.force)
    summary = ExportSummary()
    started = time.monotonic()
    refused: errors.LocationExportUnavailable | None = None
    try:
        if EXPORT_KEY in sink.state.done:
            return summary
        pages = client.iter_location_pages(
            args.location,
            channel=args.channel,
            contact_id=args.contact,
            since=args.since,
            until=args.until,
            cursor=sink.state.cursors.get(EXPORT_KEY),
            email_bodies=args.email_bodies,
        )
        async with aclosing(pages):
            try:
                async for page in pages:
                    _write(sink, page)
                    summary.messages += len(page.messages)
            except errors.LocationExportUnavailable as exc:
                if sink.state.cursors or sink.state.done:
                    raise  # refused part way through a resumed export: say so, stop
                refused = exc
    finally:
        sink.close()
        summary.elapsed = time.monotonic() - started
    if refused is None:
        return summary
    if args.until is not None:
        raise ExportRefused(
            f"{refused.message}; --until needs the location export (the fallback cannot "
            "bound by date from above)"
        )
    return await _fallback(client, args, fallback_source, resume=False, reason=refused.message)


def _write(sink: _Sink, page: LocationPage) -> None:
    data = b"".join(message_line(m.conversation_id or "", m) for m in page.messages)
    sink.write(EXPORT_KEY, data, page.resume, page.resume is None)


async def _fallback(
    client: Client,
    args: argparse.Namespace,
    source: str,
    *,
    resume: bool,
    reason: str | None = None,
) -> ExportSummary:
    """Conversation search plus fan-out, as before the location export existed."""
    said = reason is None  # a resumed fallback was announced by the run it resumes

    async def conversation_ids() -> AsyncIterator[str]:
        nonlocal said
        filters: dict[str, Any] = {}
        if args.contact:
            filters["contactId"] = args.contact
        async for conversation in client.iter_conversations(
            args.location, since=args.since, **filters
        ):
            if not said:
                # Announced once the search answers: a token refused everywhere gets
                # the one line about the token instead.
                said = True
                say(f"ghl-async: {reason}; falling back to conversation search + fan-out")
            yield conversation.id

    return await export_with_progress(
        client,
        conversation_ids(),
        total=None,
        show=args.progress,
        out=args.out,
        resume=resume,
        force=not resume,
        types=CHANNEL_TYPES[args.channel] if args.channel else args.types,
        source=source,
        concurrency=args.concurrency,
        since=args.since,
        email_bodies=args.email_bodies,
    )
