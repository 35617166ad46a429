"""to_records: flat rows with real datetimes, from anything fan_out yields."""

from __future__ import annotations

from datetime import datetime, timezone

import msgspec
import pytest

from ghl_async import Client, Message, MessagesPage, errors, to_records
from ghl_async.models import decode_page
from ghl_async.records import COLUMNS
from ghl_async.testing import FakeHighLevel

CALL = {
    "id": "m1",
    "type": 1,
    "messageType": "TYPE_CALL",
    "locationId": "L",
    "contactId": "C",
    "conversationId": "X",
    "dateAdded": "2024-03-27T18:13:49.000Z",
    "direction": "inbound",
    "status": "completed",
    "contentType": "text/plain",
    "attachments": ["https://a.example/r.mp3"],
    "meta": {"callDuration": "120", "callStatus": "completed"},
    "source": "app",
    "userId": "U",
}
EMAIL = {
    "id": "m2",
    "type": 3,
    "messageType": "TYPE_EMAIL",
    "conversationId": "X",
    "dateAdded": "2024-03-27T18:13:48.500Z",
    "body": "hello",
    "meta": {"email": {"messageIds": ["e1", "e2"]}},
}
ODD = {"id": "m3", "body": 5, "dateAdded": 1711563229000}


def page() -> MessagesPage:
    return decode_page(msgspec.json.encode({"messages": {"messages": [CALL, EMAIL, ODD]}}))


def test_a_row_is_flat_snake_case_with_a_real_datetime() -> None:
    call, email, odd = to_records(page().messages)
    assert list(call) == list(COLUMNS)
    assert call == {
        "id": "m1",
        "conversation_id": "X",
        "location_id": "L",
        "contact_id": "C",
        "date_added": datetime(2024, 3, 27, 18, 13, 49, tzinfo=timezone.utc),
        "direction": "inbound",
        "status": "completed",
        "message_type": "TYPE_CALL",
        "type": 1,
        "body": None,
        "content_type": "text/plain",
        "attachments": ["https://a.example/r.mp3"],
        "source": "app",
        "user_id": "U",
        "alt_id": None,
        "conversation_provider_id": None,
        "chat_widget_id": None,
        "call_duration": 120,
        "call_status": "completed",
        "email_message_ids": [],
        "unparsed": None,
    }
    assert isinstance(email["date_added"], datetime)
    assert email["date_added"].utcoffset() is not None
    assert email["email_message_ids"] == ["e1", "e2"]
    assert (email["call_duration"], email["call_status"]) == (None, None)
    assert odd["date_added"] == datetime(2024, 3, 27, 18, 13, 49, tzinfo=timezone.utc)
    assert odd["body"] is None
    assert msgspec.json.decode(odd["unparsed"]) == {"body": 5}
    assert odd["conversation_id"] is None


def test_every_row_has_every_column_and_values_of_plain_types() -> None:
    for row in to_records(page().messages):
        assert list(row) == list(COLUMNS)
        for value in row.values():
            assert value is None or isinstance(value, (str, int, float, list, datetime))


def test_pairs_pages_and_bare_messages_give_the_same_rows() -> None:
    messages = page().messages
    bare = to_records(messages)
    pairs = to_records(("X", m) for m in messages)
    pages = to_records([page()])
    paired_pages = to_records([("X", page())])
    assert bare[:2] == pairs[:2] == pages[:2] == paired_pages[:2]
    assert pairs[2]["conversation_id"] == "X"  # the pair names what the message does not


def test_rows_are_copies_a_notebook_may_change() -> None:
    (message,) = page().messages[:1]
    (row,) = to_records([message])
    row["attachments"].append("x")
    assert message.attachments == ("https://a.example/r.mp3",)


def test_no_messages_no_rows() -> None:
    assert to_records([]) == []
    assert to_records(iter(())) == []
    assert to_records([MessagesPage(messages=[])]) == []


def test_an_error_item_is_refused_with_its_conversation() -> None:
    failure = errors.NotFoundError("Conversation not found", status=404)
    with pytest.raises(TypeError, match=r"'c9'.*keep the errors apart"):
        to_records([("X", Message(id="a")), ("c9", failure)])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="not dict"):
        to_records([{"id": "a"}])  # type: ignore[list-item]


@pytest.mark.anyio
async def test_fan_out_straight_into_rows() -> None:
    async with FakeHighLevel(conversations=3, messages=30, seed=2) as fake:
        async with Client(fake.token, base_url=fake.url) as client:
            pairs = [pair async for pair in client.fan_out(fake.conversation_ids)]
        rows = to_records(pairs)
        assert len(rows) == fake.total_messages
        assert {r["conversation_id"] for r in rows} == set(fake.conversation_ids)
        assert all(isinstance(r["date_added"], datetime) for r in rows)
        served = {m["id"] for c in fake.conversation_ids for m in fake.messages(c)}
        assert {r["id"] for r in rows} == served
