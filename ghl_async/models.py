"""Wire models: msgspec structs declared once and decoded straight from response bytes.

The structs follow what the live service sends, not only the published page:

* the reply is wrapped, ``{"messages": {"lastMessageId", "nextPage", "messages": [...]}}``;
  the flat form is accepted too;
* ``messageType``, ``status``, ``direction`` and ``source`` are open strings: a value this
  SDK has never seen is kept, never an error. :class:`MessageType` lists the known ones to
  compare against (``message.message_type == MessageType.TYPE_SMS``);
* call duration arrives as ``meta.callDuration`` (``"120"`` or ``120``) or as
  ``meta.call.duration``; :attr:`MessageMeta.call_duration` is an ``int`` either way;
* unknown fields are ignored;
* one odd value costs that field, never the page: a page that does not fit the types is
  decoded again message by message (see :func:`decode_page`), a field that cannot take its
  type gets its default and its raw value is kept in :attr:`Message.unparsed`.

``msgspec.to_builtins(message)`` turns a message into a dict (camelCase keys, as on the
wire); :func:`ghl_async.to_records` gives flat rows with real datetimes for pandas or
polars.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Annotated, Any, Final, TypeVar

import msgspec

__all__ = [
    "CallMeta",
    "Conversation",
    "ConversationsPage",
    "EmailMessage",
    "EmailMeta",
    "ExportPage",
    "FilterType",
    "Message",
    "MessageMeta",
    "MessageType",
    "MessagesPage",
    "RepairedConversation",
    "RepairedEmailMessage",
    "RepairedMessage",
    "decode_conversations",
    "decode_conversations_page",
    "decode_email",
    "decode_export_page",
    "decode_message",
    "decode_page",
]


class _Wire(msgspec.Struct, rename="camel", kw_only=True, frozen=True, gc=False):
    """Shared options of every wire struct."""


class CallMeta(_Wire, frozen=True):
    """``meta.call`` as live call messages carry it.

    Attributes:
        duration: the call's length in seconds.
        status: the call's status (``completed``, ``no-answer``, ...), as sent.
    """

    duration: int | None = None
    status: str | None = None


class EmailMeta(_Wire, frozen=True):
    """``meta.email``: the ids of the email messages in the thread.

    Attributes:
        message_ids: the email ids (``messageIds``) whose bodies
            :meth:`~ghl_async.Client.get_email` fetches, oldest first.
    """

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
    :meth:`MessageType.from_code` (the published schema says "number": a fractional one is
    kept as a ``float``). ``date_added`` is always timezone-aware (UTC when the server
    sent no offset).

    Attributes:
        id: the message's id (``id``), the only field every message has.
        type: HighLevel's numeric message type; :meth:`MessageType.from_code` names it.
        message_type: the message type's name (``messageType``), e.g. ``TYPE_SMS``.
        conversation_id: the conversation it belongs to (``conversationId``).
        location_id: the location (sub-account) it belongs to (``locationId``).
        contact_id: the contact on the other side (``contactId``).
        date_added: when it was created (``dateAdded``), timezone-aware.
        direction: ``inbound`` or ``outbound``, as sent.
        status: its delivery status (``delivered``, ``read``, ``failed``...), as sent.
        content_type: the MIME type of ``body`` (``contentType``), e.g. ``text/plain``.
        body: the text of the message; for an email, its preview (the bodies come from
            :meth:`~ghl_async.Client.get_email`).
        attachments: the URLs of its attachments.
        meta: call and email details (:class:`MessageMeta`), when sent.
        source: where it came from (``workflow``, ``app``, ``api``...), as sent.
        date_updated: when it last changed (``dateUpdated``), timezone-aware; a status
            change such as delivered or read moves it.
        user_id: the HighLevel user who sent it (``userId``), for outbound messages.
        alt_id: the provider's own id for it (``altId``).
        conversation_provider_id: the custom conversation provider that carried it
            (``conversationProviderId``).
        chat_widget_id: the chat widget it came through (``chatWidgetId``).
    """

    id: str
    type: int | float | None = None
    message_type: str | None = None
    conversation_id: str | None = None
    location_id: str | None = None
    contact_id: str | None = None
    # tz=True sends a date without an offset to the slow path, which reads it as UTC.
    date_added: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    direction: str | None = None
    status: str | None = None
    content_type: str | None = None
    body: str | None = None
    # A tuple, not a list: an empty one is shared and a full one leaves the garbage
    # collector's lists, so pages held in memory give it nothing to walk per message.
    attachments: tuple[str, ...] = ()
    meta: MessageMeta | None = None
    source: str | None = None
    # Last edit (status, delivered/read), as the export's ``sortBy=updatedAt`` sees it;
    # incremental sync's high-water mark. Not every endpoint sends it.
    date_updated: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    user_id: str | None = None
    alt_id: str | None = None
    conversation_provider_id: str | None = None
    chat_widget_id: str | None = None

    @property
    def unparsed(self) -> Mapping[str, Any]:
        """Raw values the server sent that could not take their field's type.

        Keyed by wire name, nested as on the wire (``{"meta": {"callDuration": "12.5"}}``);
        empty for a message that decoded cleanly. The fields themselves hold their
        defaults. See :class:`RepairedMessage`.
        """
        return _NOTHING


