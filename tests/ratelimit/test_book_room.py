"""The window book's kept room decides exactly as a full look at every send.

After a full look that allows a send, the book keeps how many sends in a row it would
allow (the free slots of the fullest constraint) and answers ``wait_time`` from that
count until they are taken or a reply teaches something that takes room (a smaller
budget, neighbour slots, a pause, the daily stop). The reference below never keeps any:
every ``wait_time`` is a full look, as the book did before. On a clock that only moves
forward (the limiter's is monotonic), both decide the same, whatever the replies say.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ghl_async._sansio import RateLimitHeaders
from ghl_async.ratelimit import RateLimit, WindowBook
from ghl_async.ratelimit.book import Ticket
from ghl_async.ratelimit.protocol import Reply


class UnprunedBook(WindowBook):
    """The book with pruning off: pruning only bounds memory, but a full look prunes
    and a kept answer does not, and a longer window announced later counts what was not
    pruned (``test_book_pruning`` holds pruning to its own reference).
    """

    def _prune(self, now: float) -> None:
        pass


class FullLookBook(UnprunedBook):
    """The book that looks in full at every ``wait_time``: it keeps no room."""

    def _note_room(self, now: float) -> None:
        self._credit = 0


def reply(
    max_requests: int, interval: float, remaining: int, status: int, daily: int | None
) -> Reply:
    rate = RateLimitHeaders(
        max_requests=max_requests, interval=interval, remaining=remaining, daily_remaining=daily
    )
    return Reply(
        status,
        rate,
        retry_after=0.3 if status == 429 else None,
        daily_reset_in=0.7 if daily == 0 else None,
    )


replies = st.one_of(
    st.none(),  # no reply: a transport error
    st.builds(
        reply,
        st.sampled_from([3, 8, 8, 8, 40]),  # mostly one budget; now and then another
        st.sampled_from([1.0, 1.0, 1.0, 0.25, 3.0]),
        # What the server says is left: often all of it (we are alone), else a
        # neighbour's share showing.
        st.one_of(st.just(40), st.integers(0, 40)),
        st.sampled_from([200, 200, 200, 200, 429]),
        st.sampled_from([None, None, None, 500, 0]),
    ),
)
operations = st.lists(
    st.tuples(
        st.sampled_from(["send", "send", "send", "finish", "finish", "wait"]),
        st.one_of(st.floats(0.0, 0.05), st.sampled_from([0.2, 0.5, 1.5])),
        replies,
        st.integers(0, 50),  # which request in flight finishes
    ),
    min_size=50,
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(
    cap=st.none() | st.builds(RateLimit, st.integers(1, 12), st.sampled_from([0.5, 2.0])),
    second_cap=st.none() | st.builds(RateLimit, st.integers(1, 12), st.sampled_from([0.5, 2.0])),
    ops=operations,
)
def test_the_book_decides_as_one_that_looks_in_full_at_every_send(
    cap: RateLimit | None,
    second_cap: RateLimit | None,
    ops: list[tuple[str, float, Reply | None, int]],
) -> None:
    book, full = UnprunedBook(cap), FullLookBook(cap)
    out: list[tuple[Ticket, Ticket]] = []
    now = 0.0
    for index, (kind, step, answer, number) in enumerate(ops):
        now += step
        if index == len(ops) // 2 and second_cap is not None:
            book.add_cap(now, second_cap)  # another client's cap, midway
            full.add_cap(now, second_cap)
        wait = book.wait_time(now)
        assert wait == full.wait_time(now)
        if kind == "send" and wait == 0.0:
            mine, theirs = book.take(now), full.take(now)
            assert mine == theirs
            out.append((mine, theirs))
        elif kind == "finish" and out:
            mine, theirs = out.pop(number % len(out))
            assert book.finish(now, answer, mine) == full.finish(now, answer, theirs)
        assert book.held(now) == full.held(now)
        assert book.blocked(now) == full.blocked(now)
        assert book.neighbour_slots(now) == full.neighbour_slots(now)
        assert full._credit == 0


def test_room_is_kept_between_full_looks_and_spent_by_sends() -> None:
    book = WindowBook(RateLimit(10, 1.0))
    book.finish(0.0, Reply(200, RateLimitHeaders(10, 1.0, 9)), book.take(0.0))
    assert book.wait_time(0.1) == 0.0  # a full look: one slot held of ten
    assert book._credit == 9
    for n in range(9):
        assert book.wait_time(0.1) == 0.0
        book.take(0.1)
        assert book._credit == 8 - n
    # A full look again: ten held, the first finished one frees at 1.0.
    assert book.wait_time(0.1) == 1.0 - 0.1


def test_a_reply_that_books_a_neighbour_takes_the_room_back() -> None:
    book = WindowBook()  # HighLevel's default, 100 per 10 s
    first = book.take(0.0)
    book.finish(0.05, Reply(200, RateLimitHeaders(10, 10.0, 9)), first)
    assert book.wait_time(0.1) == 0.0
    assert book._credit == 9
    ticket = book.take(0.1)
    # The server counted 8 more than ours: a neighbour holds them.
    book.finish(0.15, Reply(200, RateLimitHeaders(10, 10.0, 0)), ticket)
    assert book._credit == 0
    assert book.wait_time(0.2) is not None and book.wait_time(0.2) != 0.0
