"""Seeded synthetic conversations carrying the live service's quirks."""

from __future__ import annotations

import random
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec

__all__ = [
    "StoredConversation",
    "email_ids",
    "make_conversations",
    "make_email",
    "store_conversations",
]

_ID_CHARS = string.ascii_letters + string.digits
_EPOCH = datetime(2025, 1, 1, tzinfo=timezone.utc)

# (messageType, numeric type, weight). Includes types newer than the published list.
_KINDS: tuple[tuple[str, int, int], ...] = (
    ("TYPE_SMS", 2, 40),
    ("TYPE_CALL", 1, 14),
    ("TYPE_EMAIL", 3, 14),
    ("TYPE_CAMPAIGN_VOICEMAIL", 10, 3),
    ("TYPE_FACEBOOK", 11, 5),
    ("TYPE_INSTAGRAM", 18, 4),
    ("TYPE_WHATSAPP", 19, 4),
    ("TYPE_LIVE_CHAT", 29, 3),
    ("TYPE_ACTIVITY_APPOINTMENT", 31, 3),
    ("TYPE_ACTIVITY_OPPORTUNITY", 28, 2),
    ("TYPE_RCS", 41, 3),
    ("TYPE_TIKTOK_COMMENT", 42, 2),
    ("TYPE_SMS_REACTION", 43, 2),
)
_TYPES = [kind for kind, _, _ in _KINDS]
_WEIGHTS = [weight for _, _, weight in _KINDS]
_CODES = {kind: code for kind, code, _ in _KINDS}
_WORDS = [
    "hi",
    "there",
    "thanks",
    "for",
    "reaching",
    "out",
    "can",
    "we",
    "book",
    "a",
    "call",
    "tomorrow",
    "sure",
    "what",
    "time",
    "works",
    "the",
    "invoice",
    "is",
    "attached",
    "please",
    "confirm",
    "your",
    "appointment",
    "great",
    "see",
    "you",
    "then",
    "ok",
    "👍",
    "é",
    "ñ",
    "你好",
    '"quoted"',
    "back\\slash",
]


def _new_id(rng: random.Random, length: int = 20) -> str:
    return "".join(rng.choices(_ID_CHARS, k=length))


@dataclass(slots=True)
class StoredConversation:
    """A conversation as the fake server keeps it: newest first, each message pre-encoded."""

    id: str
    contact_id: str
    messages: list[dict[str, Any]]
    encoded: list[bytes]
    ids: list[str]
    index: dict[str, int]
    kinds: list[str]
    last_message_date: int


def _message(
    rng: random.Random,
    conversation_id: str,
    contact_id: str,
    location_id: str,
    when: datetime,
) -> dict[str, Any]:
    kind = rng.choices(_TYPES, _WEIGHTS)[0]
    direction = rng.choice(("inbound", "outbound"))
    message: dict[str, Any] = {
        "id": _new_id(rng),
        "type": _CODES[kind],
        "messageType": kind,
        "locationId": location_id,
        "contactId": contact_id,
        "conversationId": conversation_id,
        "dateAdded": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
        "direction": direction,
        "contentType": "text/plain",
        "source": rng.choice(("workflow", "app", "api", "bulk_actions", "campaign", "mobile")),
    }
    if kind == "TYPE_CALL":
        message["status"] = rng.choice(("completed", "no-answer", "busy", "voicemail"))
        duration = rng.randint(0, 4000)
        form = rng.randrange(3)
        if form == 0:
            message["meta"] = {"callDuration": str(duration), "callStatus": message["status"]}
        elif form == 1:
            message["meta"] = {"callDuration": duration, "callStatus": message["status"]}
        else:
            message["meta"] = {"call": {"duration": duration, "status": message["status"]}}
    else:
        words = rng.randint(3, 30)
        message["body"] = " ".join(rng.choices(_WORDS, k=words))
        message["status"] = rng.choice(("delivered", "sent", "read", "failed", "pending"))
    if kind == "TYPE_EMAIL":
        message["meta"] = {"email": {"messageIds": [_new_id(rng), _new_id(rng)]}}
        message["contentType"] = "text/html"
    if not (kind == "TYPE_CALL" and direction == "inbound"):
        message["userId"] = _new_id(rng)
    if rng.random() < 0.3:
        message["altId"] = "msg_" + _new_id(rng, 9)
    if rng.random() < 0.1:
        message["attachments"] = [f"https://example.invalid/a/{_new_id(rng, 8)}.jpg"]
    if rng.random() < 0.2:
        # Fields the SDK has never heard of must be ignored.
        message["dateUpdated"] = message["dateAdded"]
        message["newFieldFromTheFuture"] = {"nested": [1, 2, 3]}
    if rng.random() < 0.05:
        del message["contentType"]
    return message


