from __future__ import annotations

from datetime import datetime, timezone

import msgspec
import pytest

from ghl_async import FilterType, Message, MessageType
from ghl_async.models import decode_page

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
    assert first.attachments == []
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
