"""FakeHighLevel itself, route by route, over a real socket with plain aiohttp (no Client).

The field tables below are transcribed from HighLevel's OpenAPI file for the
Conversations API (``GetMessageResponseDto``, ``ExportMessagesResponseDto``,
``GetEmailMessageResponseDto``).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from ghl_async.testing import FakeHighLevel, Faults
from ghl_async.testing._location import (
    CHANNELS,
    EMAIL_KINDS,
    ExportQuery,
    MessageIndex,
    Record,
    channel_admits,
    decode_cursor,
    encode_cursor,
    iso_millis,
    parse_instant,
)
from tests.support.helpers import ServerFactory

pytestmark = pytest.mark.anyio

EXPORT = "/conversations/messages/export"
NUMBER = (int, float)

# GetMessageResponseDto: required fields and their JSON types, then the optional ones.
MESSAGE_REQUIRED: dict[str, Any] = {
    "id": str,
    "type": NUMBER,
    "messageType": str,
    "locationId": str,
    "contactId": str,
    "conversationId": str,
    "dateAdded": str,
    "direction": str,
    "contentType": str,
}
MESSAGE_OPTIONAL: dict[str, Any] = {
    "body": str,
    "status": str,
    "attachments": list,
    "meta": dict,
    "source": str,
    "userId": str,
    "conversationProviderId": str,
    "chatWidgetId": str,
}
# GetEmailMessageResponseDto.
EMAIL_REQUIRED: dict[str, Any] = {
    "id": str,
    "threadId": str,
    "locationId": str,
    "contactId": str,
    "conversationId": str,
    "dateAdded": str,
    "body": str,
    "direction": str,
    "contentType": str,
    "from": str,
    "to": list,
}
EMAIL_OPTIONAL: dict[str, Any] = {
    "altId": str,
    "subject": str,
    "status": str,
    "attachments": list,
    "provider": str,
    "cc": list,
    "bcc": list,
    "replyToMessageId": str,
    "source": str,
    "conversationProviderId": str,
}
EMAIL_STATUSES = {
    "pending",
    "scheduled",
    "sent",
    "delivered",
    "read",
    "undelivered",
    "connected",
    "failed",
    "opened",
}


def check_shape(
    item: Mapping[str, Any],
    required: Mapping[str, Any],
    optional: Mapping[str, Any],
    *,
    may_lack: frozenset[str] = frozenset(),
) -> None:
    for name, kind in required.items():
        if name in may_lack and name not in item:
            continue
        assert isinstance(item[name], kind), (name, item)
    for name, kind in optional.items():
        if name in item:
            assert isinstance(item[name], kind), (name, item)
    if "direction" in item:
        assert item["direction"] in ("inbound", "outbound")


def check_message(message: Mapping[str, Any]) -> None:
    # The fake leaves contentType off a few messages: clients must survive it.
    check_shape(message, MESSAGE_REQUIRED, MESSAGE_OPTIONAL, may_lack=frozenset({"contentType"}))


def instant(text: str) -> int:
    """``parse_instant`` of a stamp the fake wrote: never ``None``."""
    stamp = parse_instant(text)
    assert stamp is not None, text
    return stamp


def auth(fake: FakeHighLevel) -> dict[str, str]:
    return {"Authorization": f"Bearer {fake.token}", "Version": "2021-04-15"}


async def get(
    session: aiohttp.ClientSession,
    fake: FakeHighLevel,
    path: str,
    headers: Mapping[str, str] | None = None,
    /,
    **params: str | int,
) -> tuple[int, Mapping[str, str], Any]:
    query = {name: str(value) for name, value in params.items()}
    sent = auth(fake) if headers is None else headers
    async with session.get(fake.url + path, params=query, headers=sent) as reply:
        raw = await reply.read()
        if reply.content_type != "application/json":
            return reply.status, dict(reply.headers), raw.decode()
        return reply.status, dict(reply.headers), json.loads(raw)


async def export_all(
    session: aiohttp.ClientSession, fake: FakeHighLevel, **params: str | int
) -> tuple[list[dict[str, Any]], list[int]]:
    """Every message of an export query, by following nextCursor; and each page's total."""
    messages: list[dict[str, Any]] = []
    totals: list[int] = []
    cursor: str | None = None
    while True:
        extra = {} if cursor is None else {"cursor": cursor}
        status, _, body = await get(
            session, fake, EXPORT, locationId=fake.location_id, **params, **extra
        )
        assert status == 200, body
        assert set(body) >= {"messages", "nextCursor", "total"}
        messages.extend(body["messages"])
        totals.append(body["total"])
        cursor = body["nextCursor"]
        if cursor is None:
            return messages, totals
        assert isinstance(cursor, str)
        assert len(body["messages"]) == int(params.get("limit", 100))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def raw_get(fake: FakeHighLevel, path: str, **params: str | int) -> bytes:
    """Everything the server sends for one GET on a fresh socket, up to its close.

    For a reset: aiohttp resends a GET once when the connection drops before the reply,
    which would hide the fault.
    """
    reader, writer = await asyncio.open_connection(*fake.url.removeprefix("http://").split(":"))
    target = str(URL(path).with_query({k: str(v) for k, v in params.items()}))
    lines = [f"GET {target} HTTP/1.1", f"Host: {fake.url[7:]}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in auth(fake).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    try:
        return await reader.read()
    finally:
        writer.close()


def every_message(fake: FakeHighLevel) -> list[dict[str, Any]]:
    return [m for c in fake.conversation_ids for m in fake.messages(c)]


def route_paths(fake: FakeHighLevel) -> dict[str, tuple[str, dict[str, str | int]]]:
    """A request that succeeds on each route."""
    conversation = next(c for c in fake.conversation_ids if fake.messages(c))
    message_id = fake.messages(conversation)[0]["id"]
    return {
        "search": ("/conversations/search", {"locationId": fake.location_id}),
        "messages": (f"/conversations/{conversation}/messages", {}),
        "export": (EXPORT, {"locationId": fake.location_id}),
        "message": (f"/conversations/messages/{message_id}", {}),
        "email": (f"/conversations/messages/email/{fake.email_ids[0]}", {}),
    }


ROUTES = ["search", "messages", "export", "message", "email"]


# -- the export route ---------------------------------------------------------------


async def test_export_pages_match_the_schema(
    server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    async with server(conversations=6, seed=3) as fake:
        status, headers, body = await get(session, fake, EXPORT, locationId=fake.location_id)
        assert status == 200
        assert headers["Content-Type"].startswith("application/json")
        assert isinstance(body["messages"], list)
        assert isinstance(body["total"], NUMBER)
        assert body["nextCursor"] is None or isinstance(body["nextCursor"], str)
        assert len(body["messages"]) == min(100, body["total"])  # limit defaults to 100
        for message in body["messages"]:
            check_message(message)
            assert message["locationId"] == fake.location_id


async def test_without_channel_no_email_and_with_email_only_email_each_message_once(
    server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    async with server(conversations=12, seed=5) as fake:
        rest, rest_totals = await export_all(session, fake, limit=37)
        emails, email_totals = await export_all(session, fake, limit=37, channel="Email")
        assert rest and emails
        assert all(m["messageType"] not in EMAIL_KINDS for m in rest)
        assert all(m["messageType"] in EMAIL_KINDS for m in emails)
        both = Counter(m["id"] for m in rest + emails)
        assert both == Counter(m["id"] for m in every_message(fake))  # each exactly once
        assert set(rest_totals) == {len(rest)}
        assert set(email_totals) == {len(emails)}
        served = {m["id"]: m for m in rest + emails}
        assert all(served[m["id"]] == m for m in every_message(fake))


@pytest.mark.parametrize("channel", sorted(CHANNELS))
async def test_each_channel_selects_its_own_kinds(
    server: ServerFactory, session: aiohttp.ClientSession, channel: str
) -> None:
    async with server(conversations=10, seed=8) as fake:
        got, _ = await export_all(session, fake, channel=channel, limit=500)
        want = [m for m in every_message(fake) if m["messageType"] in CHANNELS[channel]]
        assert sorted(m["id"] for m in got) == sorted(m["id"] for m in want)


@pytest.mark.parametrize(
    ("sort_by", "order"),
    [("createdAt", "desc"), ("createdAt", "asc"), ("updatedAt", "desc"), ("updatedAt", "asc")],
)
async def test_paging_follows_the_requested_order_to_the_end(
    server: ServerFactory, session: aiohttp.ClientSession, sort_by: str, order: str
) -> None:
    async with server(conversations=8, seed=9) as fake:
        got, _ = await export_all(session, fake, sortBy=sort_by, sortOrder=order, limit=10)
        field = "dateAdded" if sort_by == "createdAt" else "dateUpdated"
        stamps = [instant(m.get(field, m["dateAdded"])) for m in got]
        assert stamps == sorted(stamps, reverse=order == "desc")
        assert len(got) == len({m["id"] for m in got})


async def test_conversation_and_contact_filters(
    server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    async with server(conversations=5, messages=40, seed=2) as fake:
        conversation = fake.conversation_ids[1]
        mine = fake.messages(conversation)
        by_conversation, _ = await export_all(
            session, fake, conversationId=conversation, channel="SMS", limit=10
        )
        assert [m["id"] for m in by_conversation] == [
            m["id"] for m in mine if m["messageType"] in CHANNELS["SMS"]
        ]
        contact = mine[0]["contactId"]
        by_contact, _ = await export_all(session, fake, contactId=contact, limit=500)
        assert {m["id"] for m in by_contact} == {
            m["id"] for m in mine if m["messageType"] not in EMAIL_KINDS
        }


async def test_date_bounds_are_inclusive_and_take_iso_or_epoch_milliseconds(
    server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    async with server(conversations=6, messages=30, seed=4) as fake:
        everything, _ = await export_all(session, fake, limit=500, sortOrder="asc")
        first, last = everything[5]["dateAdded"], everything[-6]["dateAdded"]
        want = [
            m["id"] for m in everything if first <= m["dateAdded"] <= last
        ]  # same format, so strings compare as dates
        iso, _ = await export_all(
            session, fake, limit=500, sortOrder="asc", startDate=first, endDate=last
        )
        epoch, _ = await export_all(
            session,
            fake,
            limit=500,
            sortOrder="asc",
            startDate=str(parse_instant(first)),
            endDate=str(parse_instant(last)),
        )
        assert [m["id"] for m in iso] == [m["id"] for m in epoch] == want
        assert iso[0]["dateAdded"] == first
        assert iso[-1]["dateAdded"] == last


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"limit": 9}, 422, "limit must not be less than 10"),
        ({"limit": 501}, 422, "limit must not be greater than 500"),
        ({"limit": "x"}, 422, "limit must be a number conforming to the specified constraints"),
        ({"channel": "Fax"}, 422, "channel must be one of the following values: "),
        ({"sortBy": "id"}, 422, "sortBy must be one of the following values: "),
        ({"sortOrder": "up"}, 422, "sortOrder must be one of the following values: "),
        ({"startDate": "yesterday"}, 422, "startDate must be a valid ISO 8601 date string"),
        ({"cursor": "not-a-cursor"}, 400, "Invalid cursor"),
        ({"cursor": encode_cursor("updatedAt", "desc", 1, "x")}, 400, "Invalid cursor"),
        ({"locationId": "elsewhere"}, 403, "The token does not have access to this location"),
    ],
)
async def test_bad_export_queries_are_refused_like_the_real_api(
    server: ServerFactory,
    session: aiohttp.ClientSession,
    params: dict[str, str | int],
    status: int,
    message: str,
) -> None:
    async with server(conversations=2) as fake:
        query: dict[str, str | int] = {"locationId": fake.location_id, **params}
        got, headers, body = await get(session, fake, EXPORT, **query)
        assert got == status
        assert body["statusCode"] == status
        assert "X-RateLimit-Remaining" in headers
        if status == 422:
            assert body["error"] == "Unprocessable Entity"
            assert isinstance(body["message"], list)
            assert body["message"][0].startswith(message)
        else:
            assert body["message"] == message


async def test_export_without_location_is_a_422(
    server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    async with server(conversations=1) as fake:
        status, _, body = await get(session, fake, EXPORT)
        assert (status, body["message"]) == (422, ["locationId should not be empty"])


async def test_the_export_reply_can_be_wrapped_like_the_messages_reply(
    server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    async with server(conversations=4, seed=1, wrap_export=True) as fake:
        status, _, body = await get(session, fake, EXPORT, locationId=fake.location_id, limit=10)
        assert status == 200
        inner = body["messages"]
        assert set(inner) == {"messages", "nextCursor", "total"}
        assert len(inner["messages"]) == 10
        assert isinstance(inner["nextCursor"], str)


@pytest.mark.parametrize(
    ("refusal", "message"),
    [
        (401, "The token is not authorized for this scope."),
        (403, "The token is not authorized for this scope."),
        (404, "Cannot GET /conversations/messages/export"),
    ],
)
async def test_the_export_can_be_refused_while_the_other_routes_serve(
    server: ServerFactory, session: aiohttp.ClientSession, refusal: int, message: str
) -> None:
    async with server(conversations=3, seed=1, export_refusal=refusal) as fake:
        status, headers, body = await get(session, fake, EXPORT, locationId=fake.location_id)
        assert status == refusal
        assert body["statusCode"] == refusal
        assert body["message"] == message
        assert "X-RateLimit-Remaining" in headers  # admitted and counted, then refused
        for route, (path, params) in route_paths(fake).items():
            if route != "export":
                assert (await get(session, fake, path, **params))[0] == 200, route


def test_only_the_refusals_the_live_service_sends_are_accepted() -> None:
    with pytest.raises(ValueError, match="export_refusal"):
        FakeHighLevel(conversations=1, export_refusal=500)


# -- incremental sync support: new and edited messages --------------------------------


async def test_added_and_edited_messages_are_found_by_an_updated_at_export(
    server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    async with server(conversations=6, seed=11) as fake:
        since = datetime.now(timezone.utc) - timedelta(seconds=1)
        old_total = fake.total_messages
        quiet, _ = await export_all(session, fake, sortBy="updatedAt", startDate=since.isoformat())
        assert quiet == []
        target = fake.conversation_ids[2]
        edited_id = fake.messages(fake.conversation_ids[0])[-1]["id"]
        edited = fake.update_message(edited_id, status="read")
        added = fake.add_message(target, body="hello again")
        email = fake.add_message("brand-new-conversation", messageType="TYPE_EMAIL", type=3)
        assert fake.total_messages == old_total + 2
        changed, _ = await export_all(
            session, fake, sortBy="updatedAt", startDate=since.isoformat(), limit=10
        )
        assert [m["id"] for m in changed] == [added["id"], edited_id]  # newest change first
        assert changed[1]["status"] == "read"
        assert changed[1]["dateUpdated"] == edited["dateUpdated"]
        emails, _ = await export_all(session, fake, channel="Email", startDate=since.isoformat())
        assert [m["id"] for m in emails] == [email["id"]]
        assert fake.messages(target)[0] == added  # newest first in its conversation
        status, _, body = await get(session, fake, f"/conversations/{target}/messages", limit=1)
        assert body["messages"]["messages"][0]["id"] == added["id"]
        status, _, body = await get(
            session, fake, "/conversations/search", locationId=fake.location_id, limit=3
        )
        # A new message moves its conversation to the top; an edit does not.
        assert [c["id"] for c in body["conversations"]][:2] == [
            "brand-new-conversation",
            target,
        ]
        status, _, reply = await get(
            session,
            fake,
            f"/conversations/messages/email/{email['meta']['email']['messageIds'][0]}",
        )
        assert status == 200
        assert reply["conversationId"] == "brand-new-conversation"


async def test_a_message_added_with_an_older_date_takes_its_place(
    server: ServerFactory,
) -> None:
    async with server(conversations=1, messages=5, seed=1) as fake:
        conversation = fake.conversation_ids[0]
        before = fake.messages(conversation)
        when = datetime.fromisoformat(before[2]["dateAdded"].replace("Z", "+00:00"))
        added = fake.add_message(conversation, when=when - timedelta(milliseconds=1))
        assert [m["id"] for m in fake.messages(conversation)] == [
            *(m["id"] for m in before[:3]),
            added["id"],
            *(m["id"] for m in before[3:]),
        ]


# -- single message and email routes -------------------------------------------------


async def test_a_single_message_is_wrapped_and_an_unknown_one_is_404(
    server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    async with server(conversations=3, seed=6) as fake:
        for message in every_message(fake)[:20]:
            status, _, body = await get(session, fake, f"/conversations/messages/{message['id']}")
            assert status == 200
            assert body["message"] == message
            check_message(body["message"])
        status, headers, body = await get(session, fake, "/conversations/messages/nope")
        assert status == 404
        assert body == {"statusCode": 404, "message": "Message not found"}
        assert "X-RateLimit-Remaining" in headers


async def test_every_email_id_serves_an_email_body_shaped_as_the_schema(
    server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    async with server(conversations=8, seed=7) as fake:
        emails = [m for m in every_message(fake) if m["messageType"] == "TYPE_EMAIL"]
        assert emails
        assert sorted(fake.email_ids) == sorted(
            i for m in emails for i in m["meta"]["email"]["messageIds"]
        )
        for message in emails[:10]:
            thread = message["meta"]["email"]["messageIds"]
            for position, email_id in enumerate(thread):
                status, _, body = await get(
                    session, fake, f"/conversations/messages/email/{email_id}"
                )
                assert status == 200
                check_shape(body, EMAIL_REQUIRED, EMAIL_OPTIONAL)
                assert all(isinstance(a, str) for a in body["to"] + body["cc"] + body["bcc"])
                assert body["status"] in EMAIL_STATUSES
                assert body["id"] == email_id
                assert body["threadId"] == thread[0]
                assert body.get("replyToMessageId") == (thread[position - 1] if position else None)
                assert body["conversationId"] == message["conversationId"]
                assert body["contactId"] == message["contactId"]
                assert body == fake.email(email_id)
        status, _, body = await get(session, fake, "/conversations/messages/email/nope")
        assert (status, body["statusCode"]) == (404, 404)


# -- conversation search --------------------------------------------------------------


async def test_search_is_newest_first_and_its_cursor_reaches_every_conversation_once(
    server: ServerFactory, session: aiohttp.ClientSession
) -> None:
    async with server(conversations=23, seed=12) as fake:
        seen: list[dict[str, Any]] = []
        params: dict[str, str | int] = {"locationId": fake.location_id, "limit": 5}
        while True:
            status, _, body = await get(session, fake, "/conversations/search", **params)
            assert status == 200
            if not body["conversations"]:
                break
            seen.extend(body["conversations"])
            params["startAfterDate"] = body["conversations"][-1]["sort"][0]
        dates = [c["lastMessageDate"] for c in seen]
        assert dates == sorted(dates, reverse=True)
        assert sorted(c["id"] for c in seen) == sorted(fake.conversation_ids)


# -- the middleware: the same rules on every route -------------------------------------


@pytest.mark.parametrize("route", ROUTES)
async def test_every_route_checks_token_and_version_and_counts_its_budget(
    server: ServerFactory, session: aiohttp.ClientSession, route: str
) -> None:
    async with server(conversations=3, seed=1) as fake:
        path, params = route_paths(fake)[route]
        bad_token = {"Authorization": "Bearer wrong", "Version": "2021-04-15"}
        status, _, body = await get(session, fake, path, bad_token, **params)
        assert status == 401
        assert body == {
            "statusCode": 401,
            "message": "Invalid token: access token is invalid",
            "error": "Unauthorized",
        }
        no_version = {"Authorization": f"Bearer {fake.token}"}
        status, _, body = await get(session, fake, path, no_version, **params)
        assert (status, body["statusCode"]) == (400, 400)
        status, headers, _ = await get(session, fake, path, **params)
        assert status == 200
        assert headers["X-RateLimit-Max"] == "100"
        assert headers["X-RateLimit-Remaining"] == "99"
        assert headers["X-RateLimit-Interval-Milliseconds"] == "10000"
        assert headers["X-RateLimit-Limit-Daily"] == "200000"
        assert headers["X-RateLimit-Daily-Remaining"] == "199999"
        assert fake.stats.by_route == Counter({route: 1})
        assert fake.stats.requests == 3
        assert fake.stats.served == 1


@pytest.mark.parametrize("route", ROUTES)
async def test_every_route_answers_429_with_headers_past_the_burst_and_daily_budgets(
    server: ServerFactory, session: aiohttp.ClientSession, route: str
) -> None:
    async with server(conversations=3, seed=1, daily_limit=101) as fake:
        path, params = route_paths(fake)[route]
        fake.spend(100)
        status, headers, body = await get(session, fake, path, **params)
        assert status == 429
        assert body["statusCode"] == 429
        assert headers["X-RateLimit-Remaining"] == "0"
        assert 1 <= int(headers["Retry-After"]) <= 10
        assert fake.stats.throttled == 1
        async with server(conversations=3, seed=1, daily_limit=1) as daily:
            path, params = route_paths(daily)[route]
            assert (await get(session, daily, path, **params))[0] == 200
            status, headers, _ = await get(session, daily, path, **params)
            assert status == 429
            assert headers["X-RateLimit-Daily-Remaining"] == "0"
            assert headers["Retry-After"] == "3600"


@pytest.mark.parametrize("route", ROUTES)
async def test_every_route_carries_out_injected_faults(
    server: ServerFactory, session: aiohttp.ClientSession, route: str
) -> None:
    async with server(conversations=3, seed=1, faults=Faults(slow_seconds=0.05)) as fake:
        path, params = route_paths(fake)[route]
        other = next(r for r in ROUTES if r != route)
        fake.inject("503", route=other)  # aimed at another route: must not fire here
        for kind in ("server_error", "html", "503", "429"):
            fake.inject(kind, route=route)
            status, headers, _ = await get(session, fake, path, **params)
            if kind == "html":
                assert status == 200
                assert headers["Content-Type"].startswith("text/html")
            elif kind == "server_error":
                assert status in (500, 502, 503, 504)
            else:
                assert status == int(kind)
        fake.inject("reset", route=route)
        assert await raw_get(fake, path, **params) == b""  # dropped before any reply
        fake.inject("truncate", route=route)
        with pytest.raises(aiohttp.ClientPayloadError):
            await get(session, fake, path, **params)
        fake.inject("slow", route=route)
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert (await get(session, fake, path, **params))[0] == 200
        assert loop.time() - start >= 0.05
        assert fake.stats.faults == Counter(
            {
                "server_error": 1,
                "html": 1,
                "503": 1,
                "429": 1,
                "reset": 1,
                "truncate": 1,
                "slow": 1,
            }
        )
        assert fake.stats.served == 1  # only the slow reply was a real page
        assert fake.stats.by_route == Counter({route: 7})


@pytest.mark.parametrize("route", ROUTES)
async def test_every_route_counts_requests_in_flight_and_random_faults(
    server: ServerFactory, session: aiohttp.ClientSession, route: str
) -> None:
    faults = Faults(slow=1.0, slow_seconds=0.1)
    async with server(conversations=3, seed=1, faults=faults) as fake:
        path, params = route_paths(fake)[route]
        replies = await asyncio.gather(*(get(session, fake, path, **params) for _ in range(3)))
        assert [status for status, _, _ in replies] == [200, 200, 200]
        assert fake.stats.max_in_flight == 3
        assert fake.stats.in_flight == 0
        assert fake.stats.faults == Counter({"slow": 3})


def test_inject_names_only_known_routes() -> None:
    fake = FakeHighLevel(conversations=1)
    with pytest.raises(ValueError, match="unknown route"):
        fake.inject("reset", route="nowhere")


# -- the pure export core, by property ----------------------------------------------

_KINDS = ["TYPE_SMS", "TYPE_EMAIL", "TYPE_CALL", "TYPE_ACTIVITY_APPOINTMENT", "TYPE_WHATSAPP"]
_records = st.lists(
    st.tuples(
        st.sampled_from(_KINDS),
        st.integers(0, 30),  # few distinct times: ties must be ordered by id
        st.integers(0, 30),
        st.sampled_from(["c1", "c2", "c3"]),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(
    rows=_records,
    limit=st.integers(1, 25),
    sort_by=st.sampled_from(["createdAt", "updatedAt"]),
    order=st.sampled_from(["asc", "desc"]),
    channel=st.sampled_from([None, "Email", "SMS", "Call"]),
    bounds=st.tuples(st.none() | st.integers(0, 30), st.none() | st.integers(0, 30)),
)
def test_paging_the_index_yields_the_sorted_matches_exactly_once(
    rows: list[tuple[str, int, int, str]],
    limit: int,
    sort_by: str,
    order: str,
    channel: str | None,
    bounds: tuple[int | None, int | None],
) -> None:
    index = MessageIndex()
    for n, (kind, created, updated, conversation) in enumerate(rows):
        index.put(Record(f"m{n:03d}", conversation, "x", kind, created, updated, b"{}"))
    start, end = bounds
    query = ExportQuery(limit=limit, sort_by=sort_by, order=order, channel=channel)
    query = ExportQuery(**{**_fields(query), "start": start, "end": end})

    def key(record: Record) -> tuple[int, str]:
        return (record.created if sort_by == "createdAt" else record.updated, record.id)

    want = sorted(
        (
            r
            for r in index.records.values()
            if channel_admits(channel, r.kind)
            and (start is None or key(r)[0] >= start)
            and (end is None or key(r)[0] <= end)
        ),
        key=key,
        reverse=order == "desc",
    )
    got: list[Record] = []
    after: tuple[int, str] | None = None
    while True:
        page, cursor, total = index.page(ExportQuery(**{**_fields(query), "after": after}))
        assert total == len(want)
        got.extend(page)
        if cursor is None:
            break
        assert len(page) == limit
        decoded = decode_cursor(cursor)
        assert decoded is not None
        assert decoded[:2] == (sort_by, order)
        after = decoded[2:]
    assert [r.id for r in got] == [r.id for r in want]


def _fields(query: ExportQuery) -> dict[str, Any]:
    return {name: getattr(query, name) for name in ExportQuery.__dataclass_fields__}


@pytest.mark.parametrize(
    ("text", "millis"),
    [
        ("2025-03-27T18:13:49.000Z", 1743099229000),
        ("2025-03-27T18:13:49Z", 1743099229000),
        ("2025-03-27T18:13:49.250+00:00", 1743099229250),
        ("2025-03-27T20:13:49+02:00", 1743099229000),
        ("2025-03-27T18:13:49", 1743099229000),  # naive: UTC
        ("1743099229000", 1743099229000),
        ("tomorrow", None),
        ("", None),
    ],
)
def test_dates_are_read_leniently(text: str, millis: int | None) -> None:
    assert parse_instant(text) == millis
    if millis is not None:
        assert parse_instant(iso_millis(millis)) == millis


def test_no_channel_and_email_split_every_kind_in_two() -> None:
    kinds = {kind for kinds in CHANNELS.values() for kind in kinds} | {"TYPE_NEW", "TYPE_RCS"}
    for kind in kinds:
        assert channel_admits(None, kind) != channel_admits("Email", kind)