class RepairedMessage(Message, frozen=True):
    """A :class:`Message` that had fields which could not take their types.

    Those fields hold their defaults; the values the server sent are in :attr:`unparsed`
    (and in ``msgspec.to_builtins(message)["unparsed"]``), so nothing is lost. Only the
    slow path of :func:`decode_page` makes these: ``isinstance(m, Message)`` holds.
    """

    unparsed: dict[str, Any] = {}


_NOTHING: Final[Mapping[str, Any]] = MappingProxyType({})


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


class _ExportBody(_Wire, frozen=True):
    messages: list[Message] = []
    next_cursor: str | None = None
    total: int | None = None


class _ExportEnvelope(_Wire, frozen=True):
    # Flat as the schema says, {"messages": [...], "nextCursor", "total"}; or wrapped as
    # the messages endpoint's live reply is, {"messages": {...}}.
    messages: _ExportBody | list[Message]
    next_cursor: str | None = None
    total: int | None = None
    trace_id: str | None = None


class _MessageEnvelope(_Wire, frozen=True):
    message: Message
    trace_id: str | None = None


class MessagesPage(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One page of a conversation's messages, newest first.

    Attributes:
        messages: the messages of this page.
        last_message_id: the cursor for the next page (the id of the last message).
        next_page: the server's word that more pages follow.
        trace_id: HighLevel's ``traceId`` for this reply, when sent.
        repaired: fields of this page's messages that could not take their types (each
            holds its default; the raw value is in that message's ``unparsed``).
        dropped: messages left out because they had no string ``id``.
    """

    messages: list[Message]
    last_message_id: str | None = None
    next_page: bool = False
    trace_id: str | None = None
    repaired: int = 0
    dropped: int = 0

    @property
    def is_last(self) -> bool:
        """True when no page follows this one (``nextPage`` false, or an empty page)."""
        return not self.next_page or not self.messages


class ExportPage(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One page of a location's messages (``GET /conversations/messages/export``).

    Attributes:
        messages: the messages of this page, in the requested order.
        next_cursor: the ``cursor`` for the next page; ``None`` when no page follows
            (the server's null, or an empty string).
        total: how many messages match the whole query, when the server says.
        trace_id: HighLevel's ``traceId`` for this reply, when sent.
        repaired: fields of this page's messages that could not take their types (each
            holds its default; the raw value is in that message's ``unparsed``).
        dropped: messages left out because they had no string ``id``.
    """

    messages: list[Message]
    next_cursor: str | None = None
    total: int | None = None
    trace_id: str | None = None
    repaired: int = 0
    dropped: int = 0

    @property
    def is_last(self) -> bool:
        """True when no page follows this one (no next cursor, or an empty page)."""
        return not self.next_cursor or not self.messages


class EmailMessage(_Wire, frozen=True):
    """One email with its body (``GET /conversations/messages/email/{id}``).

    The ids to fetch come from an email message's ``meta.email.message_ids``. ``from`` is
    a Python keyword, so the sender is :attr:`from_` (``"from"`` on the wire and in
    ``msgspec.to_builtins``). ``direction``, ``status``, ``source`` and ``provider`` keep
    whatever string the server sent. ``date_added`` is always timezone-aware.

    Attributes:
        id: the email's id (one of the message's ``meta.email.message_ids``).
        alt_id: the email provider's own id (``altId``).
        thread_id: the email thread it belongs to (``threadId``).
        location_id: the location it belongs to (``locationId``).
        contact_id: the contact on the other side (``contactId``).
        conversation_id: the conversation it belongs to (``conversationId``).
        date_added: when it was created (``dateAdded``), timezone-aware.
        subject: the subject line.
        body: the email's body, usually HTML (see ``content_type``).
        direction: ``inbound`` or ``outbound``, as sent.
        status: its delivery status, as sent.
        content_type: the MIME type of ``body`` (``contentType``), e.g. ``text/html``.
        attachments: the URLs of its attachments.
        provider: the email service that carried it, as sent.
        from_: the sender (``from`` on the wire).
        to: the recipients.
        cc: the copied recipients.
        bcc: the blind-copied recipients.
        reply_to_message_id: the email this one answers (``replyToMessageId``).
        source: where it came from, as sent.
        conversation_provider_id: the custom conversation provider that carried it
            (``conversationProviderId``).
    """

    id: str
    alt_id: str | None = None
    thread_id: str | None = None
    location_id: str | None = None
    contact_id: str | None = None
    conversation_id: str | None = None
    date_added: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    subject: str | None = None
    body: str | None = None
    direction: str | None = None
    status: str | None = None
    content_type: str | None = None
    attachments: list[str] = []
    provider: str | None = None
    from_: str | None = msgspec.field(default=None, name="from")
    to: list[str] = []
    cc: list[str] = []
    bcc: list[str] = []
    reply_to_message_id: str | None = None
    source: str | None = None
    conversation_provider_id: str | None = None

    @property
    def unparsed(self) -> Mapping[str, Any]:
        """Raw values that could not take their field's type (see :class:`Message`)."""
        return _NOTHING


class RepairedEmailMessage(EmailMessage, frozen=True):
    """An :class:`EmailMessage` with fields that could not take their types.

    As :class:`RepairedMessage`: those fields hold their defaults and the values sent are
    in :attr:`unparsed`; ``isinstance(m, EmailMessage)`` holds.
    """

    unparsed: dict[str, Any] = {}


class Conversation(_Wire, frozen=True):
    """One conversation as ``GET /conversations/search`` lists it.

    Attributes:
        id: the conversation's id, as :meth:`~ghl_async.Client.iter_pages` takes it.
        contact_id: the contact it is with (``contactId``).
        location_id: the location it belongs to (``locationId``).
        last_message_date: when its last message was sent, in milliseconds since the
            epoch (``lastMessageDate``).
        last_message_type: the type of its last message (``lastMessageType``).
        last_message_body: the text of its last message (``lastMessageBody``).
        last_message_direction: ``inbound`` or ``outbound`` (``lastMessageDirection``).
        unread_count: messages not read yet (``unreadCount``).
        type: the conversation's type, as sent (``TYPE_PHONE``, ...).
        full_name: the contact's full name (``fullName``).
        contact_name: the contact's name as the conversation shows it (``contactName``).
        email: the contact's email address.
        phone: the contact's phone number.
        date_added: when it was created, in milliseconds since the epoch (``dateAdded``).
        date_updated: when it last changed, in milliseconds since the epoch
            (``dateUpdated``).
        sort: the search's sort values for it: the ``startAfterDate`` cursor of the
            next page.
    """

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

    @property
    def unparsed(self) -> Mapping[str, Any]:
        """Raw values that could not take their field's type (see :class:`Message`)."""
        return _NOTHING


class RepairedConversation(Conversation, frozen=True):
    """A :class:`Conversation` with fields that could not take their types.

    As :class:`RepairedMessage`: those fields hold their defaults and the values sent are
    in :attr:`unparsed`; ``isinstance(c, Conversation)`` holds.
    """

    unparsed: dict[str, Any] = {}


class _ConversationsReply(_Wire, frozen=True):
    conversations: list[Conversation] = []
    total: int | None = None
    trace_id: str | None = None


class ConversationsPage(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """One page of ``GET /conversations/search``.

    Attributes:
        conversations: the conversations of this page, in the requested order.
        total: how many conversations match the whole query, when the server says.
        trace_id: HighLevel's ``traceId`` for this reply, when sent.
        repaired: fields of this page's conversations that could not take their types
            (each holds its default; the raw value is in that conversation's
            ``unparsed``).
        dropped: conversations left out because they had no string ``id``.
    """

    conversations: list[Conversation]
    total: int | None = None
    trace_id: str | None = None
    repaired: int = 0
    dropped: int = 0


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
_EXPORT_DECODER = msgspec.json.Decoder(_ExportEnvelope, strict=False)
_ONE_MESSAGE_DECODER = msgspec.json.Decoder(_MessageEnvelope, strict=False)
_EMAIL_DECODER = msgspec.json.Decoder(EmailMessage, strict=False)

_BOM: Final = b"\xef\xbb\xbf"


def decode_page(body: bytes) -> MessagesPage:
    """Decode a messages reply (wrapped or flat) from its bytes.

    The whole page is typed in one pass. Only when that fails on a value (not on the
    JSON itself) is it decoded again message by message: a message that does not fit is
    rebuilt field by field, a field that cannot take its type gets its default and its raw
    value goes to :attr:`Message.unparsed`, a message without a string ``id`` is dropped.
    :attr:`MessagesPage.repaired` and :attr:`MessagesPage.dropped` count them. Dates
    are read from RFC 3339 / ISO 8601 (with or without time; UTC when no offset is sent)
    and epoch seconds or milliseconds; an empty one is ``None``. A UTF-8 BOM is skipped.

    Raises:
        msgspec.DecodeError: the body is not JSON, has no message list, or not one of
            its messages has a string ``id`` (the client turns this into
            :class:`ghl_async.errors.DecodeError`).
    """
    try:
        env = _PAGE_DECODER.decode(body)
    except msgspec.ValidationError:
        return _decode_page_by_message(body)
    except msgspec.DecodeError:
        if body[:3] == _BOM:
            return decode_page(body[3:])
        raise
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


def decode_export_page(body: bytes) -> ExportPage:
    """Decode a ``GET /conversations/messages/export`` reply (flat or wrapped) from bytes.

    As :func:`decode_page`: typed in one pass, and only when a value does not fit, again
    message by message (:attr:`ExportPage.repaired`, :attr:`ExportPage.dropped`). An
    empty ``nextCursor`` is ``None``; a numeric one is kept as its text; a ``total`` that
    is no whole number is ``None``.

    Raises:
        msgspec.DecodeError: the body is not JSON, has no message list, not one of its
            messages has a string ``id``, or ``nextCursor`` is neither a string, a
            number nor null (paging could not go on, and stopping would lose the rest).
    """
    try:
        env = _EXPORT_DECODER.decode(body)
    except msgspec.ValidationError:
        return _decode_export_by_message(body)
    except msgspec.DecodeError:
        if body[:3] == _BOM:
            return decode_export_page(body[3:])
        raise
    inner = env.messages
    if isinstance(inner, list):
        messages, cursor, total = inner, env.next_cursor, env.total
    else:
        messages, cursor, total = inner.messages, inner.next_cursor, inner.total
    return ExportPage(
        messages=messages, next_cursor=cursor or None, total=total, trace_id=env.trace_id
    )


def decode_message(body: bytes) -> Message:
    """Decode a ``GET /conversations/messages/{id}`` reply from its bytes.

    The live reply is wrapped, ``{"message": {...}}``; a bare message is accepted too.
    A field that cannot take its type gets its default and its raw value goes to
    :attr:`Message.unparsed` (the message is then a :class:`RepairedMessage`).

    Raises:
        msgspec.DecodeError: the body is not JSON or the message has no string ``id``.
    """
    try:
        return _ONE_MESSAGE_DECODER.decode(body).message
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError:
        if body[:3] == _BOM:
            return decode_message(body[3:])
        raise
    raw = _RAW_ONE_MESSAGE_DECODER.decode(body).message
    message, _ = _decode_message(raw if len(raw) else body)
    if message is None:
        raise msgspec.ValidationError("the message has no string `id`")
    return message


def decode_email(body: bytes) -> EmailMessage:
    """Decode a ``GET /conversations/messages/email/{id}`` reply from its bytes.

    The reply is the flat ``GetEmailMessageResponseDto`` (no wrapper is documented or
    seen). A field that cannot take its type gets its default and its raw value goes to
    :attr:`EmailMessage.unparsed` (a :class:`RepairedEmailMessage`).

    Raises:
        msgspec.DecodeError: the body is not JSON or the email has no string ``id``.
    """
    try:
        return _EMAIL_DECODER.decode(body)
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError:
        if body[:3] == _BOM:
            return decode_email(body[3:])
        raise
    email, _ = _decode_one(msgspec.Raw(body), EmailMessage, RepairedEmailMessage)
    if email is None:
        raise msgspec.ValidationError("the email has no string `id`")
    return email


# -- the slow path: one message at a time, then one field at a time -------------------


class _RawPageBody(_Wire, frozen=True):
    messages: list[msgspec.Raw] = []
    last_message_id: Any = None
    next_page: Any = False


class _RawEnvelope(_Wire, frozen=True):
    # Same two shapes as _Envelope; only a message list is required.
    messages: _RawPageBody | list[msgspec.Raw]
    last_message_id: Any = None
    next_page: Any = False
    trace_id: Any = None


_NO_RAW: Final = msgspec.Raw(b"")


# Raw, not Any: a value no Python type can hold (1e400) must not cost the page either.
class _RawExportBody(_Wire, frozen=True):
    messages: list[msgspec.Raw] = []
    next_cursor: msgspec.Raw = _NO_RAW
    total: msgspec.Raw = _NO_RAW


class _RawExportEnvelope(_Wire, frozen=True):
    messages: _RawExportBody | list[msgspec.Raw]
    next_cursor: msgspec.Raw = _NO_RAW
    total: msgspec.Raw = _NO_RAW
    trace_id: msgspec.Raw = _NO_RAW


class _RawConversationsReply(_Wire, frozen=True):
    conversations: list[msgspec.Raw] = []
    total: msgspec.Raw = _NO_RAW
    trace_id: msgspec.Raw = _NO_RAW


class _RawMessageEnvelope(_Wire, frozen=True):
    # ``message`` absent: the body is the bare message itself.
    message: msgspec.Raw = _NO_RAW


_RAW_PAGE_DECODER = msgspec.json.Decoder(_RawEnvelope)
_RAW_EXPORT_DECODER = msgspec.json.Decoder(_RawExportEnvelope)
_RAW_ONE_MESSAGE_DECODER = msgspec.json.Decoder(_RawMessageEnvelope)
_RAW_CONVERSATIONS_DECODER = msgspec.json.Decoder(_RawConversationsReply)
_ONE_DECODERS: Final[dict[type[msgspec.Struct], msgspec.json.Decoder[Any]]] = {
    Message: msgspec.json.Decoder(Message, strict=False),
    EmailMessage: _EMAIL_DECODER,
    Conversation: msgspec.json.Decoder(Conversation, strict=False),
}
_ANY_DECODER = msgspec.json.Decoder()

_S = TypeVar("_S", bound=msgspec.Struct)
_W = TypeVar("_W", Message, EmailMessage, Conversation)

# Struct-typed fields are repaired inside rather than lost whole.
_NESTED: Final[dict[tuple[type[msgspec.Struct], str], type[msgspec.Struct]]] = {
    (Message, "meta"): MessageMeta,
    (MessageMeta, "call"): CallMeta,
    (MessageMeta, "email"): EmailMeta,
}
_DATES: Final = frozenset(
    {(Message, "date_added"), (Message, "date_updated"), (EmailMessage, "date_added")}
)
# msgspec reads numbers up to the end of year 9999 as epoch seconds; beyond, milliseconds.
_MAX_EPOCH_SECONDS: Final = 253_402_300_799


def _decode_page_by_message(body: bytes) -> MessagesPage:
    env = _RAW_PAGE_DECODER.decode(body)
    inner = env.messages
    if isinstance(inner, list):
        raws, cursor, more = inner, env.last_message_id, env.next_page
    else:
        raws, cursor, more = inner.messages, inner.last_message_id, inner.next_page
    messages, repaired, dropped = _decode_messages(raws)
    if not isinstance(more, bool):
        # An unreadable nextPage: ask for the following page while this one had
        # messages (the repeated-cursor check and the empty page end it).
        try:
            more = msgspec.convert(more, bool, strict=False)
        except msgspec.ValidationError:
            more = bool(raws)
    return MessagesPage(
        messages=messages,
        last_message_id=cursor if isinstance(cursor, str) else None,
        next_page=more,
        trace_id=env.trace_id if isinstance(env.trace_id, str) else None,
        repaired=repaired,
        dropped=dropped,
    )


def _decode_export_by_message(body: bytes) -> ExportPage:
    env = _RAW_EXPORT_DECODER.decode(body)
    inner = env.messages
    if isinstance(inner, list):
        raws, cursor, total = inner, env.next_cursor, env.total
    else:
        raws, cursor, total = inner.messages, inner.next_cursor, inner.total
    messages, repaired, dropped = _decode_messages(raws)
    trace = _read_raw(env.trace_id)
    return ExportPage(
        messages=messages,
        next_cursor=_read_cursor(_read_raw(cursor)),
        total=_read_total(_read_raw(total)),
        trace_id=trace if isinstance(trace, str) else None,
        repaired=repaired,
        dropped=dropped,
    )


def _read_raw(raw: msgspec.Raw) -> Any:
    """A raw envelope value as Python, ``None`` when absent or beyond Python's types."""
    if not len(raw):
        return None
    try:
        return _ANY_DECODER.decode(raw)
    except msgspec.DecodeError:
        return _UNREADABLE


_UNREADABLE: Final = object()


def _read_cursor(value: Any) -> str | None:
    # An odd cursor must not end the export quietly: keep what can be sent, else fail.
    if value is None or value is False or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise msgspec.ValidationError(f"nextCursor is not a cursor: {value!r}")


def _read_total(value: Any) -> int | None:
    # A count sent as a whole float (1234.0, or past 2**53 where msgspec refuses it) is
    # still that count; anything else is unknown, never an error.
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    try:
        return msgspec.convert(value, int | None, strict=False)
    except msgspec.ValidationError:
        return None


def _decode_messages(raws: list[msgspec.Raw]) -> tuple[list[Message], int, int]:
    """Type each message alone: ``(messages, fields repaired, messages dropped)``."""
    return _decode_items(raws, Message, RepairedMessage, "message")


def _decode_items(
    raws: list[msgspec.Raw], cls: type[_W], repaired_cls: Callable[..., _W], what: str
) -> tuple[list[_W], int, int]:
    """Type each item alone: ``(items, fields repaired, items dropped)``."""
    items: list[_W] = []
    repaired = dropped = 0
    for raw in raws:
        item, lost = _decode_one(raw, cls, repaired_cls)
        if item is None:
            dropped += 1
        else:
            items.append(item)
            repaired += lost
    if raws and not items:
        # Not one item with an id: the shape changed (say, ``id`` renamed), and
        # dropping them all would end the listing quietly. Fail it loudly instead.
        raise msgspec.ValidationError(f"no {what} of the page has a string `id`")
    return items, repaired, dropped


def _decode_message(raw: msgspec.Raw | bytes) -> tuple[Message | None, int]:
    """One message typed alone; failing that, field by field. ``(message, fields lost)``."""
    return _decode_one(raw, Message, RepairedMessage)


def _decode_one(
    raw: msgspec.Raw | bytes, cls: type[_W], repaired_cls: Callable[..., _W]
) -> tuple[_W | None, int]:
    """``cls`` typed alone; failing that, field by field. ``(value, fields lost)``.

    ``None`` when the object has no string ``id``; ``repaired_cls`` (``cls`` with an
    ``unparsed`` field) when a field had to be left at its default.
    """
    try:
        return _ONE_DECODERS[cls].decode(raw), 0
    except msgspec.ValidationError:
        pass
    fields = _ANY_DECODER.decode(raw)
    if not isinstance(fields, dict) or not isinstance(fields.get("id"), str):
        return None, 0
    values, unparsed, lost = _repair(cls, fields)
    if unparsed:
        return repaired_cls(**values, unparsed=unparsed), lost
    return cls(**values), 0


def _repair(cls: type[_S], fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Convert each wire field of ``cls`` alone: ``(values, unparsed, fields lost)``."""
    values: dict[str, Any] = {}
    unparsed: dict[str, Any] = {}
    lost = 0
    for info in msgspec.structs.fields(cls):
        if info.encode_name not in fields:
            continue
        value = fields[info.encode_name]
        if value is None and info.default is not None:
            continue  # null where the type has a non-null default: as if absent
        if (cls, info.name) in _DATES:
            try:
                values[info.name] = _read_date(value)
            except ValueError:
                unparsed[info.encode_name] = value
                lost += 1
            continue
        try:
            values[info.name] = msgspec.convert(value, info.type, strict=False)
            continue
        except msgspec.ValidationError:
            pass
        nested = _NESTED.get((cls, info.name))
        if nested is not None and isinstance(value, dict):
            inner, inner_unparsed, inner_lost = _repair(nested, value)
            values[info.name] = nested(**inner)
            if inner_unparsed:
                unparsed[info.encode_name] = inner_unparsed
                lost += inner_lost
        else:
            unparsed[info.encode_name] = value
            lost += 1
    return values, unparsed, lost


def _read_date(value: Any) -> datetime | None:
    """Read a date as servers send them; always timezone-aware.

    RFC 3339 / ISO 8601 with or without time (UTC when no offset is given), epoch
    seconds or milliseconds (a number or a numeric string); ``None`` and ``""`` are
    ``None``.

    Raises:
        ValueError: anything else.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            stamp = msgspec.convert(text, datetime, strict=False)
        except msgspec.ValidationError:
            try:
                stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                value = _number(text)
            else:
                return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
        else:
            return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"not a date: {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"not a date: {value!r}")
    seconds = value if abs(value) <= _MAX_EPOCH_SECONDS else value / 1000
    try:
        return datetime.fromtimestamp(seconds, timezone.utc)
    except (OverflowError, OSError, ValueError) as exc:
        raise ValueError(f"not a date: {value!r}") from exc


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"not a date: {text!r}") from None


def decode_conversations_page(body: bytes) -> ConversationsPage:
    """Decode a ``/conversations/search`` reply from its bytes, with its ``total``.

    As :func:`decode_page`: one odd value costs that field of that conversation
    (:attr:`ConversationsPage.repaired`), a conversation without a string ``id`` is left
    out (:attr:`ConversationsPage.dropped`).

    Raises:
        msgspec.DecodeError: the body is not JSON, has no ``conversations`` list, or
            not one of them has a string ``id``.
    """
    try:
        reply = _CONVERSATIONS_DECODER.decode(body)
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError:
        if body[:3] == _BOM:
            return decode_conversations_page(body[3:])
        raise
    else:
        return ConversationsPage(
            conversations=reply.conversations, total=reply.total, trace_id=reply.trace_id
        )
    raw = _RAW_CONVERSATIONS_DECODER.decode(body)
    conversations, repaired, dropped = _decode_items(
        raw.conversations, Conversation, RepairedConversation, "conversation"
    )
    trace = _read_raw(raw.trace_id)
    return ConversationsPage(
        conversations=conversations,
        total=_read_total(_read_raw(raw.total)),
        trace_id=trace if isinstance(trace, str) else None,
        repaired=repaired,
        dropped=dropped,
    )


def decode_conversations(body: bytes) -> list[Conversation]:
    """Decode a ``/conversations/search`` reply from its bytes: the conversations only."""
    return decode_conversations_page(body).conversations


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
