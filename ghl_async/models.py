"""Wire models: msgspec structs declared once and decoded straight from response bytes.

The structs follow what the live service sends, not only the published page:

* the reply is wrapped, ``{"messages": {"lastMessageId", "nextPage", "messages": [...]}}``;
  the flat form is accepted too;
* ``messageType``, ``status``, ``direction`` and ``source`` are open strings: a value this
  SDK has never seen is kept, never an error. :class:`MessageType` lists the known ones to
  compare against (``message.message_type == MessageType.TYPE_SMS``);
* call duration arrives as ``meta.callDuration`` (``"120"`` or ``120``) or as
  ``meta.call.duration``; :attr:`MessageMeta.call_duration` is an ``int`` either way;
* unknown fields are ignored.

``msgspec.to_builtins(message)`` turns a message into a dict (camelCase keys, as on the
wire) ready for pandas or polars.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import msgspec

__all__ = [
    "CallMeta",
    "Conversation",
    "EmailMeta",
    "FilterType",
    "Message",
    "MessageMeta",
    "MessageType",
    "MessagesPage",
]


class _Wire(msgspec.Struct, rename="camel", kw_only=True, frozen=True, gc=False):
    """Shared options of every wire struct."""


class CallMeta(_Wire, frozen=True):
    """``meta.call`` as live call messages carry it."""

    duration: int | None = None
    status: str | None = None


class EmailMeta(_Wire, frozen=True):
    """``meta.email``: the ids of the email messages in the thread."""

    message_ids: list[str] = []


class MessageMeta(_Wire, frozen=True):
    """A message's ``meta`` object.

    Attributes:
        call_duration: call length in seconds, from ``callDuration`` (string or number)
            or ``call.duration``.
        call_status: ``callStatus`` or ``call.status``.
        call: the raw ``meta.call`` object, when sent.
        email: for email messages, the ids to fetch bodies with.
        ig: Instagram page details, as sent.
        fb: Facebook page details, as sent.
    """

    call_duration: int | None = None
    call_status: str | None = None
    call: CallMeta | None = None
    email: EmailMeta | None = None
    ig: dict[str, Any] | None = None
    fb: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        call = self.call
        if call is not None:
            if self.call_duration is None and call.duration is not None:
                msgspec.structs.force_setattr(self, "call_duration", call.duration)
            if self.call_status is None and call.status is not None:
                msgspec.structs.force_setattr(self, "call_status", call.status)


class Message(_Wire, frozen=True):
    """One message of a conversation.

    Field names are the snake_case of the wire names. ``message_type``, ``status``,
    ``direction`` and ``source`` keep whatever string the server sent; compare them with
    :class:`MessageType` and plain strings. ``type`` is HighLevel's numeric code, see
    :meth:`MessageType.from_code`.
    """

    id: str
    type: int | None = None
    message_type: str | None = None
    conversation_id: str | None = None
    location_id: str | None = None
    contact_id: str | None = None
    date_added: datetime | None = None
    direction: str | None = None
    status: str | None = None
    content_type: str | None = None
    body: str | None = None
    attachments: list[str] = []
    meta: MessageMeta | None = None
    source: str | None = None
    user_id: str | None = None
    alt_id: str | None = None
    conversation_provider_id: str | None = None
    chat_widget_id: str | None = None


class _PageBody(_Wire, frozen=True):
    messages: list[Message] = []
    last_message_id: str | None = None
    next_page: bool = False


class _Envelope(_Wire, frozen=True):
    # Wrapped form: {"messages": {...page...}}; flat form: {"messages": [...], ...}.
    messages: _PageBody | list[Message]
    last_message_id: str | None = None
    next_page: bool = False
    trace_id: str | None = None


class MessagesPage(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One page of a conversation's messages, newest first.

    Attributes:
        messages: the messages of this page.
        last_message_id: the cursor for the next page (the id of the last message).
        next_page: the server's word that more pages follow.
        trace_id: HighLevel's ``traceId`` for this reply, when sent.
    """

    messages: list[Message]
    last_message_id: str | None = None
    next_page: bool = False
    trace_id: str | None = None

    @property
    def is_last(self) -> bool:
        """True when no page follows this one (``nextPage`` false, or an empty page)."""
        return not self.next_page or not self.messages


class Conversation(_Wire, frozen=True):
    """One conversation as ``GET /conversations/search`` lists it."""

    id: str
    contact_id: str | None = None
    location_id: str | None = None
    last_message_date: int | None = None
    last_message_type: str | None = None
    last_message_body: str | None = None
    last_message_direction: str | None = None
    unread_count: int | None = None
    type: str | None = None
    full_name: str | None = None
    contact_name: str | None = None
    email: str | None = None
    phone: str | None = None
    date_added: int | None = None
    date_updated: int | None = None
    sort: list[Any] = []


