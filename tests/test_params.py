"""The paging decisions, pure: tables, then against FakeHighLevel over a real socket.

The fake-server tests use plain aiohttp (no Client): they prove the pure functions and the
decoders drive each real route to its end, which is all a generic loop will add I/O to.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

import aiohttp
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ghl_async._params import (
    CHANNELS,
    EXPORT_PAGE_MAX,
    EXPORT_PAGE_MIN,
    check_cursor,
    cursor_of,
    cut_conversations_since,
    cut_since,
    export_params,
    format_export_date,
    high_water,
    next_export_params,
    next_messages_params,
    next_search_params,
)
from ghl_async._validation import check_int
from ghl_async.models import (
    Conversation,
    ConversationsPage,
    EmailMessage,
    ExportPage,
    Message,
    MessagesPage,
    decode_conversations_page,
    decode_email,
    decode_export_page,
    decode_message,
    decode_page,
)
from ghl_async.testing import FakeHighLevel
from ghl_async.testing._location import parse_instant

UTC = timezone.utc
T0 = datetime(2024, 3, 27, 18, 13, 49, tzinfo=UTC)


def msg(mid: str, when: datetime | None = None) -> Message:
    return Message(id=mid, date_added=when)


def conv(cid: str, last: int | None = None, sort: list[Any] | None = None) -> Conversation:
    return Conversation(id=cid, last_message_date=last, sort=sort or [])


# -- next request, endpoint by endpoint ------------------------------------------------

BASE = {"limit": "2", "type": "TYPE_SMS"}


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        (MessagesPage(messages=[msg("a"), msg("b")], next_page=False), None),
        (MessagesPage(messages=[], next_page=True, last_message_id="z"), None),
        (
            MessagesPage(messages=[msg("a"), msg("b")], next_page=True, last_message_id="b"),
            {**BASE, "lastMessageId": "b"},
        ),
        # The server left lastMessageId out: the last message's id is the cursor.
        (
            MessagesPage(messages=[msg("a"), msg("b")], next_page=True),
            {**BASE, "lastMessageId": "b"},
        ),
        # The server's cursor wins over the last id when both are there.
        (
            MessagesPage(messages=[msg("a"), msg("b")], next_page=True, last_message_id="q"),
            {**BASE, "lastMessageId": "q"},
        ),
    ],
)
def test_next_messages_params(page: MessagesPage, expected: dict[str, str] | None) -> None:
    assert next_messages_params(BASE, page) == expected


def test_next_messages_params_replaces_the_previous_cursor_and_leaves_the_input() -> None:
    params = {**BASE, "lastMessageId": "old"}
    page = MessagesPage(messages=[msg("a"), msg("b")], next_page=True, last_message_id="new")
    assert next_messages_params(params, page) == {**BASE, "lastMessageId": "new"}
    assert params["lastMessageId"] == "old"


SEARCH = {"locationId": "loc", "limit": "2"}


@pytest.mark.parametrize(
    ("conversations", "params", "expected"),
    [
        ([conv("a", 9, [9])], SEARCH, None),  # short page
        ([], SEARCH, None),
        ([conv("a", 9, [9]), conv("b", 7, [7])], SEARCH, "7"),
        # sort wins over lastMessageDate: it is the search's own cursor.
        ([conv("a", 9, [9]), conv("b", 7, [6, "x"])], SEARCH, "6"),
        ([conv("a", 9), conv("b", 7)], SEARCH, "7"),  # no sort: lastMessageDate
        ([conv("a", 9), conv("b", 7, [1600854.0])], SEARCH, "1600854"),
        ([conv("a", 9), conv("b", 7, [12.5])], SEARCH, "12.5"),
        ([conv("a", 9), conv("b")], SEARCH, None),  # nothing to continue from
        ([conv("a", 9), conv("b", None, [True])], SEARCH, None),
        ([conv(str(i), 100 - i) for i in range(20)], {"locationId": "l"}, "81"),  # default 20
        ([conv(str(i), 100 - i) for i in range(19)], {"locationId": "l"}, None),
        ([conv("a", 9), conv("b", 7)], {"limit": "x"}, None),  # unreadable limit: 20
    ],
)
def test_next_search_params(
    conversations: list[Conversation], params: dict[str, str], expected: str | None
) -> None:
    for page in (conversations, ConversationsPage(conversations=conversations, total=5)):
        got = next_search_params(params, page)
        if expected is None:
            assert got is None
        else:
            assert got == {**params, "startAfterDate": expected}


EXPORT = {"locationId": "loc", "limit": "10"}


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        (ExportPage(messages=[msg("a")], next_cursor=None, total=1), None),
        (ExportPage(messages=[msg("a")], next_cursor="", total=1), None),
        (ExportPage(messages=[], next_cursor="c2", total=1), None),
        (ExportPage(messages=[msg("a")], next_cursor="c2", total=9), {**EXPORT, "cursor": "c2"}),
    ],
)
def test_next_export_params(page: ExportPage, expected: dict[str, str] | None) -> None:
    assert next_export_params(EXPORT, page) == expected
    assert next_export_params({**EXPORT, "cursor": "c1"}, page) == expected


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        (None, None),
        ({"limit": "10"}, None),
        ({"limit": "10", "lastMessageId": "m1"}, "m1"),
        ({"locationId": "l", "startAfterDate": "1600854"}, "1600854"),
        ({"locationId": "l", "cursor": "eyJ4Ijox=="}, "eyJ4Ijox=="),
    ],
)
def test_cursor_of_finds_each_endpoints_cursor(
    params: dict[str, str] | None, expected: str | None
) -> None:
    assert cursor_of(params) == expected


_P = TypeVar("_P")


def guarded(
    first: dict[str, str], pages: list[_P], step: Callable[[dict[str, str], _P], Any]
) -> str:
    """The generic loop's repeat rule over canned pages: 'end', or 'repeat' on a cursor seen."""
    params: dict[str, str] | None = first
    seen: set[str | None] = {cursor_of(first)}
    for page in pages:
        assert params is not None
        params = step(params, page)
        if params is None:
            return "end"
        cursor = cursor_of(params)
        if cursor in seen:
            return "repeat"
        seen.add(cursor)
    return "more"


