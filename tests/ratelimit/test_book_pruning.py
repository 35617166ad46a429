"""The window book drops pruned reply times in batches and decides exactly as before.

A reply time older than the longest window is pruned: every look at the list starts
after it, and the list drops the pruned ones in one slice once they are a sixteenth of
it (at a high budget the list holds thousands, and deleting its front on every request
moved all of them each time). The reference below deletes them at once, on every prune,
as the book did before; whatever happens, both decide the same.
"""

from __future__ import annotations

from bisect import bisect_right

from hypothesis import given, settings
from hypothesis import strategies as st

from ghl_async._sansio import RateLimitHeaders
from ghl_async.ratelimit import RateLimit, WindowBook
from ghl_async.ratelimit.book import Ticket
from ghl_async.ratelimit.protocol import Reply


class EagerBook(WindowBook):
    """The book with every pruned reply time deleted at once."""

    def _prune(self, now: float) -> None:
        if now == self._pruned_at:
            return
        self._pruned_at = now
        horizon = now - self._longest
        del self._finished[: bisect_right(self._finished, horizon)]
        del self._refused[: bisect_right(self._refused, horizon)]


def budget(max_requests: int, interval: float, remaining: int, status: int = 200) -> Reply:
    rate = RateLimitHeaders(max_requests=max_requests, interval=interval, remaining=remaining)
    return Reply(status, rate, retry_after=0.25 if status == 429 else None)


replies = st.one_of(
    st.none(),  # no reply: a transport error
    st.builds(
        budget,
        st.sampled_from([4, 20, 100]),
        # Mostly one window (the list grows long); now and then a shorter or a longer.
        st.sampled_from([2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 0.5, 10.0]),
        st.integers(0, 100),
        st.sampled_from([200, 200, 200, 429]),
    ),
)
steps = st.integers(0, 99).flatmap(
    lambda k: (
        st.floats(0.0, 0.05)  # many replies in a window: the list long, pruned in batches
        if k < 95
        else st.floats(-1.5, 0.0)  # a clock given out of order (numbers moved back)
        if k < 98
        else st.sampled_from([0.5, 1.0, 2.5, 11.0])  # a window or more passes
    )
)
operations = st.lists(
    st.tuples(
        st.sampled_from(["take", "take", "finish", "finish", "look"]),
        steps,
        replies,
        st.integers(0, 50),  # which request in flight finishes; how many queue ahead
    ),
    min_size=100,
    max_size=400,
)


@settings(max_examples=200, deadline=None)
@given(
    cap=st.none() | st.builds(RateLimit, st.integers(1, 30), st.sampled_from([0.5, 2.0])),
    ops=operations,
)
def test_the_book_decides_as_one_that_deletes_every_pruned_time_at_once(
    cap: RateLimit | None, ops: list[tuple[str, float, Reply | None, int]]
) -> None:
    book, eager = WindowBook(cap), EagerBook(cap)
    out: list[tuple[Ticket, Ticket]] = []
    now = 0.0
    for kind, step, reply, number in ops:
        now += step
        if kind == "take":
            mine, theirs = book.take(now), eager.take(now)
            assert mine == theirs
            out.append((mine, theirs))
        elif kind == "finish" and out:
            mine, theirs = out.pop(number % len(out))
            assert book.finish(now, reply, mine) == eager.finish(now, reply, theirs)
        assert book.wait_time(now) == eager.wait_time(now)
        assert book.held(now) == eager.held(now)
        assert book.estimated_wait(now, number) == eager.estimated_wait(now, number)
        assert book.neighbour_slots(now) == eager.neighbour_slots(now)
    # Never more than a sixteenth of the list is pruned and still held (read from the
    # book's own index: with the clock moved back, the pruned part need not sort
    # before the rest, so a bisection of the whole list would not find it).
    book.held(now)
    assert book._live * 16 < len(book._finished) or book._live == 0


def test_a_longer_window_announced_does_not_bring_pruned_replies_back() -> None:
    book = WindowBook()
    second = budget(1000, 1.0, 1000)
    times = [n / 64 for n in range(320)]  # a reply every 1/64 s under a 1 s window
    for t in times:
        book.held(t)  # a full look prunes (a send's take does not)
        book.finish(t, second, book.take(t))
    assert book.held(times[-1]) == 64
    assert len(book._finished) > 64  # pruned replies still in the list, counting nothing
    now = 320 / 64
    book.held(now)  # the last prune, at now
    book.finish(now, budget(1000, 10.0, 1000), book.take(now))
    # The 10 s window counts what it would have had the pruned ones been deleted: the
    # replies after the last prune's horizon (one second before now), and this one.
    assert book.held(now) == sum(1 for t in times if t > now - 1.0) + 1


def test_at_a_high_budget_the_list_holds_the_window_and_little_more() -> None:
    book = WindowBook(RateLimit(10_000, 1.0))
    for n in range(50_000):  # 9,000 replies a second for a little over 5 s
        t = n / 9_000
        assert book.wait_time(t) == 0.0
        book.finish(t, None, book.take(t))
    window = 9_000
    assert window <= len(book._finished) <= window + window // 16 + 1