class _ConversationsReply(_Wire, frozen=True):
    conversations: list[Conversation] = []
    total: int | None = None
    trace_id: str | None = None


class _ErrorBody(_Wire, frozen=True):
    # Documented error bodies; 422 sends ``message`` as a list.
    status_code: int | None = None
    message: str | list[str] | None = None
    error: str | None = None
    trace_id: str | None = None


# Built once at import, reused for every reply. Lax mode reads "120" as 120.
_PAGE_DECODER = msgspec.json.Decoder(_Envelope, strict=False)
_CONVERSATIONS_DECODER = msgspec.json.Decoder(_ConversationsReply, strict=False)
_ERROR_DECODER = msgspec.json.Decoder(_ErrorBody, strict=False)


def decode_page(body: bytes) -> MessagesPage:
    """Decode a messages reply (wrapped or flat) from its bytes.

    Raises:
        msgspec.DecodeError: the body is not JSON or not of the documented shape (the
            client turns this into :class:`ghl_async.errors.DecodeError`).
    """
    env = _PAGE_DECODER.decode(body)
    inner = env.messages
    if isinstance(inner, list):
        return MessagesPage(
            messages=inner,
            last_message_id=env.last_message_id,
            next_page=env.next_page,
            trace_id=env.trace_id,
        )
    return MessagesPage(
        messages=inner.messages,
        last_message_id=inner.last_message_id,
        next_page=inner.next_page,
        trace_id=env.trace_id,
    )


def decode_conversations(body: bytes) -> list[Conversation]:
    """Decode a ``/conversations/search`` reply from its bytes."""
    return _CONVERSATIONS_DECODER.decode(body).conversations


class _StrConstants(str, enum.Enum):
    """A ``str`` enum that prints as its value (``StrEnum`` before Python 3.11)."""

    def __str__(self) -> str:
        return str(self.value)


