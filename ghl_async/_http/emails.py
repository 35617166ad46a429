"""Email bodies attached to their messages: ``email_bodies=True``.

The messages and export endpoints leave email bodies out; each email message lists
the ids to fetch them with in ``meta.email.messageIds``. A page's emails are fetched
concurrently (under the client's limiter and concurrency cap, like every request), each
distinct id once, and the page is handed out whole and in order once they are in: an
email message becomes a :class:`MessageWithEmails`, every other message is untouched.
A body that cannot be fetched is that message's :class:`EmailFailure`, not the page's:
one bad email never stops a location's export.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from ghl_async import errors
from ghl_async.models import EmailMessage, Message

__all__ = ["EmailFailure", "MessageWithEmails", "attach_emails", "email_ids", "failure_of"]


class EmailFailure(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """An email body that could not be fetched: which, and why.

    Attributes:
        email_id: the id from ``meta.email.messageIds``.
        reason: what went wrong, in one line (the error's message).
        status: the HTTP status, if a reply came.
        retry: ``False`` when asking again cannot help (the id is not an id, the body is
            over the client's ``max_body_bytes``); a mirror retries the others on its
            next run.
    """

    email_id: str
    reason: str
    status: int | None = None
    retry: bool = True


class MessageWithEmails(Message, frozen=True):
    """An email :class:`Message` with its bodies: ``emails``, one per id in
    ``meta.email.message_ids`` that could be fetched, in that order, and
    ``email_failures`` for the others (a body that answers 404 or 500 after retries, one
    too large, an id that is not an id): the message is delivered all the same.

    ``isinstance(m, Message)`` holds; ``msgspec.to_builtins(m)`` has an ``emails`` list
    of ``GetEmailMessageResponseDto``-shaped dicts next to the message's own fields (and
    ``emailFailures`` when there are any).
    """

    emails: list[EmailMessage] = []  # noqa: RUF012 - a msgspec field, copied per instance
    email_failures: list[EmailFailure] = []  # noqa: RUF012 - as emails


def email_ids(message: Message) -> list[str]:
    """The email ids of a message's ``meta.email.messageIds`` (empty for non-emails)."""
    meta = message.meta
    if meta is None or meta.email is None:
        return []
    return list(meta.email.message_ids)


def _with_emails(
    message: Message, emails: list[EmailMessage], failures: list[EmailFailure]
) -> MessageWithEmails:
    fields = msgspec.structs.asdict(message)  # one call, not a getattr per field
    fields.update(emails=emails, email_failures=failures)  # replaces any it had
    return MessageWithEmails(**fields)


def failure_of(email_id: str, error: Exception) -> EmailFailure:
    """The :class:`EmailFailure` an error fetching ``email_id`` stands for."""
    if isinstance(error, (TypeError, ValueError)):
        return EmailFailure(email_id=email_id, reason=f"not an email id: {error}", retry=False)
    assert isinstance(error, errors.GHLError)
    # Not retryable and not a status: over max_body_bytes, which a retry sends again.
    permanent = isinstance(error, errors.TransportError) and not error.retryable
    return EmailFailure(
        email_id=email_id,
        reason=error.message.splitlines()[0][:300] if error.message else type(error).__name__,
        status=error.status,
        retry=not permanent,
    )


async def attach_emails(
    messages: Sequence[Message],
    fetch: Callable[[str], Awaitable[EmailMessage]],
    width: int = 16,
) -> list[Message]:
    """``messages`` in order, each email message given its bodies (fetched at once).

    Each distinct id is fetched once, by at most ``width`` workers (the client's
    concurrency: more would only queue for its slots). A body that cannot be fetched
    (an error that stops only this request, or an id that is not an id) becomes an
    :class:`EmailFailure` of its message; an error that would stop every request (a
    refused token, a spent daily budget) is raised as itself, the other fetches
    cancelled.
    """
    wanted = list(dict.fromkeys(e for m in messages for e in email_ids(m)))
    if not wanted:
        return list(messages)
    bodies: dict[str, EmailMessage | EmailFailure] = {}
    pending = iter(wanted)

    async def worker() -> None:
        # The ids in turn (a task per id would queue most of them for a slot).
        for email_id in pending:
            try:
                bodies[email_id] = await fetch(email_id)
            except (TypeError, ValueError) as exc:  # the server gave something not an id
                bodies[email_id] = failure_of(email_id, exc)
            except errors.GHLError as exc:
                if exc.stops_fan_out:
                    raise
                bodies[email_id] = failure_of(email_id, exc)

    # Plain tasks, not a task group: a stopping failure cancels the rest and is raised
    # as itself (never an ExceptionGroup), and a cancelled caller cancels them all.
    tasks = [asyncio.ensure_future(worker()) for _ in range(min(width, len(wanted)))]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            error = task.exception()
            if error is not None:
                raise error
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    out: list[Message] = []
    for message in messages:
        ids = email_ids(message)
        if not ids:
            out.append(message)
            continue
        fetched = [bodies[e] for e in ids]
        out.append(
            _with_emails(
                message,
                [b for b in fetched if isinstance(b, EmailMessage)],
                [b for b in fetched if isinstance(b, EmailFailure)],
            )
        )
    return out
