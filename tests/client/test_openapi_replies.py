"""Every reply valid under HighLevel's published schema decodes, every field read back.

The strategies are built at test time by walking the OpenAPI schemas
(``GetMessagesByConversationResponseDto``, ``GetMessageResponseDto``, ``MessageMeta``,
``ExportMessagesResponseDto``, ``GetEmailMessageResponseDto``) kept in
``tests/data/conversations_messages.schema.json``: a field the schema gains shows up here
without anyone writing a strategy for it.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone, tzinfo
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ghl_async.models import (
    CallMeta,
    EmailMessage,
    EmailMeta,
    ExportPage,
    Message,
    MessageMeta,
    MessagesPage,
    decode_email,
    decode_export_page,
    decode_page,
)

FIXTURE = Path(__file__).parents[1] / "data" / "conversations_messages.schema.json"
# Where CI keeps the shared API files: beside the clone.
PUBLISHED = (
    Path(__file__).resolve().parents[2].parent / "shared" / "api" / "conversations.openapi.json"
)
SCHEMAS: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))["components"]["schemas"]
PAGE, MESSAGE, META = (
    "GetMessagesByConversationResponseDto",
    "GetMessageResponseDto",
    "MessageMeta",
)
EXPORT, EMAIL = "ExportMessagesResponseDto", "GetEmailMessageResponseDto"
STRUCTS: dict[str, type[msgspec.Struct]] = {
    MESSAGE: Message,
    META: MessageMeta,
    EMAIL: EmailMessage,
}
# Fields read as dates: a string the schema allows but no date reads back as unparsed.
DATES = {(MESSAGE, "dateAdded"), (EMAIL, "dateAdded")}

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=6,
)
ZONES: st.SearchStrategy[tzinfo] = st.just(timezone.utc) | st.timezones()
LOW, HIGH = datetime(1971, 1, 1), datetime(9998, 12, 31)
ISO_DATES = (st.datetimes(LOW, HIGH) | st.datetimes(LOW, HIGH, timezones=ZONES)).map(
    lambda d: d.isoformat().replace("+00:00", "Z")
)
DATE_LIKE = re.compile(r"^\d{4}-\d{2}-\d{2}T")


def resolve(schema: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """``(name, schema)`` behind a ``$ref``, or ``(None, schema)``."""
    ref = schema.get("$ref")
    if ref is None:
        return None, schema
    name = ref.rsplit("/", 1)[-1]
    return name, SCHEMAS[name]


def strategy(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid under ``schema``: string, number, integer, boolean, array, object,
    ``$ref`` and ``enum``."""
    _, schema = resolve(schema)
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "string":
        example = schema.get("example")
        choices = [st.text()]
        if isinstance(example, str) and DATE_LIKE.match(example):
            choices += [ISO_DATES, st.just(example)]
        if isinstance(example, (int, float)) and not isinstance(example, bool):
            # A string whose example is a number ("callDuration": 120): numbers as text too.
            choices += [st.integers().map(str), st.floats(allow_nan=False).map(str)]
        return st.one_of(choices)
    if kind == "number":
        return st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    if kind == "integer":
        return st.integers()
    if kind == "boolean":
        return st.booleans()
    if kind == "array":
        return st.lists(strategy(schema.get("items", {})), max_size=4)
    if kind == "object":
        properties = schema.get("properties")
        if properties is None:
            # A free-form object; mix in the shape its description names (messageIds).
            free = st.dictionaries(st.text(), JSON, max_size=3)
            return free | st.builds(
                lambda ids, extra: {**extra, "messageIds": ids},
                st.lists(st.text(), max_size=3),
                free,
            )
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {k: strategy(v) for k, v in properties.items() if k in required},
            optional={k: strategy(v) for k, v in properties.items() if k not in required},
        )
    return JSON


def expected_date(sent: str) -> datetime | None:
    """What a schema-valid ``dateAdded`` string reads back as, or None if it is no date."""
    text = sent.strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        try:
            stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
    if not math.isfinite(number):
        return None
    seconds = number if abs(number) <= 253_402_300_799 else number / 1000
    try:
        return datetime.fromtimestamp(seconds, timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None


def assert_reads_back(
    name: str, sent: dict[str, Any], got: msgspec.Struct, unparsed: dict[str, Any]
) -> None:
    """Every property ``name``'s schema names, as sent, reads back from ``got``."""
    fields = {f.encode_name: f.name for f in msgspec.structs.fields(type(got))}
    for wire, schema in SCHEMAS[name]["properties"].items():
        assert wire in fields, f"{type(got).__name__} has no field for {name}.{wire}"
        if wire not in sent:
            continue
        value, read = sent[wire], getattr(got, fields[wire])
        ref, _ = resolve(schema)
        if ref is not None:
            assert isinstance(read, STRUCTS[ref])
            assert_reads_back(ref, value, read, unparsed.get(wire, {}))
        elif wire in unparsed:
            # Only a string the schema allows but the field's type cannot hold is kept raw.
            assert (name, wire) in DATES | {(META, "callDuration")}
            assert unparsed[wire] == value
            assert read is None
        elif (name, wire) in DATES:
            assert read == expected_date(value)
        elif (name, wire) == (META, "callDuration"):
            if value.lower() == "null":
                assert read is None  # lax mode reads the text "null" as null
            else:
                assert isinstance(read, int)
                try:
                    assert int(value) == read
                except ValueError:  # "1e3", "12.0": exact numbers in other spellings
                    assert float(value) == read
        elif (name, wire) == (META, "email"):
            assert isinstance(read, EmailMeta)
            ids = value.get("messageIds", [])
            if isinstance(ids, list) and all(isinstance(i, str) for i in ids):
                assert read.message_ids == ids
            else:
                assert unparsed[wire] == {"messageIds": ids}
        elif isinstance(value, list) and isinstance(read, tuple):
            # An array read into a tuple field (Message.attachments: nothing for the GC).
            assert list(read) == value
        else:
            assert read == value
            assert type(read) is type(value) or isinstance(value, (int, float))


def assert_page_reads_back(sent: dict[str, Any], page: MessagesPage) -> None:
    assert page.last_message_id == sent["lastMessageId"]
    assert page.next_page == sent["nextPage"]
    assert page.dropped == 0
    assert len(page.messages) == len(sent["messages"])
    for wire_message, message in zip(sent["messages"], page.messages, strict=True):
        assert_reads_back(MESSAGE, wire_message, message, dict(message.unparsed))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reply=strategy(SCHEMAS[PAGE]), wrapped=st.booleans(), trace=st.none() | st.text())