def test_one_repeat_rule_catches_a_repeated_cursor_on_every_endpoint() -> None:
    two = [msg("a"), msg("b")]
    messages = [MessagesPage(messages=two, next_page=True, last_message_id="b")] * 2
    assert guarded({"limit": "2"}, messages, next_messages_params) == "repeat"
    search = [[conv("a", 9), conv("b", 7)]] * 2
    assert guarded(SEARCH, search, next_search_params) == "repeat"
    export = [ExportPage(messages=two, next_cursor="c", total=4)] * 2
    assert guarded(EXPORT, export, next_export_params) == "repeat"
    # And a cursor handed back that the caller started from is a repeat too.
    assert guarded({**EXPORT, "cursor": "c"}, export[:1], next_export_params) == "repeat"
    honest = [
        ExportPage(messages=two, next_cursor="c1", total=5),
        ExportPage(messages=two, next_cursor="c2", total=5),
        ExportPage(messages=[msg("e")], next_cursor=None, total=5),
    ]
    assert guarded(EXPORT, honest, next_export_params) == "end"


# -- incremental sync ----------------------------------------------------------------

S = T0  # since
NEWER, OLDER = S + timedelta(seconds=1), S - timedelta(seconds=1)


@pytest.mark.parametrize(
    ("dates", "seen", "kept", "reached"),
    [
        ([], (), [], False),
        ([NEWER, NEWER], (), [0, 1], False),
        ([NEWER, S, OLDER, NEWER], (), [0, 1], True),  # at since: kept; older: the end
        ([OLDER, NEWER], (), [], True),
        ([NEWER, None, S, None, OLDER, None], (), [0, 1, 2, 3], True),  # undated: kept
        ([None, None], (), [0, 1], False),
        ([NEWER, S, S, OLDER], ("m2",), [0, 1], True),  # seen at the mark: dropped
        ([NEWER, S], ("m0",), [0, 1], False),  # seen above the mark: kept (edited, say)
        ([S + timedelta(microseconds=1), S - timedelta(microseconds=1)], (), [0], True),
    ],
)
def test_cut_since(
    dates: list[datetime | None], seen: tuple[str, ...], kept: list[int], reached: bool
) -> None:
    messages = [msg(f"m{i}", d) for i, d in enumerate(dates)]
    got, got_reached = cut_since(messages, S, seen=seen)
    assert [m.id for m in got] == [f"m{i}" for i in kept]
    assert got_reached is reached
    # The same rule in another zone: only the instant counts.
    eastern = S.astimezone(timezone(timedelta(hours=-5)))
    assert cut_since(messages, eastern, seen=seen) == (got, reached)


