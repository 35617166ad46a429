from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ghl_async import Client, FilterType, Message, MessageType
from ghl_async.models import (
    ConversationsPage,
    EmailMessage,
    ExportPage,
    RepairedConversation,
    RepairedEmailMessage,
    RepairedMessage,
    decode_conversations,
    decode_conversations_page,
    decode_email,
    decode_export_page,
    decode_message,
    decode_page,
)
from ghl_async.testing import FakeHighLevel

WRAPPED = b"""{
  "messages": {
    "lastMessageId": "m2",
    "nextPage": true,
    "messages": [
      {"id": "m1", "type": 1, "messageType": "TYPE_CALL", "locationId": "L", "contactId": "C",
       "conversationId": "X", "dateAdded": "2024-03-27T18:13:49.000Z", "direction": "inbound",
       "status": "completed", "contentType": "text/plain",
       "meta": {"call": {"duration": 3309, "status": "completed"}}},
      {"id": "m2", "type": 41, "messageType": "TYPE_RCS", "locationId": "L", "contactId": "C",
       "conversationId": "X", "dateAdded": "2024-03-27T18:13:48.123Z", "direction": "outbound",
       "status": "some-new-status", "contentType": "text/plain", "body": "hi",
       "source": "mobile-app", "userId": "U", "altId": "msg_1", "brandNewField": [1, {"a": 2}]}
    ]
  },
  "traceId": "abc-123"
}"""


def test_wrapped_envelope_decodes_with_cursor_and_trace_id() -> None:
    page = decode_page(WRAPPED)
    assert [m.id for m in page.messages] == ["m1", "m2"]
    assert page.last_message_id == "m2"
    assert page.next_page is True
    assert page.trace_id == "abc-123"
    assert page.is_last is False


def test_flat_form_is_accepted_too() -> None:
    body = b'{"lastMessageId": "a", "nextPage": false, "messages": [{"id": "a", "type": 2}]}'
    page = decode_page(body)
    assert [m.id for m in page.messages] == ["a"]
    assert page.last_message_id == "a"
    assert page.next_page is False
    assert page.is_last


def test_unknown_enum_like_values_are_kept_as_strings() -> None:
    message = decode_page(WRAPPED).messages[1]
    assert message.message_type == "TYPE_RCS"
    assert message.status == "some-new-status"
    assert message.source == "mobile-app"
    assert message.message_type == MessageType.TYPE_RCS


@pytest.mark.parametrize(
    ("meta", "duration", "status"),
    [
        (b'{"callDuration": "120", "callStatus": "completed"}', 120, "completed"),
        (b'{"callDuration": 120}', 120, None),
        (b'{"call": {"duration": 3309, "status": "completed"}}', 3309, "completed"),
        (b'{"call": {"duration": "45"}}', 45, None),
        (b"{}", None, None),
    ],
)
def test_call_duration_is_an_int_from_every_live_form(
    meta: bytes, duration: int | None, status: str | None
) -> None:
    body = b'{"messages": {"messages": [{"id": "a", "meta": ' + meta + b"}]}}"
    message = decode_page(body).messages[0]
    assert message.meta is not None
    assert message.meta.call_duration == duration
    assert message.meta.call_status == status


def test_dates_are_timezone_aware_and_optional_fields_default() -> None:
    first, second = decode_page(WRAPPED).messages
    assert first.date_added == datetime(2024, 3, 27, 18, 13, 49, tzinfo=timezone.utc)
    assert first.date_added is not None and first.date_added.tzinfo is not None
    assert first.user_id is None
    assert first.alt_id is None
    assert first.attachments == ()
    assert second.alt_id == "msg_1"


def test_to_builtins_gives_a_plain_dict_with_wire_names() -> None:
    message = decode_page(WRAPPED).messages[1]
    row = msgspec.to_builtins(message)
    assert row["id"] == "m2"
    assert row["messageType"] == "TYPE_RCS"
    assert row["dateAdded"].startswith("2024-03-27T18:13:48.123")
    assert "brandNewField" not in row


def test_messages_are_immutable() -> None:
    message = Message(id="a")
    with pytest.raises(AttributeError):
        message.id = "b"  # type: ignore[misc]


