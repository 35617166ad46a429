"""A whole location's messages: the export endpoint's passes and how to resume them.

``GET /conversations/messages/export`` without ``channel`` returns every message that
is *not* an email; emails come only with ``channel=Email``. "Everything" is therefore
two passes, and each page says which pass it belongs to (:attr:`LocationPage.channel`)
and where to resume after it (:attr:`LocationPage.resume`), one opaque string that
covers both passes.

The decisions are pure functions here; the I/O is the client's one paging loop.
No message is delivered twice across the passes: the server keeps them disjoint, and
in case it ever does not, the first pass drops what is plainly an email and the email
pass drops what is plainly not one (:func:`pass_admits`): a rule per message, so it
holds across a resume without remembering any ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from ghl_async._params import check_cursor
from ghl_async.models import Message

__all__ = [
    "EMAIL_CHANNEL",
    "EMAIL_TYPES",
    "LocationExport",
    "LocationPage",
    "admitted",
    "is_email",
    "pass_admits",
    "plan_passes",
    "resume_token",
]

EMAIL_CHANNEL: Final = "Email"
#: The message types the ``Email`` channel selects.
EMAIL_TYPES: Final = frozenset(
    {"TYPE_EMAIL", "TYPE_CAMPAIGN_EMAIL", "TYPE_CUSTOM_EMAIL", "TYPE_CUSTOM_PROVIDER_EMAIL"}
)
_EMAIL_CODE: Final = 3  # HighLevel's numeric ``type`` of an email
# The two passes of an unfiltered export, by the name their resume tokens carry.
_PASSES: Final = ((None, "rest"), (EMAIL_CHANNEL, "email"))
_TOKEN_PASS: Final = {name: index for index, (_, name) in enumerate(_PASSES)}


class LocationPage(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One page of a location export (:meth:`~ghl_async.Client.iter_location_pages`).

    Attributes:
        messages: this page's messages, in the requested order.
        channel: the ``channel`` this page was requested with; ``None`` is the first
            pass of an unfiltered export (every message but emails), ``"Email"`` its
            second pass (or an export filtered on Email).
        next_cursor: the server's ``nextCursor`` (``None``: this pass is done).
        total: how many messages match this pass's query, when the server says.
        resume: pass it as ``cursor=`` to the same call to go on after this page, in
            whichever pass; ``None`` when nothing follows. With a ``channel`` it is the
            server's cursor itself.
        trace_id: HighLevel's ``traceId`` for this reply, when sent.
        repaired: fields that could not take their types (see :class:`ExportPage`).
        dropped: messages left out: no string ``id``, or (unfiltered export only) a
            message the server put in the wrong pass, which the other pass delivers.
    """

    messages: list[Message]
    channel: str | None = None
    next_cursor: str | None = None
    total: int | None = None
    resume: str | None = None
    trace_id: str | None = None
    repaired: int = 0
    dropped: int = 0


def is_email(message: Message) -> bool | None:
    """True for an email, False for a message plainly not one, None when unknown."""
    kind = message.message_type
    if kind is not None:
        return kind in EMAIL_TYPES
    if message.type is not None:
        return message.type == _EMAIL_CODE
    return None


def pass_admits(channel: str | None, message: Message) -> bool:
    """Whether a message belongs to the pass of an unfiltered export it came in.

    The first pass (``channel`` None) keeps all but plain emails; the email pass keeps
    all but plain non-emails (a message of unknown type is kept where the server put
    it: the server knows its type, and puts it in one pass only).
    """
    email = is_email(message)
    if channel is None:
        return email is not True
    return email is not False


def admitted(channel: str | None, messages: list[Message]) -> list[Message]:
    """The messages of a page that :func:`pass_admits` keeps, in order (one call of
    :func:`is_email` per message, not two calls).
    """
    if channel is None:  # all but plain emails
        return [m for m in messages if is_email(m) is not True]
    return [m for m in messages if is_email(m) is not False]  # all but plain non-emails


def plan_passes(channel: str | None, cursor: str | None) -> tuple[list[str | None], str | None]:
    """The channels to request, in order, and the server cursor to start the first at.

    With a ``channel``, one pass and ``cursor`` is the server's own. Without, two passes
    (``None`` then ``"Email"``) and ``cursor`` must be a :attr:`LocationPage.resume`
    token of an unfiltered export.

    Raises:
        ValueError, TypeError: ``cursor`` is not a cursor (or not such a token).
    """
    if channel is not None:
        return [channel], None if cursor is None else check_cursor(cursor)
    channels = [name for name, _ in _PASSES]
    if cursor is None:
        return channels, None
    name, sep, rest = check_cursor(cursor).partition(":")
    index = _TOKEN_PASS.get(name)
    if not sep or index is None:
        raise ValueError(
            "cursor of an export without channel must be a page's resume token "
            "('rest:...' or 'email:...')"
        )
    return channels[index:], (check_cursor(rest) if rest else None)


@dataclass(frozen=True, slots=True)
class LocationExport:
    """One location export's arguments, checked once: what every request of it asks for.

    Made once by :meth:`of` from the query ``export_params`` checked (the keywords of
    :meth:`~ghl_async.Client.iter_location_pages`, which says what each means), then
    passed whole to the paging layer.

    Attributes:
        location_id: the location.
        query: the checked first request, less ``channel`` and ``cursor`` (each pass
            adds its own).
        passes: the channels to request, in order (:func:`plan_passes`).
        start: the server cursor the first pass starts at.
        unfiltered: no ``channel`` was asked for: each pass drops what belongs to the
            other (:func:`pass_admits`), and resume tokens name the pass.
        email_bodies: email messages come with their bodies.
    """

    location_id: str
    query: Mapping[str, str]
    passes: tuple[str | None, ...]
    start: str | None = None
    unfiltered: bool = True
    email_bodies: bool = False

    @classmethod
    def of(
        cls, query: dict[str, str], *, cursor: str | None = None, email_bodies: bool = False
    ) -> LocationExport:
        """The export of a checked first request (``export_params``'s, taken over).

        Raises:
            ValueError, TypeError: ``cursor`` is not a cursor of this export (see
                :func:`plan_passes`), before any request.
        """
        channel = query.pop("channel", None)
        passes, start = plan_passes(channel, cursor)
        return cls(
            query["locationId"],
            query,
            tuple(passes),
            start,
            unfiltered=channel is None,
            email_bodies=email_bodies,
        )


def resume_token(
    channels: Sequence[str | None], index: int, next_cursor: str | None, unfiltered: bool
) -> str | None:
    """Where to go on after a page of pass ``index`` whose ``nextCursor`` is given.

    ``unfiltered``: the two-pass export, whose tokens name the pass (``rest:CURSOR``,
    ``email:`` for the start of the email pass); otherwise the server's cursor.
    """
    if not unfiltered:
        return next_cursor
    if next_cursor is not None:
        return f"{_name(channels[index])}:{next_cursor}"
    if index + 1 < len(channels):
        return f"{_name(channels[index + 1])}:"
    return None


def _name(channel: str | None) -> str:
    for name, token in _PASSES:
        if name == channel:
            return token
    raise ValueError(f"no pass for channel {channel!r}")  # pragma: no cover - by construction