MS = int(S.timestamp() * 1000)


@pytest.mark.parametrize(
    ("dates", "seen", "kept", "reached"),
    [
        ([MS + 1, MS, MS - 1, MS + 5], (), [0, 1], True),
        ([MS + 1, None, MS - 1], (), [0, 1], True),
        ([MS, MS], ("c1",), [0], False),
        ([10**20, MS - 1], (), [0], True),  # out of datetime's range: as undated
    ],
)
def test_cut_conversations_since(
    dates: list[int | None], seen: tuple[str, ...], kept: list[int], reached: bool
) -> None:
    conversations = [conv(f"c{i}", d) for i, d in enumerate(dates)]
    got, got_reached = cut_conversations_since(conversations, S, seen=seen)
    assert [c.id for c in got] == [f"c{i}" for i in kept]
    assert got_reached is reached


@pytest.mark.parametrize("cut", [cut_since, cut_conversations_since])
def test_a_naive_since_is_refused(cut: Callable[..., Any]) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        cut([], datetime(2024, 1, 1))
    with pytest.raises(TypeError):
        cut([], "2024-01-01")


def test_high_water_is_the_newest_date_and_the_ids_at_it() -> None:
    assert high_water([]) == (None, frozenset())
    assert high_water([msg("a")]) == (None, frozenset())
    messages = [msg("a", OLDER), msg("b", S), msg("c"), msg("d", S), msg("e", OLDER)]
    assert high_water(messages) == (S, frozenset({"b", "d"}))
    assert high_water([msg("a", S), msg("b", NEWER)]) == (NEWER, frozenset({"b"}))


