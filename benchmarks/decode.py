"""Decoding alone: one 100-message page with the live quirks."""

from __future__ import annotations

import contextlib
import json
import timeit
from collections.abc import Callable

import msgspec

from ghl_async.models import decode_page
from ghl_async.testing import make_conversations

from ._report import Section


def page_bytes(odd: bool = False) -> bytes:
    """One 100-message page; with ``odd``, one message's ``callDuration`` is ``"12.5"``."""
    conversation = next(iter(make_conversations(1, seed=3, messages=100).values()))
    if odd:
        conversation[50] = {**conversation[50], "meta": {"callDuration": "12.5"}}
    return msgspec.json.encode(
        {
            "messages": {
                "lastMessageId": conversation[-1]["id"],
                "nextPage": True,
                "messages": conversation,
            },
            "traceId": "t",
        }
    )


def _pydantic_decoder() -> Callable[[bytes], object]:
    from datetime import datetime

    from pydantic import BaseModel, ConfigDict, Field

    class Model(BaseModel):
        model_config = ConfigDict(extra="ignore", populate_by_name=True)

    class Call(Model):
        duration: int | None = None
        status: str | None = None

    class Email(Model):
        message_ids: list[str] = Field(default_factory=list, alias="messageIds")

    class Meta(Model):
        call_duration: int | str | None = Field(None, alias="callDuration")
        call_status: str | None = Field(None, alias="callStatus")
        call: Call | None = None
        email: Email | None = None

    class Message(Model):
        id: str
        type: int | None = None
        message_type: str | None = Field(None, alias="messageType")
        conversation_id: str | None = Field(None, alias="conversationId")
        location_id: str | None = Field(None, alias="locationId")
        contact_id: str | None = Field(None, alias="contactId")
        date_added: datetime | None = Field(None, alias="dateAdded")
        direction: str | None = None
        status: str | None = None
        content_type: str | None = Field(None, alias="contentType")
        body: str | None = None
        attachments: list[str] = Field(default_factory=list)
        meta: Meta | None = None
        source: str | None = None
        user_id: str | None = Field(None, alias="userId")
        alt_id: str | None = Field(None, alias="altId")

    class Page(Model):
        messages: list[Message]
        last_message_id: str | None = Field(None, alias="lastMessageId")
        next_page: bool = Field(False, alias="nextPage")

    class Envelope(Model):
        messages: Page

    return lambda body: Envelope.model_validate(json.loads(body))


def run(smoke: bool) -> Section:
    body = page_bytes()
    odd_body = page_bytes(odd=True)
    decoders: dict[str, Callable[[bytes], object]] = {
        "ghl_async (msgspec typed structs)": decode_page,
        # The fallback: the page typed again message by message, one rebuilt by field.
        "ghl_async, one odd field in the page": lambda _body: decode_page(odd_body),
        "json.loads to dicts": json.loads,
    }
    try:
        import orjson  # type: ignore[import-not-found, unused-ignore]  # the bench extra

        decoders["orjson.loads to dicts"] = orjson.loads
    except ImportError:
        pass
    with contextlib.suppress(ImportError):
        decoders["json.loads + pydantic v2 model"] = _pydantic_decoder()
    number, repeat = (50, 3) if smoke else (2000, 7)
    micros = {}
    for name, decode in decoders.items():
        decode(body)

        def once(d: Callable[[bytes], object] = decode) -> object:
            return d(body)

        best = timeit.repeat(once, number=number, repeat=repeat)
        micros[name] = sorted(best)[len(best) // 2] / number * 1e6
    section = Section(
        title="Decoding one page",
        what=f"One 100-message page ({len(body):,} bytes, with the live quirks) decoded "
        f"{number} times, median of {repeat}.",
        columns=["decoder", "µs per page", "vs ghl_async"],
    )
    ours = micros["ghl_async (msgspec typed structs)"]
    for name, value in micros.items():
        section.rows.append([name, value, f"{value / ours:.2f}x"])
    section.notes.append(
        "ghl_async's result is typed, validated structs with datetimes; "
        "json.loads and orjson give untyped dicts."
    )
    section.notes.append(
        'One odd field (a callDuration of "12.5") sends the page down the per-message '
        "fallback: that field is lost to its default and kept raw, the page is not."
    )
    section.chart = (
        "decode.png",
        "µs per 100-message page (lower is better)",
        list(micros),
        list(micros.values()),
    )
    return section
