"""Email bodies attached to their messages: ``email_bodies=True``.

The messages and export endpoints leave email bodies out; each email message lists
the ids to fetch them with in ``meta.email.messageIds``. A page's emails are fetched
concurrently (under the client's limiter and concurrency cap, like every request) and
the page is handed out whole and in order once they are in: an email message becomes a
:class:`MessageWithEmails`, every other message is untouched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from ghl_async.models import EmailMessage, Message

__all__ = ["MessageWithEmails", "attach_emails", "email_ids"]


class MessageWithEmails(Message, frozen=True):
    """An email :class:`Message` with its bodies: ``emails``, one per id in
    ``meta.email.message_ids``, in that order.

    ``isinstance(m, Message)`` holds; ``msgspec.to_builtins(m)`` has an ``emails`` list
    of ``GetEmailMessageResponseDto``-shaped dicts next to the message's own fields.
    """

    emails: list[EmailMessage] = []  # noqa: RUF012 - a msgspec field, copied per instance


def email_ids(message: Message) -> list[str]:
    """The email ids of a message's ``meta.email.messageIds`` (empty for non-emails)."""
    meta = message.meta
    if meta is None or meta.email is None:
        return []
    return list(meta.email.message_ids)


def _with_emails(message: Message, emails: list[EmailMessage]) -> MessageWithEmails:
    fields = {name: getattr(message, name) for name in Message.__struct_fields__}
    return MessageWithEmails(**fields, emails=emails)


async def attach_emails(
    messages: Sequence[Message], fetch: Callable[[str], Awaitable[EmailMessage]]
) -> list[Message]:
    """``messages`` in order, each email message given its bodies (fetched at once).

    An error fetching any body is raised as itself (the page is not handed out, so a
    resumed export fetches it again).
    """
    wanted = [(i, email_id) for i, m in enumerate(messages) for email_id in email_ids(m)]
    if not wanted:
        return list(messages)
    # Plain tasks, not a task group: one failure cancels the rest and is raised as
    # itself (never an ExceptionGroup), and a cancelled caller cancels them all.
    tasks = [asyncio.ensure_future(fetch(email_id)) for _, email_id in wanted]
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
    bodies = {key: task.result() for key, task in zip(wanted, tasks, strict=True)}
    out: list[Message] = []
    for i, message in enumerate(messages):
        ids = email_ids(message)
        out.append(_with_emails(message, [bodies[i, e] for e in ids]) if ids else message)
    return out