@given(
    st.lists(st.integers(0, 40), max_size=30),
    st.lists(st.integers(0, 40), max_size=10),
)
def test_two_runs_deliver_every_message_once(first: list[int], later: list[int]) -> None:
    """Run 1 sees some messages; more arrive, some sharing run 1's newest second; run 2
    with run 1's high-water mark delivers exactly the new ones."""
    old = [msg(f"o{i}", T0 + timedelta(seconds=s)) for i, s in enumerate(first)]
    top = max(first, default=0)
    new = [msg(f"n{i}", T0 + timedelta(seconds=top + s // 20)) for i, s in enumerate(later)]

    def newest_first(ms: list[Message]) -> list[Message]:
        return sorted(ms, key=lambda m: m.date_added or T0, reverse=True)

    mark, ids = high_water(old)
    if mark is None:
        return
    delivered, _ = cut_since(newest_first(old + new), mark, seen=ids)
    assert sorted(m.id for m in delivered) == sorted(m.id for m in new)


# -- the export's dates and parameters ------------------------------------------------


@pytest.mark.parametrize(
    ("when", "text"),
    [
        (T0, "2024-03-27T18:13:49.000Z"),
        (T0.replace(microsecond=123_999), "2024-03-27T18:13:49.123Z"),
        (
            datetime(2024, 3, 27, 20, 13, 49, tzinfo=timezone(timedelta(hours=2))),
            "2024-03-27T18:13:49.000Z",
        ),
        (datetime(1970, 1, 1, tzinfo=UTC), "1970-01-01T00:00:00.000Z"),
    ],
)
def test_format_export_date(when: datetime, text: str) -> None:
    assert format_export_date(when) == text


def test_format_export_date_refuses_what_has_no_zone() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_export_date(datetime(2024, 1, 1))
    with pytest.raises(TypeError):
        format_export_date("2024-01-01")  # type: ignore[arg-type]


@given(
    st.datetimes(
        datetime(1971, 1, 2), datetime(9998, 12, 31), timezones=st.just(UTC) | st.timezones()
    )
)
def test_format_export_date_is_read_back_to_the_millisecond(when: datetime) -> None:
    text = format_export_date(when)
    assert text.endswith("Z") and len(text) == 24
    floor = when.replace(microsecond=when.microsecond // 1000 * 1000)
    millis = round(floor.timestamp() * 1000)
    assert parse_instant(text) == millis
    # Compared in UTC: Python never finds two datetimes of different zones equal when one
    # is a wall time in a fold or gap (PEP 495), whatever instant they name.
    assert datetime.fromisoformat(text.replace("Z", "+00:00")) == floor.astimezone(UTC)


def test_export_params_defaults() -> None:
    assert export_params("loc1") == {
        "locationId": "loc1",
        "limit": "500",
        "sortBy": "createdAt",
        "sortOrder": "desc",
    }


def test_export_params_every_option() -> None:
    got = export_params(
        "loc1",
        channel="email",
        contact_id="ct1",
        conversation_id="cv1",
        since=T0,
        until=T0 + timedelta(days=1),
        sort_by="UPDATEDAT",
        order="Asc",
        page_size=10,
        cursor="eyJwaXRJZCI6ImFiYy0xMjMifQ==",
    )
    assert got == {
        "locationId": "loc1",
        "limit": "10",
        "sortBy": "updatedAt",
        "sortOrder": "asc",
        "channel": "Email",
        "contactId": "ct1",
        "conversationId": "cv1",
        "startDate": "2024-03-27T18:13:49.000Z",
        "endDate": "2024-03-28T18:13:49.000Z",
        "cursor": "eyJwaXRJZCI6ImFiYy0xMjMifQ==",
    }
    assert export_params("l", since=T0, until=T0)["startDate"] == got["startDate"]


@pytest.mark.parametrize("spelling", ["call", "SMS", "sms", " Email ", "whatsapp", "INSTAGRAM"])
def test_channels_are_sent_as_the_api_spells_them(spelling: str) -> None:
    channel = export_params("l", channel=spelling)["channel"]
    assert channel in CHANNELS
    assert channel.lower() == spelling.strip().lower()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"channel": "Telegram"}, ValueError, "channel must be one of Call, SMS, Email"),
        ({"channel": ""}, ValueError, "channel"),
        ({"channel": 3}, TypeError, "channel"),
        ({"sort_by": "dateAdded"}, ValueError, "sort_by"),
        ({"order": "up"}, ValueError, "order"),
        ({"page_size": 9}, ValueError, "between 10 and 500"),
        ({"page_size": 501}, ValueError, "between 10 and 500"),
        ({"page_size": True}, TypeError, "page_size"),
        ({"page_size": 100.0}, TypeError, "page_size"),
        ({"contact_id": "a/b"}, ValueError, "contact_id"),
        ({"conversation_id": "../x"}, ValueError, "conversation_id"),
        ({"since": datetime(2024, 1, 1)}, ValueError, "since must be timezone-aware"),
        ({"until": datetime(2024, 1, 1)}, ValueError, "until must be timezone-aware"),
        ({"since": NEWER, "until": S}, ValueError, "is after until"),
        ({"cursor": ""}, ValueError, "cursor"),
        ({"cursor": "a\nb"}, ValueError, "cursor"),
        ({"cursor": "x" * 5000}, ValueError, "cursor"),
        ({"cursor": 5}, TypeError, "cursor"),
    ],
)
def test_export_params_refuse_bad_arguments_before_the_network(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        export_params("loc1", **kwargs)


def test_export_params_check_the_location() -> None:
    with pytest.raises(ValueError, match="location_id"):
        export_params("loc?x=1")
    assert check_int(10, "page_size", EXPORT_PAGE_MIN, EXPORT_PAGE_MAX) == 10
    assert check_cursor("a+b/c==") == "a+b/c=="


# -- against the fake, over a real socket ---------------------------------------------


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def fetch(
    session: aiohttp.ClientSession, fake: FakeHighLevel, path: str, params: Mapping[str, str]
) -> bytes:
    headers = {"Authorization": f"Bearer {fake.token}", "Version": "2021-04-15"}
    async with session.get(fake.url + path, params=dict(params), headers=headers) as reply:
        body = await reply.read()
        assert reply.status == 200, body
        return body


async def export_pass(
    session: aiohttp.ClientSession, fake: FakeHighLevel, params: dict[str, str]
) -> tuple[list[Message], list[ExportPage]]:
    """One export pass to its end, by the pure functions alone, with the repeat guard."""
    messages: list[Message] = []
    pages: list[ExportPage] = []
    seen: set[str | None] = {cursor_of(params)}
    following: dict[str, str] | None = params
    while following is not None:
        page = decode_export_page(
            await fetch(session, fake, "/conversations/messages/export", following)
        )
        pages.append(page)
        messages.extend(page.messages)
        following = next_export_params(following, page)
        if following is not None:
            assert cursor_of(following) not in seen
            seen.add(cursor_of(following))
    return messages, pages


@pytest.mark.anyio
@pytest.mark.parametrize("wrapped", [False, True])
async def test_two_export_passes_give_every_message_once(
    session: aiohttp.ClientSession, wrapped: bool
) -> None:
    async with FakeHighLevel(conversations=12, seed=3, wrap_export=wrapped) as fake:
        everything = {m["id"] for c in fake.conversation_ids for m in fake.messages(c)}
        first, pages = await export_pass(
            session, fake, export_params(fake.location_id, page_size=37)
        )
        emails, email_pages = await export_pass(
            session, fake, export_params(fake.location_id, channel="email", page_size=37)
        )
    first_ids = [m.id for m in first]
    email_ids = [m.id for m in emails]
    assert len(first_ids) == len(set(first_ids))
    assert len(email_ids) == len(set(email_ids))
    assert not set(first_ids) & set(email_ids)
    assert set(first_ids) | set(email_ids) == everything
    assert emails and all(m.message_type and "EMAIL" in m.message_type for m in emails)
    assert len(pages) > 2
    assert {p.total for p in pages} == {len(first_ids)}
    assert {p.total for p in email_pages} == {len(email_ids)}
    assert all(p.trace_id for p in pages) and all(p.repaired == p.dropped == 0 for p in pages)
    assert pages[-1].is_last and not any(p.is_last for p in pages[:-1])
    # Newest first, as asked.
    dates = [m.date_added for m in first]
    assert all(d is not None for d in dates)
    assert dates == sorted(dates, key=lambda d: d or T0, reverse=True)


@pytest.mark.anyio
async def test_an_export_since_a_date_keeps_that_date(session: aiohttp.ClientSession) -> None:
    async with FakeHighLevel(conversations=6, seed=5) as fake:
        every, _ = await export_pass(session, fake, export_params(fake.location_id))
        since = sorted(m.date_added for m in every if m.date_added)[len(every) // 2]
        assert since is not None
        later, _ = await export_pass(session, fake, export_params(fake.location_id, since=since))
    expected = {m.id for m in every if m.date_added and m.date_added >= since}
    assert {m.id for m in later} == expected
    assert cut_since(every, since)[0] == later


@pytest.mark.anyio
async def test_single_message_and_email_routes_decode(session: aiohttp.ClientSession) -> None:
    async with FakeHighLevel(conversations=8, seed=2) as fake:
        conversation = next(c for c in fake.conversation_ids if fake.messages(c))
        page = decode_page(
            await fetch(session, fake, f"/conversations/{conversation}/messages", {"limit": "5"})
        )
        for listed in page.messages:
            one = decode_message(
                await fetch(session, fake, f"/conversations/messages/{listed.id}", {})
            )
            assert one == listed
        assert fake.email_ids
        for email_id in fake.email_ids[:5]:
            email = decode_email(
                await fetch(session, fake, f"/conversations/messages/email/{email_id}", {})
            )
            sent = fake.email(email_id)
            assert isinstance(email, EmailMessage)
            assert email.unparsed == {}
            assert email.id == email_id
            assert email.from_ == sent["from"]
            assert email.to == sent["to"]
            assert email.thread_id == sent["threadId"]
            assert email.subject == sent["subject"] and email.body == sent["body"]
            assert email.date_added is not None and email.date_added.tzinfo is not None
            assert msgspec.to_builtins(email)["from"] == sent["from"]


@pytest.mark.anyio
async def test_search_and_messages_page_to_the_end(session: aiohttp.ClientSession) -> None:
    async with FakeHighLevel(conversations=23, seed=4, messages=(0, 30)) as fake:
        params: dict[str, str] | None = {"locationId": fake.location_id, "limit": "5"}
        found: list[str] = []
        totals: set[int | None] = set()
        while params is not None:
            page = decode_conversations_page(
                await fetch(session, fake, "/conversations/search", params)
            )
            found += [c.id for c in page.conversations]
            totals.add(page.total)
            params = next_search_params(params, page)
        assert sorted(found) == sorted(fake.conversation_ids)
        assert totals == {23}
        conversation = max(fake.conversation_ids, key=lambda c: len(fake.messages(c)))
        query: dict[str, str] | None = {"limit": "7"}
        ids: list[str] = []
        while query is not None:
            messages = decode_page(
                await fetch(session, fake, f"/conversations/{conversation}/messages", query)
            )
            ids += [m.id for m in messages.messages]
            query = next_messages_params(query, messages)
        assert ids == [m["id"] for m in fake.messages(conversation)]


def test_dates_across_a_dst_fold_compare_as_instants_and_far_years_are_written_whole() -> None:
    from zoneinfo import ZoneInfo

    from ghl_async._params import export_params, format_export_date

    eastern = ZoneInfo("America/New_York")
    # 01:30 EDT, then 01:10 EST: later in time, earlier on the wall clock.
    since = datetime(2024, 11, 3, 1, 30, tzinfo=eastern)
    until = datetime(2024, 11, 3, 1, 10, fold=1, tzinfo=eastern)
    params = export_params("L1", since=since, until=until)
    assert params["startDate"] == "2024-11-03T05:30:00.000Z"
    assert params["endDate"] == "2024-11-03T06:10:00.000Z"
    assert format_export_date(datetime(5, 1, 1, tzinfo=timezone.utc)) == "0005-01-01T00:00:00.000Z"
    year_one = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    with pytest.raises(ValueError, match="outside the dates UTC can hold"):
        export_params("L1", since=year_one)


def test_to_records_gives_every_date_in_utc() -> None:
    import msgspec

    from ghl_async.models import Message
    from ghl_async.records import to_records

    india = msgspec.json.decode(
        b'{"id":"a","dateAdded":"2024-03-27T18:13:49.000+05:30"}', type=Message
    )
    utc = msgspec.json.decode(b'{"id":"b","dateAdded":"2024-03-27T12:43:49.000Z"}', type=Message)
    rows = to_records([india, utc])
    assert rows[0]["date_added"] == rows[1]["date_added"]
    assert rows[0]["date_added"].tzinfo is timezone.utc