def make_conversations(
    count: int,
    *,
    seed: int = 0,
    messages: int | tuple[int, int] = (0, 150),
    location_id: str = "ve9EPM428h8vShlRW1KT",
) -> dict[str, list[dict[str, Any]]]:
    """``count`` seeded conversations, each a list of message dicts, newest first.

    ``messages`` is the exact count per conversation, or a ``(low, high)`` range.
    """
    rng = random.Random(seed)
    conversations: dict[str, list[dict[str, Any]]] = {}
    for _ in range(count):
        conversation_id = _new_id(rng)
        contact_id = _new_id(rng)
        total = messages if isinstance(messages, int) else rng.randint(*messages)
        when = _EPOCH + timedelta(seconds=rng.randint(0, 30_000_000))
        items = []
        for _ in range(total):
            items.append(_message(rng, conversation_id, contact_id, location_id, when))
            when -= timedelta(seconds=rng.randint(1, 90_000), milliseconds=rng.randint(0, 999))
        conversations[conversation_id] = items
    return conversations


def store_conversations(
    conversations: Mapping[str, Sequence[Mapping[str, Any]]],
) -> dict[str, StoredConversation]:
    """Pre-encode conversations for fast serving."""
    encoder = msgspec.json.Encoder()
    stored: dict[str, StoredConversation] = {}
    for position, (conversation_id, messages) in enumerate(conversations.items()):
        items = [dict(message) for message in messages]
        ids = [str(message["id"]) for message in items]
        contact_id = str(items[0].get("contactId", "")) if items else _new_id(random.Random(0))
        last = position + 1  # distinct, so the search cursor never skips a conversation
        if items and isinstance(items[0].get("dateAdded"), str):
            stamp = datetime.fromisoformat(items[0]["dateAdded"].replace("Z", "+00:00"))
            last = int(stamp.timestamp() * 1000)
        stored[conversation_id] = StoredConversation(
            id=conversation_id,
            contact_id=contact_id,
            messages=items,
            encoded=[encoder.encode(message) for message in items],
            ids=ids,
            index={message_id: i for i, message_id in enumerate(ids)},
            kinds=[str(message.get("messageType", "")) for message in items],
            last_message_date=last,
        )
    return stored


_PROVIDERS = ("Leadconnector Gmail", "mailgun", "smtp", "custom")
_NAMES = ("Ada Lovelace", "Grace Hopper", "Ana Núñez", "李雷", "O'Brien, Pat")


def email_ids(message: Mapping[str, Any]) -> list[str]:
    """The ids in ``meta.email.messageIds`` (the bodies the email route serves)."""
    meta = message.get("meta")
    email = meta.get("email") if isinstance(meta, Mapping) else None
    ids = email.get("messageIds") if isinstance(email, Mapping) else None
    return [str(i) for i in ids] if isinstance(ids, list) else []


def make_email(message: Mapping[str, Any], email_id: str) -> dict[str, Any]:
    """The ``GetEmailMessageResponseDto`` of one of ``message``'s email ids.

    Seeded by the email id, so the same id always has the same body. The ids of a message
    form one thread: the first is the thread id, each later one replies to the one before.
    """
    rng = random.Random(email_id)
    thread = email_ids(message) or [email_id]
    position = thread.index(email_id) if email_id in thread else 0
    added = str(message.get("dateAdded", ""))
    try:
        when = datetime.fromisoformat(added.replace("Z", "+00:00"))
        # Earlier mails of the thread came before the message's own date.
        when -= timedelta(hours=len(thread) - 1 - position)
        added = when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"
    except ValueError:
        pass
    sender, receiver = rng.sample(_NAMES, 2)
    words = " ".join(rng.choices(_WORDS, k=rng.randint(5, 60)))
    email: dict[str, Any] = {
        "id": email_id,
        "altId": "<" + _new_id(rng, 24) + "@mail.example.invalid>",
        "threadId": thread[0],
        "locationId": message.get("locationId", ""),
        "contactId": message.get("contactId", ""),
        "conversationId": message.get("conversationId", ""),
        "dateAdded": added,
        "subject": ("Re: " if position else "") + " ".join(rng.choices(_WORDS, k=4)),
        "body": f"<html><body><p>{words}</p></body></html>",
        "direction": message.get("direction", "outbound"),
        "status": rng.choice(("delivered", "sent", "opened", "read")),
        "contentType": "text/html",
        "attachments": [],
        "provider": rng.choice(_PROVIDERS),
        "from": f"{sender} <{sender.split()[0].lower()}@example.invalid>",
        "to": [f"{receiver.split()[0].lower()}@example.invalid"],
        "cc": [],
        "bcc": [],
        "source": message.get("source", "app"),
    }
    if position:
        email["replyToMessageId"] = thread[position - 1]
    if rng.random() < 0.2:
        email["cc"] = [f"cc{rng.randint(1, 99)}@example.invalid"]
    if rng.random() < 0.1:
        email["attachments"] = [f"https://example.invalid/e/{_new_id(rng, 8)}.pdf"]
    return email