def test_every_reply_valid_under_the_schema_decodes_and_reads_back(
    reply: dict[str, Any], wrapped: bool, trace: str | None
) -> None:
    body: dict[str, Any] = {"messages": reply} if wrapped else dict(reply)
    if trace is not None:
        body["traceId"] = trace
    page = decode_page(msgspec.json.encode(body))
    assert_page_reads_back(reply, page)
    assert page.trace_id == trace


@settings(max_examples=100, deadline=None)
@given(message=strategy(SCHEMAS[MESSAGE]))
def test_a_schema_valid_message_repairs_only_what_its_type_cannot_hold(
    message: dict[str, Any],
) -> None:
    page = decode_page(msgspec.json.encode({"messages": [message]}))
    (got,) = page.messages
    assert page.repaired == _leaves(dict(got.unparsed))


def _leaves(tree: dict[str, Any]) -> int:
    # Only struct-typed fields nest in unparsed; a raw dict value elsewhere is one field.
    count = 0
    for key, value in tree.items():
        if key in {"meta", "call", "email"} and isinstance(value, dict):
            count += _leaves(value)
        else:
            count += 1
    return count


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reply=strategy(SCHEMAS[EXPORT]), wrapped=st.booleans(), trace=st.none() | st.text())
def test_every_export_reply_valid_under_the_schema_decodes_and_reads_back(
    reply: dict[str, Any], wrapped: bool, trace: str | None
) -> None:
    body: dict[str, Any] = {"messages": reply} if wrapped else dict(reply)
    if trace is not None:
        body["traceId"] = trace
    page = decode_export_page(msgspec.json.encode(body))
    assert page.next_cursor == (reply.get("nextCursor") or None)
    total = reply["total"]
    if isinstance(total, float) and not total.is_integer():
        assert page.total is None  # a count with a fraction is no count: unknown
    else:
        assert page.total == total
    assert page.trace_id == trace
    assert page.dropped == 0
    assert len(page.messages) == len(reply["messages"])
    for wire_message, message in zip(reply["messages"], page.messages, strict=True):
        assert_reads_back(MESSAGE, wire_message, message, dict(message.unparsed))
    assert page.is_last == (not page.next_cursor or not page.messages)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reply=strategy(SCHEMAS[EMAIL]))
def test_every_email_valid_under_the_schema_decodes_and_reads_back(reply: dict[str, Any]) -> None:
    email = decode_email(msgspec.json.encode(reply))
    assert_reads_back(EMAIL, reply, email, dict(email.unparsed))
    assert set(email.unparsed) <= {"dateAdded"}


def test_the_message_structs_name_every_field_of_the_schema() -> None:
    for name, struct in STRUCTS.items():
        wire = {f.encode_name for f in msgspec.structs.fields(struct)}
        assert set(SCHEMAS[name]["properties"]) <= wire, name
    page_fields = {"lastMessageId", "nextPage", "messages"}
    assert set(SCHEMAS[PAGE]["properties"]) == page_fields
    assert {f.encode_name for f in msgspec.structs.fields(CallMeta)} == {"duration", "status"}
    export_fields = {f.name for f in msgspec.structs.fields(ExportPage)}
    camel = {
        re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), w)
        for w in SCHEMAS[EXPORT]["properties"]
    }
    assert camel <= export_fields


def test_the_schema_example_reply_decodes_without_repair() -> None:
    message = {
        wire: schema.get("example", schema.get("enum", [None])[0])
        for wire, schema in SCHEMAS[MESSAGE]["properties"].items()
        if "example" in schema or "enum" in schema
    }
    message["meta"] = {"callDuration": "120", "callStatus": "completed"}
    page = decode_page(msgspec.json.encode({"messages": {"messages": [message]}}))
    (got,) = page.messages
    assert got.unparsed == {}
    assert page.repaired == 0
    assert got.date_added == datetime(2024, 3, 27, 18, 13, 49, tzinfo=timezone.utc)


def test_the_fixture_matches_the_published_schema() -> None:
    if not PUBLISHED.exists():
        pytest.skip(f"the published schema is not beside this clone ({PUBLISHED.name} absent)")
    published = json.loads(PUBLISHED.read_text(encoding="utf-8"))["components"]["schemas"]
    for name, schema in SCHEMAS.items():
        assert published[name] == schema, f"{name} changed upstream: refresh tests/data/"
