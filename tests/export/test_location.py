"""A whole location's messages, ``since``, and email bodies, against FakeHighLevel."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ghl_async import Client, RetryPolicy, errors
from ghl_async._http.export_route import (
    LocationPage,
    admitted,
    is_email,
    pass_admits,
    plan_passes,
    resume_token,
)
from ghl_async.client import MessageWithEmails
from ghl_async.models import Message
from tests.support.helpers import ServerFactory

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(max_attempts=3, backoff_base=0.001, backoff_cap=0.01)
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)


def now_ms() -> datetime:
    """Now, cut to the millisecond below: the fake stamps what is added after it at or
    after this (a finer ``since`` could be a fraction past a message added next)."""
    now = datetime.now(timezone.utc)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def all_ids(fake: Any) -> set[str]:
    return {m["id"] for c in fake.conversation_ids for m in fake.messages(c)}


def email_message_ids(fake: Any) -> set[str]:
    return {
        m["id"]
        for c in fake.conversation_ids
        for m in fake.messages(c)
        if m.get("messageType") == "TYPE_EMAIL"
    }


# -- pure decisions -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "email"),
    [
        ({"messageType": "TYPE_EMAIL"}, True),
        ({"messageType": "TYPE_CUSTOM_EMAIL"}, True),
        ({"messageType": "TYPE_SMS", "type": 3}, False),
        ({"type": 3}, True),
        ({"type": 2}, False),
        ({}, None),
    ],
)
def test_is_email_and_which_pass_admits(fields: dict[str, Any], email: bool | None) -> None:
    message = msgspec.convert({"id": "m1", **fields}, Message)
    assert is_email(message) is email
    assert pass_admits(None, message) is (email is not True)
    assert pass_admits("Email", message) is (email is not False)


@given(
    st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "messageType": st.sampled_from(
                    ["TYPE_EMAIL", "TYPE_CAMPAIGN_EMAIL", "TYPE_SMS", "TYPE_CALL", "", "x"]
                ),
                "type": st.sampled_from([3, 3.0, 1, 2, 2.5, 0]),
            },
        ),
        max_size=12,
    ),
    st.sampled_from([None, "Email"]),
)
def test_a_page_is_admitted_message_by_message(
    fields: list[dict[str, Any]], channel: str | None
) -> None:
    # admitted() is pass_admits written out for a page: the same messages, in order.
    messages = [msgspec.convert({"id": f"m{i}", **f}, Message) for i, f in enumerate(fields)]
    assert admitted(channel, messages) == [m for m in messages if pass_admits(channel, m)]


def test_plan_passes_and_resume_tokens() -> None:
    assert plan_passes(None, None) == ([None, "Email"], None)
    assert plan_passes("SMS", None) == (["SMS"], None)
    assert plan_passes("SMS", "abc=") == (["SMS"], "abc=")
    assert plan_passes(None, "rest:abc") == ([None, "Email"], "abc")
    assert plan_passes(None, "email:") == (["Email"], None)
    assert plan_passes(None, "email:xyz") == (["Email"], "xyz")
    for bad in ("abc", "other:abc", "rest"):
        with pytest.raises(ValueError, match="resume token"):
            plan_passes(None, bad)
    both: list[str | None] = [None, "Email"]
    assert resume_token(both, 0, "c1", True) == "rest:c1"
    assert resume_token(both, 0, None, True) == "email:"
    assert resume_token(both, 1, "c2", True) == "email:c2"
    assert resume_token(both, 1, None, True) is None
    assert resume_token(["Email"], 0, None, True) is None
    assert resume_token(["SMS"], 0, "c3", False) == "c3"
    assert resume_token(["SMS"], 0, None, False) is None


# -- the export over a real socket ---------------------------------------------------


@pytest.mark.parametrize("wrap", [False, True])
async def test_both_passes_deliver_every_message_once(server: ServerFactory, wrap: bool) -> None:
    async with server(conversations=12, messages=(5, 60), seed=3, wrap_export=wrap) as fake:
        async with Client(fake.token, base_url=fake.url) as client:
            pages = [p async for p in client.iter_location_pages(fake.location_id, page_size=50)]
        ids = [m.id for p in pages for m in p.messages]
        assert len(ids) == len(set(ids))
        assert set(ids) == all_ids(fake)
        emails = email_message_ids(fake)
        assert emails  # the data has emails: the second pass matters
        channels = [p.channel for p in pages]
        first_email = channels.index("Email")
        assert set(channels[:first_email]) == {None}
        assert set(channels[first_email:]) == {"Email"}
        assert {m.id for p in pages[first_email:] for m in p.messages} == emails
        assert pages[-1].resume is None
        assert pages[first_email - 1].resume == "email:"
        assert pages[0].total == fake.total_messages - len(emails)
        assert fake.stats.by_route["export"] == len(pages)


async def test_resume_from_any_page_finishes_exactly_once(server: ServerFactory) -> None:
    async with server(conversations=8, messages=(10, 40), seed=5) as fake:
        async with Client(fake.token, base_url=fake.url) as client:
            pages = [p async for p in client.iter_location_pages(fake.location_id, page_size=20)]
            everything = [m.id for p in pages for m in p.messages]
            for stop in range(len(pages) - 1):
                token = pages[stop].resume
                assert token is not None
                before = [m.id for p in pages[: stop + 1] for m in p.messages]
                after = [
                    m.id
                    async for m in client.iter_location_messages(
                        fake.location_id, page_size=20, cursor=token
                    )
                ]
                assert before + after == everything


async def test_channel_filter_is_one_pass_resumable_by_the_servers_cursor(
    server: ServerFactory,
) -> None:
    async with server(conversations=6, messages=(20, 40), seed=2) as fake:
        async with Client(fake.token, base_url=fake.url) as client:
            pages = [
                p
                async for p in client.iter_location_pages(
                    fake.location_id, channel="sms", page_size=10, order="asc"
                )
            ]
            assert all(p.channel == "SMS" for p in pages)
            assert all("SMS" in (m.message_type or "") for p in pages for m in p.messages)
            assert pages[0].resume == pages[0].next_cursor is not None
            rest = [
                m.id
                async for m in client.iter_location_messages(
                    fake.location_id,
                    channel="SMS",
                    page_size=10,
                    order="asc",
                    cursor=pages[0].resume,
                )
            ]
            assert rest == [m.id for p in pages[1:] for m in p.messages]


async def test_contact_and_conversation_filters(server: ServerFactory) -> None:
    async with server(conversations=5, messages=(10, 30), seed=4) as fake:
        conversation = fake.conversation_ids[2]
        contact = fake.messages(conversation)[0]["contactId"]
        async with Client(fake.token, base_url=fake.url) as client:
            by_conversation = [
                m.id
                async for m in client.iter_location_messages(
                    fake.location_id, conversation_id=conversation
                )
            ]
            by_contact = [
                m.id
                async for m in client.iter_location_messages(fake.location_id, contact_id=contact)
            ]
        assert set(by_conversation) == {m["id"] for m in fake.messages(conversation)}
        assert set(by_contact) == set(by_conversation)


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_a_refused_export_is_a_clear_error(server: ServerFactory, status: int) -> None:
    async with server(conversations=2, export_refusal=status) as fake:
        async with Client(fake.token, base_url=fake.url, retry=FAST) as client:
            with pytest.raises(errors.LocationExportUnavailable) as caught:
                async for _ in client.iter_location_messages(fake.location_id):
                    pass
    error = caught.value
    assert error.status == status
    assert isinstance(error, errors.GHLError)
    assert "location export" in str(error)
    assert ("plan" if status == 404 else "scope") in str(error)
    assert fake.token not in str(error)


async def test_bad_arguments_fail_before_any_request(server: ServerFactory) -> None:
    async with server(conversations=1) as fake:
        async with Client(fake.token, base_url=fake.url) as client:
            for kwargs in (
                {"channel": "Fax"},
                {"page_size": 5},
                {"sort_by": "score"},
                {"since": datetime(2025, 1, 1)},
                {"cursor": "not-a-token"},
            ):
                with pytest.raises((ValueError, TypeError)):
                    client.iter_location_pages(fake.location_id, **kwargs)
        assert fake.stats.requests == 0


# -- since ---------------------------------------------------------------------------


def dated(n: int) -> str:
    return (T0 + timedelta(minutes=n)).isoformat().replace("+00:00", "Z")


async def test_since_boundary_on_iter_messages_and_fan_out(server: ServerFactory) -> None:
    # Newest first: +2 (newer), +1 exactly at since (kept), 0 (older: stops the paging).
    messages = [
        {"id": f"msg{n:017d}", "dateAdded": dated(n), "messageType": "TYPE_SMS"}
        for n in (2, 1, 0, -1, -2)
    ]
    since = T0 + timedelta(minutes=1)
    async with server(conversations={"conv0000000000000001": messages}) as fake:
        async with Client(fake.token, base_url=fake.url) as client:
            got = [m.id async for m in client.iter_messages("conv0000000000000001", since=since)]
            assert got == ["msg00000000000000002", "msg00000000000000001"]
            pages = [
                p
                async for p in client.iter_pages("conv0000000000000001", page_size=2, since=since)
            ]
            # The first page met no older message: the next one does, and ends there.
            assert [len(p.messages) for p in pages] == [2, 0]
            assert pages[-1].is_last and fake.stats.by_conversation["conv0000000000000001"] == 3
            pages = [
                p
                async for p in client.iter_pages("conv0000000000000001", page_size=1, since=since)
            ]
            assert [len(p.messages) for p in pages] == [1, 1, 0]
            assert pages[-1].is_last
            fanned = [m.id async for _, m in client.fan_out(["conv0000000000000001"], since=since)]
            assert fanned == got


async def test_a_conversation_with_nothing_new_costs_one_request(server: ServerFactory) -> None:
    async with server(conversations=10, messages=(150, 250), seed=9) as fake:
        since = now_ms()
        async with Client(fake.token, base_url=fake.url) as client:
            got = [m async for _, m in client.fan_out(fake.conversation_ids, since=since)]
            assert got == []
            assert fake.stats.by_route["messages"] == 10
            pages = [
                p async for _, p in client.fan_out_pages(fake.conversation_ids[:3], since=since)
            ]
            assert [p.is_last for p in pages] == [True] * 3
            fake.add_message(fake.conversation_ids[4])
            got = [m async for _, m in client.fan_out(fake.conversation_ids, since=since)]
            assert len(got) == 1
            assert fake.stats.by_route["messages"] == 23


async def test_iter_conversations_since_stops_at_the_first_untouched(
    server: ServerFactory,
) -> None:
    async with server(conversations=60, messages=(1, 5), seed=6) as fake:
        since = now_ms()
        touched = fake.conversation_ids[10:13]
        for conversation in touched:
            fake.add_message(conversation)
        async with Client(fake.token, base_url=fake.url) as client:
            found = [
                c.id
                async for c in client.iter_conversations(
                    fake.location_id, since=since, page_size=2
                )
            ]
            assert sorted(found) == sorted(touched)
            assert fake.stats.by_route["search"] == 2  # 2 + 1 newest, then the first older
            with pytest.raises(ValueError, match="desc"):
                client.iter_conversations(fake.location_id, since=since, sort="asc")


async def test_export_since_and_updated_at_find_new_and_edited(server: ServerFactory) -> None:
    async with server(conversations=6, messages=(5, 20), seed=8) as fake:
        since = now_ms()
        old = fake.messages(fake.conversation_ids[0])[-1]["id"]
        added = fake.add_message(fake.conversation_ids[1])["id"]
        email = fake.add_message(fake.conversation_ids[2], messageType="TYPE_EMAIL", type=3)["id"]
        fake.update_message(old, status="read")
        async with Client(fake.token, base_url=fake.url) as client:
            created = [
                m.id async for m in client.iter_location_messages(fake.location_id, since=since)
            ]
            assert sorted(created) == sorted([added, email])
            changed = [
                m
                async for m in client.iter_location_messages(
                    fake.location_id, since=since, sort_by="updatedAt"
                )
            ]
            assert sorted(m.id for m in changed) == sorted([added, email, old])
            edited = next(m for m in changed if m.id == old)
            assert edited.status == "read"
            assert edited.date_updated is not None and edited.date_updated >= since
            assert fake.stats.by_route["export"] == 4  # two passes, one page each


# -- email bodies --------------------------------------------------------------------


async def test_email_bodies_in_order_on_fan_out_and_export(server: ServerFactory) -> None:
    async with server(conversations=6, messages=(10, 40), seed=11) as fake:
        async with Client(fake.token, base_url=fake.url) as client:
            plain = [m async for _, m in client.fan_out(fake.conversation_ids)]
            rich = [m async for _, m in client.fan_out(fake.conversation_ids, email_bodies=True)]
            exported = [
                m async for m in client.iter_location_messages(fake.location_id, email_bodies=True)
            ]
        assert sorted(m.id for m in rich) == sorted(m.id for m in plain)
        for messages in (rich, exported):
            with_bodies = [m for m in messages if isinstance(m, MessageWithEmails)]
            assert {m.id for m in with_bodies} == email_message_ids(fake)
            for message in with_bodies:
                assert message.meta is not None and message.meta.email is not None
                wanted = message.meta.email.message_ids
                assert [e.id for e in message.emails] == wanted
                assert all(e.body == fake.email(e.id)["body"] for e in message.emails)
                assert msgspec.to_builtins(message)["emails"][0]["id"] == wanted[0]
        # in order: each conversation's messages are still newest first
        by_conversation: dict[str, list[str]] = {}
        for m in rich:
            assert m.conversation_id is not None
            by_conversation.setdefault(m.conversation_id, []).append(m.id)
        for conversation, ids in by_conversation.items():
            assert ids == [m["id"] for m in fake.messages(conversation)]
        assert fake.stats.by_route["email"] == 2 * len(fake.email_ids)


async def test_a_pages_bodies_are_fetched_once_each_by_the_clients_concurrency(
    server: ServerFactory,
) -> None:
    from ghl_async.testing import Faults

    async with server(
        conversations=8, messages=(30, 60), seed=5, faults=Faults(latency=0.01)
    ) as fake:
        async with Client(fake.token, base_url=fake.url, max_concurrency=3) as client:
            messages = [
                m async for m in client.iter_location_messages(fake.location_id, email_bodies=True)
            ]
        bodies = sum(len(m.emails) for m in messages if isinstance(m, MessageWithEmails))
        assert bodies == len(fake.email_ids) > 3
        assert fake.stats.by_route["email"] == len(fake.email_ids)  # each id once
        # A worker per slot: every slot busy, never more (a page's bodies wait for none).
        assert fake.stats.max_in_flight == 3


async def test_an_email_body_error_is_its_messages_and_a_stopping_one_is_raised(
    server: ServerFactory,
) -> None:
    async with server(conversations=4, messages=(20, 40), seed=11) as fake:
        fake.inject("404", route="email")
        async with Client(fake.token, base_url=fake.url, retry=FAST) as client:
            messages = [
                m async for m in client.iter_location_messages(fake.location_id, email_bodies=True)
            ]
            # One body answered 404: that message carries the failure; every message and
            # every other body came.
            failed = [m for m in messages if isinstance(m, MessageWithEmails) and m.email_failures]
            assert len(failed) == 1
            (failure,) = failed[0].email_failures
            assert failure.status == 404 and failure.retry
            assert len(messages) == fake.total_messages
            got = sum(len(m.emails) for m in messages if isinstance(m, MessageWithEmails))
            assert got == len(fake.email_ids) - 1
            # A refused token stops everything, as for any request.
            fake.inject("401", route="email")
            with pytest.raises(errors.AuthenticationError):
                async for _ in client.iter_location_messages(fake.location_id, email_bodies=True):
                    pass


def test_location_page_is_a_plain_struct() -> None:
    page = LocationPage(messages=[], channel="Email", resume=None)
    assert msgspec.to_builtins(page)["channel"] == "Email"