@pytest.mark.parametrize("body", [b"<html>nope</html>", b'{"messages": 5}', b"", b"[1]"])
def test_bodies_of_the_wrong_shape_raise_msgspec_errors(body: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_page(body)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (1, MessageType.TYPE_CALL),
        (2, MessageType.TYPE_SMS),
        (3, MessageType.TYPE_EMAIL),
        (10, MessageType.TYPE_CAMPAIGN_VOICEMAIL),
        (11, MessageType.TYPE_FACEBOOK),
        (18, MessageType.TYPE_INSTAGRAM),
        (36, MessageType.TYPE_ACTIVITY_EMPLOYEE_ACTION_LOG),
        (37, None),
        (0, None),
        (-1, None),
        (True, None),
    ],
)
def test_message_type_from_code_follows_the_documented_order(
    code: int, expected: MessageType | None
) -> None:
    assert MessageType.from_code(code) is expected


def test_constants_are_strings_and_print_as_their_value() -> None:
    assert MessageType.TYPE_SMS == "TYPE_SMS"
    assert str(MessageType.TYPE_SMS) == "TYPE_SMS"
    assert f"{FilterType.TYPE_INTERNAL_COMMENTS}" == "TYPE_INTERNAL_COMMENTS"
    assert {"TYPE_RCS", "TYPE_TIKTOK_COMMENT", "TYPE_SMS_REACTION"} <= set(MessageType)
    assert {"TYPE_RCS", "TYPE_TIKTOK", "TYPE_FORM_SUBMISSION"} <= set(FilterType)


# -- one odd value costs that field, never the page ------------------------------------

FULL: dict[str, Any] = {
    "id": "hostile",
    "type": 1,
    "messageType": "TYPE_CALL",
    "locationId": "L",
    "contactId": "C",
    "conversationId": "X",
    "dateAdded": "2024-03-27T18:13:49.000Z",
    "direction": "inbound",
    "status": "completed",
    "contentType": "text/plain",
    "body": "hello",
    "attachments": ["https://a.example/1.png"],
    "meta": {
        "callDuration": "120",
        "callStatus": "completed",
        "call": {"duration": 120, "status": "completed"},
        "email": {"messageIds": ["e1", "e2"]},
    },
    "source": "api",
    "userId": "U",
    "altId": "A",
    "conversationProviderId": "P",
    "chatWidgetId": "W",
}


def neighbour(n: int) -> dict[str, Any]:
    return {**FULL, "id": f"n{n}", "body": f"neighbour {n}"}


def page_of(*messages: Any, wrapped: bool = True) -> bytes:
    page = {"lastMessageId": "n2", "nextPage": True, "messages": list(messages)}
    return msgspec.json.encode({"messages": page, "traceId": "t"} if wrapped else page)