class MessageType(_StrConstants):
    """Known ``messageType`` values, in HighLevel's order (the numeric ``type`` code).

    Members are strings, so ``message.message_type == MessageType.TYPE_SMS`` works; an
    unknown value on a message stays a plain string.
    """

    TYPE_CALL = "TYPE_CALL"
    TYPE_SMS = "TYPE_SMS"
    TYPE_EMAIL = "TYPE_EMAIL"
    TYPE_SMS_REVIEW_REQUEST = "TYPE_SMS_REVIEW_REQUEST"
    TYPE_WEBCHAT = "TYPE_WEBCHAT"
    TYPE_SMS_NO_SHOW_REQUEST = "TYPE_SMS_NO_SHOW_REQUEST"
    TYPE_CAMPAIGN_SMS = "TYPE_CAMPAIGN_SMS"
    TYPE_CAMPAIGN_CALL = "TYPE_CAMPAIGN_CALL"
    TYPE_CAMPAIGN_EMAIL = "TYPE_CAMPAIGN_EMAIL"
    TYPE_CAMPAIGN_VOICEMAIL = "TYPE_CAMPAIGN_VOICEMAIL"
    TYPE_FACEBOOK = "TYPE_FACEBOOK"
    TYPE_CAMPAIGN_FACEBOOK = "TYPE_CAMPAIGN_FACEBOOK"
    TYPE_CAMPAIGN_MANUAL_CALL = "TYPE_CAMPAIGN_MANUAL_CALL"
    TYPE_CAMPAIGN_MANUAL_SMS = "TYPE_CAMPAIGN_MANUAL_SMS"
    TYPE_GMB = "TYPE_GMB"
    TYPE_CAMPAIGN_GMB = "TYPE_CAMPAIGN_GMB"
    TYPE_REVIEW = "TYPE_REVIEW"
    TYPE_INSTAGRAM = "TYPE_INSTAGRAM"
    TYPE_WHATSAPP = "TYPE_WHATSAPP"
    TYPE_CUSTOM_SMS = "TYPE_CUSTOM_SMS"
    TYPE_CUSTOM_EMAIL = "TYPE_CUSTOM_EMAIL"
    TYPE_CUSTOM_PROVIDER_SMS = "TYPE_CUSTOM_PROVIDER_SMS"
    TYPE_CUSTOM_PROVIDER_EMAIL = "TYPE_CUSTOM_PROVIDER_EMAIL"
    TYPE_IVR_CALL = "TYPE_IVR_CALL"
    TYPE_ACTIVITY_CONTACT = "TYPE_ACTIVITY_CONTACT"
    TYPE_ACTIVITY_INVOICE = "TYPE_ACTIVITY_INVOICE"
    TYPE_ACTIVITY_PAYMENT = "TYPE_ACTIVITY_PAYMENT"
    TYPE_ACTIVITY_OPPORTUNITY = "TYPE_ACTIVITY_OPPORTUNITY"
    TYPE_LIVE_CHAT = "TYPE_LIVE_CHAT"
    TYPE_LIVE_CHAT_INFO_MESSAGE = "TYPE_LIVE_CHAT_INFO_MESSAGE"
    TYPE_ACTIVITY_APPOINTMENT = "TYPE_ACTIVITY_APPOINTMENT"
    TYPE_FACEBOOK_COMMENT = "TYPE_FACEBOOK_COMMENT"
    TYPE_INSTAGRAM_COMMENT = "TYPE_INSTAGRAM_COMMENT"
    TYPE_CUSTOM_CALL = "TYPE_CUSTOM_CALL"
    TYPE_INTERNAL_COMMENT = "TYPE_INTERNAL_COMMENT"
    TYPE_ACTIVITY_EMPLOYEE_ACTION_LOG = "TYPE_ACTIVITY_EMPLOYEE_ACTION_LOG"
    # Seen live after the page was written; no numeric code is documented for them.
    TYPE_RCS = "TYPE_RCS"
    TYPE_TIKTOK = "TYPE_TIKTOK"
    TYPE_TIKTOK_COMMENT = "TYPE_TIKTOK_COMMENT"
    TYPE_SMS_REACTION = "TYPE_SMS_REACTION"
    TYPE_ACTIVITY_WHATSAPP = "TYPE_ACTIVITY_WHATSAPP"
    TYPE_FORM_SUBMISSION = "TYPE_FORM_SUBMISSION"

    @classmethod
    def from_code(cls, code: int) -> MessageType | None:
        """Map HighLevel's numeric ``type`` (1 = TYPE_CALL, 2 = TYPE_SMS, ...) to a member.

        Returns ``None`` for a code outside the documented list. Only 1, 3, 10, 11 and 18
        are confirmed by HighLevel's docs; prefer ``message_type`` where it is sent.
        """
        if isinstance(code, bool) or not isinstance(code, int):
            return None
        if 1 <= code <= len(_CODED):
            return _CODED[code - 1]
        return None


_CODED: tuple[MessageType, ...] = tuple(MessageType)[
    : list(MessageType).index(MessageType.TYPE_ACTIVITY_EMPLOYEE_ACTION_LOG) + 1
]


class FilterType(_StrConstants):
    """Values the ``type`` query filter takes (``types=[FilterType.TYPE_SMS, ...]``)."""

    TYPE_CALL = "TYPE_CALL"
    TYPE_SMS = "TYPE_SMS"
    TYPE_EMAIL = "TYPE_EMAIL"
    TYPE_FACEBOOK = "TYPE_FACEBOOK"
    TYPE_GMB = "TYPE_GMB"
    TYPE_INSTAGRAM = "TYPE_INSTAGRAM"
    TYPE_WHATSAPP = "TYPE_WHATSAPP"
    TYPE_ACTIVITY_APPOINTMENT = "TYPE_ACTIVITY_APPOINTMENT"
    TYPE_ACTIVITY_CONTACT = "TYPE_ACTIVITY_CONTACT"
    TYPE_ACTIVITY_INVOICE = "TYPE_ACTIVITY_INVOICE"
    TYPE_ACTIVITY_PAYMENT = "TYPE_ACTIVITY_PAYMENT"
    TYPE_ACTIVITY_OPPORTUNITY = "TYPE_ACTIVITY_OPPORTUNITY"
    TYPE_LIVE_CHAT = "TYPE_LIVE_CHAT"
    TYPE_INTERNAL_COMMENTS = "TYPE_INTERNAL_COMMENTS"
    TYPE_ACTIVITY_EMPLOYEE_ACTION_LOG = "TYPE_ACTIVITY_EMPLOYEE_ACTION_LOG"
    TYPE_RCS = "TYPE_RCS"
    TYPE_TIKTOK = "TYPE_TIKTOK"
    TYPE_ACTIVITY_WHATSAPP = "TYPE_ACTIVITY_WHATSAPP"
    TYPE_FORM_SUBMISSION = "TYPE_FORM_SUBMISSION"
