"""One bad email body belongs to its message: the export completes, the failure is
recorded, and the next run fetches it again (FakeHighLevel over a socket, real sinks).
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import msgspec
import pytest

from ghl_async import Client, MessageWithEmails, RetryPolicy, errors
from ghl_async._http.emails import EmailFailure, failure_of
from ghl_async.export import sink_for, sync_location
from ghl_async.export.pipeline import export_location
from ghl_async.testing import FakeHighLevel
from tests.support.memory_sink import MemorySink

pytestmark = pytest.mark.anyio

ONCE = RetryPolicy(max_attempts=1)  # no retries: each injected fault is one failure
BAD_ID = "../../oauth/x"
TWICE = "DupEmailId0000000001"


def with_a_bad_thread(fake: FakeHighLevel) -> str:
    """An email message listing a bad id and one id twice; returns the message id."""
    message = fake.add_message(
        fake.conversation_ids[0],
        messageType="TYPE_EMAIL",
        type=3,
        meta={"email": {"messageIds": [BAD_ID, TWICE, TWICE]}},
    )
    return str(message["id"])


def rows(database: Path, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(database)) as db:
        return list(db.execute(sql).fetchall())


def threads(fake: FakeHighLevel) -> list[list[str]]:
    """The email ids of each email message (a retry asks for all of a message's)."""
    return [
        list(m["meta"]["email"]["messageIds"])
        for c in fake.conversation_ids
        for m in fake.messages(c)
        if (m.get("meta") or {}).get("email", {}).get("messageIds")
    ]


async def test_failed_bodies_are_recorded_and_fetched_again_by_the_next_run(
    tmp_path: Path,
) -> None:
    database = tmp_path / "mirror.db"
    async with FakeHighLevel(conversations=6, messages=(5, 40), seed=91) as fake:
        odd = with_a_bad_thread(fake)
        first_thread, second_thread = [t for t in threads(fake) if BAD_ID not in t][:2]
        gone, down = first_thread[0], second_thread[0]
        refetched = len(first_thread) + len(second_thread)
        # Both fail on their page and again at the run's end.
        fake.inject("404", 2, email_id=gone)
        fake.inject("500", 2, email_id=down)
        async with Client(fake.token, base_url=fake.url, retry=ONCE) as client:
            async with sink_for(f"sqlite:///{database}") as sink:
                first = await export_location(client, fake.location_id, sink, email_bodies=True)
            # Each distinct id asked once (the bad one never sent), and the bodies of the
            # two messages with a failure once more at the run's end.
            assert fake.stats.by_route["email"] == len(fake.email_ids) - 1 + refetched
            assert first.state is not None and first.state.done
            assert set(first.failed_emails) == {BAD_ID, gone, down}
            bad = first.failed_emails[BAD_ID]
            assert not bad.retry and "not an email id" in bad.reason
            assert first.failed_emails[gone].status == 404 and first.failed_emails[gone].retry
            assert first.failed_emails[down].status == 500 and first.failed_emails[down].retry
            assert sorted(first.state.retry_emails.values()) == sorted([[gone], [down]])
            # Every message is in, whatever its emails did.
            (count,) = rows(database, "SELECT count(*) FROM messages")[0]
            assert count == fake.total_messages
            recorded = set(rows(database, "SELECT email_id, retry FROM email_failures"))
            assert recorded == {(BAD_ID, 0), (gone, 1), (down, 1)}
            assert rows(database, f"SELECT message_id FROM emails WHERE id = '{TWICE}'") == [
                (odd,)
            ]

            # The next run of the finished export fetches only what failed, and lands it.
            before = fake.stats.requests
            async with sink_for(f"sqlite:///{database}") as sink:
                again = await export_location(client, fake.location_id, sink, email_bodies=True)
            assert fake.stats.requests - before == 2 + refetched  # two messages, their bodies
            assert again.state is not None and again.state.retry_emails == {}
            assert again.failed_emails == {}
        assert rows(database, "SELECT email_id FROM email_failures") == [(BAD_ID,)]
        (bodies,) = rows(database, "SELECT count(*) FROM emails")[0]
        assert bodies == len(fake.email_ids) - 1  # every body but the bad id's


async def test_a_sync_retries_failed_bodies_at_its_end_and_on_the_next_run() -> None:
    async with FakeHighLevel(conversations=6, messages=(5, 40), seed=92) as fake:
        flaky = threads(fake)[0][0]
        fake.inject("500", email_id=flaky)
        sink = MemorySink()
        async with Client(fake.token, base_url=fake.url, retry=ONCE) as client, sink:
            first = await sync_location(client, fake.location_id, sink, email_bodies=True)
            # It failed on its page; the run's end fetched it again, and it came.
            assert first.failed_emails == {}
            assert first.state is not None and first.state.retry_emails == {}
            assert len(sink.emails) == len(fake.email_ids)

            added = fake.add_message(fake.conversation_ids[1], messageType="TYPE_EMAIL", type=3)
            (new_email,) = added["meta"]["email"]["messageIds"]
            fake.inject("503", 2, email_id=new_email)  # down for longer than this run
            second = await sync_location(client, fake.location_id, sink, email_bodies=True)
            assert set(second.failed_emails) == {new_email}
            assert second.state is not None
            assert second.state.retry_emails == {added["id"]: [new_email]}
            assert new_email not in sink.emails

            third = await sync_location(client, fake.location_id, sink, email_bodies=True)
            assert third.failed_emails == {}
            assert third.state is not None and third.state.retry_emails == {}
        assert new_email in sink.emails
        assert len(sink.emails) == len(fake.email_ids)


async def test_a_refused_token_on_a_body_still_stops_the_export() -> None:
    async with FakeHighLevel(conversations=4, messages=(5, 30), seed=93) as fake:
        fake.inject("401", route="email")
        sink = MemorySink()
        async with Client(fake.token, base_url=fake.url, retry=ONCE) as client, sink:
            with pytest.raises(errors.AuthenticationError):
                await export_location(client, fake.location_id, sink, email_bodies=True)
            state = await sink.load(fake.location_id)
        assert state is None or not state.done


def test_a_body_over_the_size_cap_is_not_asked_again() -> None:
    too_large = errors.TransportError("reply body over max_body_bytes (100 bytes)", status=200)
    too_large.retryable = False
    assert failure_of("E1", too_large) == EmailFailure(
        email_id="E1", reason="reply body over max_body_bytes (100 bytes)", status=200, retry=False
    )
    reset = errors.TransportError("connection reset")
    assert failure_of("E2", reset).retry
    assert not failure_of("E3", ValueError("not an id")).retry
    message = MessageWithEmails(id="m", email_failures=[failure_of("E2", reset)])
    (recorded,) = msgspec.to_builtins(message)["emailFailures"]
    assert recorded == {
        "emailId": "E2",
        "reason": "connection reset",
        "status": None,
        "retry": True,
    }