def with_value(message: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``message`` with the dotted wire ``path`` set to ``value``."""
    copy: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(message))
    *parents, leaf = path.split(".")
    node = copy
    for key in parents:
        node = node[key]
    node[leaf] = value
    return copy


def nested(path: str, value: Any) -> dict[str, Any]:
    """``"meta.callDuration", v`` -> ``{"meta": {"callDuration": v}}``."""
    *parents, leaf = path.split(".")
    tree: dict[str, Any] = {leaf: value}
    for key in reversed(parents):
        tree = {key: tree}
    return tree


def without(row: dict[str, Any], path: str) -> dict[str, Any]:
    """``to_builtins`` of a message with ``path`` (snake or camel wire keys) removed."""
    *parents, leaf = path.split(".")
    node = row
    for key in parents:
        node = node[key]
    node.pop(leaf, None)
    return row


HOSTILE = [
    ("meta.callDuration", ""),
    ("meta.callDuration", "12.5"),
    ("meta.callDuration", "two minutes"),
    ("meta.callDuration", {"seconds": 12}),
    ("meta.callDuration", [12]),
    ("meta.callStatus", 3),
    ("meta.call.duration", "long"),
    ("meta.call.status", ["busy"]),
    ("meta.email.messageIds", "e1"),
    ("meta.email.messageIds", ["e1", 2]),
    ("meta.email", "e1"),
    ("meta", "not an object"),
    ("meta", [1, 2]),
    ("body", 5),
    ("body", {"text": "hi"}),
    ("body", ["hi"]),
    ("body", True),
    ("type", "SMS"),
    ("type", True),
    ("type", {"code": 1}),
    ("messageType", 7),
    ("direction", False),
    ("status", 4.5),
    ("source", {}),
    ("userId", 42),
    ("conversationId", ["X"]),
    ("attachments", "https://a.example/1.png"),
    ("attachments", [1, "https://a.example/1.png"]),
    ("attachments", {"url": "https://a.example/1.png"}),
    ("dateAdded", "yesterday"),
    ("dateAdded", "2024-13-45"),
    ("dateAdded", True),
    ("dateAdded", {"seconds": 1}),
    ("dateAdded", [2024, 3, 27]),
    ("dateAdded", 1e300),
]


@pytest.mark.parametrize(("path", "value"), HOSTILE)
@pytest.mark.parametrize("wrapped", [True, False])
def test_one_odd_value_costs_that_field_only(path: str, value: Any, wrapped: bool) -> None:
    clean = decode_page(page_of(FULL)).messages[0]
    body = page_of(neighbour(1), with_value(FULL, path, value), neighbour(2), wrapped=wrapped)
    page = decode_page(body)

    assert [m.id for m in page.messages] == ["n1", "hostile", "n2"]
    assert page.messages[0] == decode_page(page_of(neighbour(1))).messages[0]
    assert page.messages[2] == decode_page(page_of(neighbour(2))).messages[0]
    assert (page.last_message_id, page.next_page, page.repaired, page.dropped) == (
        "n2",
        True,
        1,
        0,
    )

    hostile = page.messages[1]
    assert isinstance(hostile, RepairedMessage)
    assert hostile.unparsed == nested(path, value)
    # Every other field reads back as in the clean message.
    got = without(msgspec.to_builtins(hostile), path)
    got.pop("unparsed")
    want = without(msgspec.to_builtins(clean), path)
    assert got == want


@pytest.mark.parametrize(
    ("path", "value", "default"),
    [
        ("body", 5, None),
        ("attachments", "x", ()),
        ("meta.callDuration", "12.5", 120),  # meta.call.duration still says 120
        ("meta", 1, None),
        ("dateAdded", "yesterday", None),
        ("type", True, None),
    ],
)
def test_a_lost_field_holds_its_default(path: str, value: Any, default: Any) -> None:
    message = decode_page(page_of(with_value(FULL, path, value))).messages[0]
    node: Any = message
    for key in path.split("."):
        node = getattr(
            node, {"callDuration": "call_duration", "dateAdded": "date_added"}.get(key, key)
        )
    assert node == default


UTC = timezone.utc


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-03-27T18:13:49.000Z", datetime(2024, 3, 27, 18, 13, 49, tzinfo=UTC)),
        ("2024-03-27T18:13:49.5+02:00", datetime(2024, 3, 27, 16, 13, 49, 500000, tzinfo=UTC)),
        ("2024-03-27T18:13:49", datetime(2024, 3, 27, 18, 13, 49, tzinfo=UTC)),
        ("2024-03-27 18:13:49", datetime(2024, 3, 27, 18, 13, 49, tzinfo=UTC)),
        ("2024-03-27", datetime(2024, 3, 27, tzinfo=UTC)),
        (" 2024-03-27 ", datetime(2024, 3, 27, tzinfo=UTC)),
        (1711563229, datetime(2024, 3, 27, 18, 13, 49, tzinfo=UTC)),
        (1711563229.25, datetime(2024, 3, 27, 18, 13, 49, 250000, tzinfo=UTC)),
        (1711563229000, datetime(2024, 3, 27, 18, 13, 49, tzinfo=UTC)),
        (1711563229123, datetime(2024, 3, 27, 18, 13, 49, 123000, tzinfo=UTC)),
        ("1711563229", datetime(2024, 3, 27, 18, 13, 49, tzinfo=UTC)),
        ("1711563229000", datetime(2024, 3, 27, 18, 13, 49, tzinfo=UTC)),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_dates_in_every_form_are_read_without_loss(value: Any, expected: datetime | None) -> None:
    page = decode_page(page_of(with_value(FULL, "dateAdded", value), neighbour(1)))
    message = page.messages[0]
    assert message.date_added == expected
    if expected is not None:
        assert message.date_added is not None and message.date_added.utcoffset() is not None
    assert message.unparsed == {}
    assert page.repaired == 0
    assert page.messages[1] == decode_page(page_of(neighbour(1))).messages[0]


@pytest.mark.parametrize(
    ("path", "attribute", "expected"),
    [
        ("attachments", "attachments", ()),
        ("meta", "meta", None),
        ("body", "body", None),
        ("meta.email.messageIds", "meta.email.message_ids", []),
        ("meta.email", "meta.email", None),
        ("meta.call", "meta.call", None),
    ],
)
def test_null_is_read_as_absent(path: str, attribute: str, expected: Any) -> None:
    page = decode_page(page_of(with_value(FULL, path, None)))
    node: Any = page.messages[0]
    for name in attribute.split("."):
        node = getattr(node, name)
    assert node == expected
    assert type(page.messages[0]) is Message
    assert page.repaired == 0


@pytest.mark.parametrize(
    "odd",
    [{"body": "no id"}, {"id": 5}, {"id": None}, {"id": ["a"]}, 5, "m", None, [], [{"id": "a"}]],
)
def test_a_message_without_a_string_id_is_dropped_and_counted(odd: Any) -> None:
    page = decode_page(page_of(neighbour(1), odd, neighbour(2)))
    assert [m.id for m in page.messages] == ["n1", "n2"]
    assert page.dropped == 1
    assert page.repaired == 0


@pytest.mark.parametrize(
    "messages", [[{"id": 1}, {"id": 2}], [{"_id": "a"}], [None], [{"ID": "a"}, 5, "x"]]
)
def test_a_page_where_no_message_has_an_id_is_a_decode_error(messages: list[Any]) -> None:
    # A renamed id would otherwise drop every message and end the conversation quietly.
    with pytest.raises(msgspec.DecodeError, match="string `id`"):
        decode_page(page_of(*messages))


def test_an_empty_page_is_still_an_empty_page() -> None:
    page = decode_page(page_of())
    assert (page.messages, page.dropped, page.is_last) == ([], 0, True)
    odd_envelope = decode_page(b'{"messages": [], "nextPage": "yes"}')
    assert (odd_envelope.messages, odd_envelope.next_page, odd_envelope.is_last) == (
        [],
        False,
        True,
    )


@pytest.mark.parametrize(
    ("envelope", "cursor", "more", "trace"),
    [
        ({"lastMessageId": 5, "nextPage": True, "traceId": "t"}, None, True, "t"),
        ({"lastMessageId": "a", "nextPage": "false", "traceId": 5}, "a", False, None),
        ({"lastMessageId": "a", "nextPage": "perhaps"}, "a", True, None),
        ({"lastMessageId": "a", "nextPage": None}, "a", True, None),
        ({"lastMessageId": {"id": "a"}, "nextPage": 0}, None, False, None),
    ],
)
def test_odd_envelope_values_cost_only_themselves(
    envelope: dict[str, Any], cursor: str | None, more: bool, trace: str | None
) -> None:
    body = msgspec.json.encode({**envelope, "messages": [{"id": "a"}]})
    page = decode_page(body)
    assert [m.id for m in page.messages] == ["a"]
    assert (page.last_message_id, page.next_page, page.trace_id) == (cursor, more, trace)


@pytest.mark.parametrize(
    "body",
    [
        b'{"messages": null}',
        b'{"messages": {"messages": null}}',
        b'{"messages": {"messages": {"id": "a"}}}',
        b'{"messages": "m"}',
        b"{}",
        b"null",
        b'{"messages": [{"id": "a"}',
        b"\xef\xbb\xbf",
        b"\xef\xbb\xbf<html></html>",
        b"\xef\xbb\xbf\xef\xbb\xbf{}",
    ],
)
def test_a_reply_without_a_message_list_is_still_a_decode_error(body: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_page(body)


def test_a_utf8_bom_is_tolerated() -> None:
    assert decode_page(b"\xef\xbb\xbf" + WRAPPED) == decode_page(WRAPPED)
    odd = page_of(neighbour(1), with_value(FULL, "body", 5))
    assert decode_page(b"\xef\xbb\xbf" + odd) == decode_page(odd)


def test_a_clean_message_is_a_plain_message_with_nothing_unparsed() -> None:
    page = decode_page(page_of(FULL, neighbour(1)))
    assert all(type(m) is Message for m in page.messages)
    assert page.messages[0].unparsed == {}
    assert (page.repaired, page.dropped) == (0, 0)
    with pytest.raises(TypeError):
        page.messages[0].unparsed["x"] = 1  # type: ignore[index]


def test_the_unparsed_values_are_in_to_builtins_so_an_export_keeps_them() -> None:
    message = decode_page(page_of(with_value(FULL, "meta.callDuration", "12.5"))).messages[0]
    row = msgspec.to_builtins(message)
    assert row["unparsed"] == {"meta": {"callDuration": "12.5"}}
    assert "unparsed" not in msgspec.to_builtins(decode_page(page_of(FULL)).messages[0])


def test_a_fractional_type_code_is_kept_as_sent() -> None:
    message = decode_page(page_of(with_value(FULL, "type", 1.5))).messages[0]
    assert message.type == 1.5
    assert MessageType.from_code(1.5) is None  # type: ignore[arg-type]


# -- property: arbitrary values anywhere in one message never cost the others --------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
WIRE_PATHS = sorted(
    {
        *FULL,
        *(f"meta.{key}" for key in FULL["meta"]),
        "meta.call.duration",
        "meta.call.status",
        "meta.email.messageIds",
        "unparsed",
        "brandNew",
    }
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(WIRE_PATHS),
    value=JSON,
    position=st.integers(0, 4),
    wrapped=st.booleans(),
)
def test_any_value_in_any_field_never_loses_the_other_messages(
    path: str, value: Any, position: int, wrapped: bool
) -> None:
    neighbours = [neighbour(n) for n in range(4)]
    odd = with_value(FULL, path, value)
    page = decode_page(
        page_of(*neighbours[:position], odd, *neighbours[position:], wrapped=wrapped)
    )

    clean = [decode_page(page_of(n)).messages[0] for n in neighbours]
    if path == "id" and not isinstance(value, str):
        assert page.messages == clean
        assert page.dropped == 1
        return
    assert page.dropped == 0
    assert page.messages[:position] + page.messages[position + 1 :] == clean
    message = page.messages[position]
    assert message.id == (value if path == "id" else "hostile")
    # Nothing the server sent is lost: it is either read into the field or kept raw.
    lost = message.unparsed
    for key in path.split(".")[:-1]:
        lost = lost.get(key, {})
    if path.split(".")[-1] in lost:
        assert lost[path.split(".")[-1]] == value
        assert page.repaired >= 1
    if path in STRING_FIELDS:
        # A string reads back as itself; anything else but null is kept raw.
        read = getattr(message, STRING_FIELDS[path])
        if isinstance(value, str):
            assert read == value
        elif value is None:
            assert read is None
        else:
            assert read is None
            assert message.unparsed == {path: value}
            assert page.repaired == 1


STRING_FIELDS = {
    "messageType": "message_type",
    "locationId": "location_id",
    "contactId": "contact_id",
    "conversationId": "conversation_id",
    "direction": "direction",
    "status": "status",
    "contentType": "content_type",
    "body": "body",
    "source": "source",
    "userId": "user_id",
    "altId": "alt_id",
    "conversationProviderId": "conversation_provider_id",
    "chatWidgetId": "chat_widget_id",
}


# -- through the client, over a real socket --------------------------------------------


@pytest.mark.anyio
async def test_a_conversation_with_odd_values_is_delivered_whole_and_counted() -> None:
    messages: list[dict[str, Any]] = [
        {**FULL, "id": f"m{i:03d}", "dateAdded": f"2024-03-{27 - i // 100:02d}T10:00:00Z"}
        for i in range(250)
    ]
    messages[3] = with_value(messages[3], "meta.callDuration", "12.5")
    messages[150] = with_value(messages[150], "attachments", None)
    messages[151] = with_value(messages[151], "dateAdded", 1711563229000)
    messages[152] = with_value(messages[152], "body", {"text": "hi"})
    messages[199] = with_value(messages[199], "dateAdded", "")
    async with (
        FakeHighLevel({"conv": messages}) as fake,
        Client(fake.token, base_url=fake.url) as client,
    ):
        got = [m async for m in client.iter_messages("conv")]
        assert [m.id for m in got] == [m["id"] for m in messages]
        assert got[3].unparsed == {"meta": {"callDuration": "12.5"}}
        assert got[150].attachments == ()
        assert got[151].date_added == datetime(2024, 3, 27, 18, 13, 49, tzinfo=UTC)
        assert got[152].unparsed == {"body": {"text": "hi"}}
        assert got[199].date_added is None
        assert client.stats.repaired_fields == 2
        assert client.stats.dropped_messages == 0
        assert client.stats.messages == 250


@pytest.mark.anyio
async def test_a_message_without_a_string_id_is_counted_in_the_client_stats() -> None:
    messages = [neighbour(1), {**FULL, "id": 77}, neighbour(2)]
    async with (
        FakeHighLevel({"conv": messages}) as fake,
        Client(fake.token, base_url=fake.url) as client,
    ):
        page = await client.get_messages("conv")
        assert [m.id for m in page.messages] == ["n1", "n2"]
        assert (client.stats.dropped_messages, client.stats.repaired_fields) == (1, 0)


def test_null_beside_an_odd_value_reads_as_absent_on_the_slow_path_too() -> None:
    sent = with_value(with_value(FULL, "body", 5), "dateAdded", None)
    sent = with_value(with_value(sent, "attachments", None), "meta.email", None)
    message = decode_page(page_of(sent)).messages[0]
    assert message.unparsed == {"body": 5}
    assert (message.date_added, message.attachments, message.body) == (None, (), None)
    assert message.meta is not None and message.meta.email is None


# -- the location export, single messages, emails, the search page ----------------------


def export_of(*messages: Any, wrapped: bool, cursor: Any = "c2", total: Any = 3) -> bytes:
    page = {"messages": list(messages), "nextCursor": cursor, "total": total}
    return msgspec.json.encode(
        {"messages": page, "traceId": "t"} if wrapped else {**page, "traceId": "t"}
    )


@pytest.mark.parametrize("wrapped", [True, False])
def test_an_export_page_decodes_flat_or_wrapped(wrapped: bool) -> None:
    page = decode_export_page(export_of(FULL, neighbour(1), wrapped=wrapped))
    assert isinstance(page, ExportPage)
    assert [m.id for m in page.messages] == ["hostile", "n1"]
    assert page.messages[0] == decode_page(page_of(FULL)).messages[0]
    assert (page.next_cursor, page.total, page.trace_id) == ("c2", 3, "t")
    assert (page.repaired, page.dropped, page.is_last) == (0, 0, False)


@pytest.mark.parametrize(("path", "value"), HOSTILE)
@pytest.mark.parametrize("wrapped", [True, False])
def test_one_odd_value_costs_that_field_only_in_an_export_too(
    path: str, value: Any, wrapped: bool
) -> None:
    odd = with_value(FULL, path, value)
    body = export_of(neighbour(1), odd, {"id": 7}, neighbour(2), wrapped=wrapped)
    page = decode_export_page(body)
    assert [m.id for m in page.messages] == ["n1", "hostile", "n2"]
    assert page.messages[1] == decode_page(page_of(odd)).messages[0]
    assert isinstance(page.messages[1], RepairedMessage)
    assert (page.next_cursor, page.total, page.trace_id) == ("c2", 3, "t")
    assert (page.repaired, page.dropped) == (1, 1)


@pytest.mark.parametrize(
    ("cursor", "total", "next_cursor", "read_total", "last"),
    [
        (None, 3, None, 3, True),
        ("", 3, None, 3, True),
        ("abc==", "12", "abc==", 12, False),
        ("abc==", 12.0, "abc==", 12, False),
        ("abc==", 12.5, "abc==", None, False),  # not a whole number: unknown, not an error
        ("abc==", "many", "abc==", None, False),
        ("abc==", None, "abc==", None, False),
        (123, 3, "123", 3, False),  # a number is sent back as its text
        (False, 3, None, 3, True),
    ],
)
@pytest.mark.parametrize("wrapped", [True, False])
def test_export_envelope_values(
    cursor: Any,
    total: Any,
    next_cursor: str | None,
    read_total: int | None,
    last: bool,
    wrapped: bool,
) -> None:
    page = decode_export_page(export_of(neighbour(1), wrapped=wrapped, cursor=cursor, total=total))
    assert (page.next_cursor, page.total, page.is_last) == (next_cursor, read_total, last)
    assert [m.id for m in page.messages] == ["n1"]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"nextCursor": "c", "total": 1}',
        b'{"messages": "x"}',
        b'{"messages": [{"noId": 1}]}',
        # A cursor that cannot be sent back: failing beats stopping with the rest unread.
        b'{"messages": [{"id": "a"}], "nextCursor": {"pit": 1}, "total": 2}',
        b'{"messages": [{"id": "a", "body": 5}], "nextCursor": [1], "total": 2}',
    ],
)
def test_an_export_reply_of_the_wrong_shape_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_export_page(body)


def test_an_empty_export_is_the_last_page_and_a_bom_is_skipped() -> None:
    page = decode_export_page(b'\xef\xbb\xbf{"messages": [], "nextCursor": null, "total": 0}')
    assert page.messages == [] and page.total == 0 and page.is_last


@pytest.mark.parametrize(
    "body",
    [
        msgspec.json.encode({"message": FULL, "traceId": "t"}),
        msgspec.json.encode(FULL),
        b"\xef\xbb\xbf" + msgspec.json.encode({"message": FULL}),
    ],
)
def test_a_single_message_decodes_wrapped_or_bare(body: bytes) -> None:
    assert decode_message(body) == decode_page(page_of(FULL)).messages[0]


@pytest.mark.parametrize(("path", "value"), HOSTILE[:12])
def test_a_single_message_with_an_odd_value_keeps_the_rest(path: str, value: Any) -> None:
    odd = with_value(FULL, path, value)
    for body in (msgspec.json.encode({"message": odd}), msgspec.json.encode(odd)):
        got = decode_message(body)
        assert isinstance(got, RepairedMessage)
        assert got == decode_page(page_of(odd)).messages[0]


@pytest.mark.parametrize(
    "body", [b"nope", b"[]", b'{"message": {"noId": 1}}', b'{"message": "m1"}', b"{}"]
)
def test_a_single_message_without_an_id_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_message(body)


EMAIL = {
    "id": "e1",
    "altId": "<x@mail>",
    "threadId": "e0",
    "locationId": "L",
    "contactId": "C",
    "conversationId": "X",
    "dateAdded": "2024-03-27T18:13:49.000Z",
    "subject": "Order confirm",
    "body": "<p>Hi there</p>",
    "direction": "outbound",
    "status": "delivered",
    "contentType": "text/html",
    "attachments": ["https://a.example/1.pdf"],
    "provider": "Leadconnector Gmail",
    "from": "Ann <ann@example.invalid>",
    "to": ["bob@example.invalid"],
    "cc": ["cy@example.invalid"],
    "bcc": [],
    "replyToMessageId": "e0",
    "source": "app",
    "conversationProviderId": "P",
    "someNewField": 1,
}


def test_an_email_decodes_with_from_as_from_() -> None:
    email = decode_email(msgspec.json.encode(EMAIL))
    assert isinstance(email, EmailMessage) and email.unparsed == {}
    assert email.from_ == "Ann <ann@example.invalid>"
    assert (email.to, email.cc, email.bcc) == (["bob@example.invalid"], ["cy@example.invalid"], [])
    assert (email.thread_id, email.reply_to_message_id, email.alt_id) == ("e0", "e0", "<x@mail>")
    assert email.date_added == datetime(2024, 3, 27, 18, 13, 49, tzinfo=timezone.utc)
    assert (email.subject, email.provider, email.content_type) == (
        "Order confirm",
        "Leadconnector Gmail",
        "text/html",
    )
    row = msgspec.to_builtins(email)
    assert row["from"] == EMAIL["from"] and "from_" not in row and "someNewField" not in row


@pytest.mark.parametrize(
    ("wire", "value", "attribute", "default"),
    [
        ("to", "bob@example.invalid", "to", []),
        ("cc", [1], "cc", []),
        ("from", {"name": "Ann"}, "from_", None),
        ("dateAdded", "yesterday", "date_added", None),
        ("subject", 5, "subject", None),
    ],
)
def test_one_odd_value_costs_that_email_field_only(
    wire: str, value: Any, attribute: str, default: Any
) -> None:
    email = decode_email(msgspec.json.encode({**EMAIL, wire: value}))
    assert isinstance(email, RepairedEmailMessage)
    assert email.unparsed == {wire: value}
    assert getattr(email, attribute) == default
    clean = msgspec.to_builtins(decode_email(msgspec.json.encode(EMAIL)))
    got = msgspec.to_builtins(email)
    got.pop("unparsed")
    assert {k: v for k, v in got.items() if k != wire} == {
        k: v for k, v in clean.items() if k != wire
    }


def test_an_email_date_without_an_offset_is_utc() -> None:
    email = decode_email(msgspec.json.encode({**EMAIL, "dateAdded": "2024-03-27T18:13:49"}))
    assert email.date_added == datetime(2024, 3, 27, 18, 13, 49, tzinfo=timezone.utc)


@pytest.mark.parametrize("body", [b"x", b"[]", b'{"subject": "no id"}', b'{"id": 5}'])
def test_an_email_without_an_id_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_email(body)


def test_the_search_page_keeps_its_total_and_the_old_decoder_its_list() -> None:
    body = msgspec.json.encode(
        {"conversations": [{"id": "c1", "sort": [5]}, {"id": "c2"}], "total": 40, "traceId": "t"}
    )
    page = decode_conversations_page(body)
    assert isinstance(page, ConversationsPage)
    assert [c.id for c in page.conversations] == ["c1", "c2"]
    assert (page.total, page.trace_id) == (40, "t")
    assert decode_conversations(body) == page.conversations


def test_export_envelope_values_beyond_python_cost_only_themselves() -> None:
    body = b'{"messages": [{"id": "a"}], "nextCursor": "c", "total": 1e400, "traceId": 1e999}'
    page = decode_export_page(body)
    assert ([m.id for m in page.messages], page.next_cursor) == (["a"], "c")
    assert (page.total, page.trace_id) == (None, None)
    with pytest.raises(msgspec.DecodeError):
        decode_export_page(b'{"messages": [{"id": "a"}], "nextCursor": 1e400}')


CONVERSATION = {
    "id": "c1",
    "contactId": "C",
    "locationId": "L",
    "lastMessageDate": 1711563229000,
    "lastMessageType": "TYPE_SMS",
    "unreadCount": 2,
    "sort": [1711563229000],
}


@pytest.mark.parametrize(
    ("wire", "value", "attribute", "default"),
    [
        ("lastMessageDate", "2024-03-27T18:13:49Z", "last_message_date", None),
        ("unreadCount", "many", "unread_count", None),
        ("sort", 5, "sort", []),
        ("contactId", ["C"], "contact_id", None),
    ],
)
def test_one_odd_value_costs_that_conversation_field_only(
    wire: str, value: Any, attribute: str, default: Any
) -> None:
    odd = {**CONVERSATION, "id": "odd", wire: value}
    body = msgspec.json.encode(
        {"conversations": [CONVERSATION, odd, {"noId": 1}], "total": 9, "traceId": "t"}
    )
    page = decode_conversations_page(body)
    assert [c.id for c in page.conversations] == ["c1", "odd"]
    assert (page.total, page.trace_id, page.repaired, page.dropped) == (9, "t", 1, 1)
    clean, repaired = page.conversations
    assert clean.unparsed == {} and not isinstance(clean, RepairedConversation)
    assert isinstance(repaired, RepairedConversation)
    assert repaired.unparsed == {wire: value}
    assert getattr(repaired, attribute) == default
    assert decode_conversations(body) == page.conversations


@pytest.mark.parametrize(
    "body",
    [b"x", b"[]", b'{"conversations": "x"}', b'{"conversations": [{"noId": 1}], "total": 1}'],
)
def test_a_search_reply_of_the_wrong_shape_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_conversations_page(body)


def test_a_bom_is_skipped_on_every_reply() -> None:
    bom = b"\xef\xbb\xbf"
    assert decode_email(bom + msgspec.json.encode(EMAIL)).id == "e1"
    search = bom + msgspec.json.encode({"conversations": [CONVERSATION], "total": 1})
    assert [c.id for c in decode_conversations_page(search).conversations] == ["c1"]
    odd = b'{"conversations": [{"id": "c"}], "total": 1e400, "traceId": 5}'
    page = decode_conversations_page(odd)
    assert (page.total, page.trace_id) == (None, None)
