"""The window book: every rule of the limiter as pure decisions on numbers.

No clock and no waiting here: every method takes ``now``, so the rules are tested by
moving a number. Why the rules hold (the window guarantee, a neighbour on the budget,
pauses, the daily budget, ``max_wait``) is written out in the docs page "How the limiter
works" (``docs/how-the-limiter-works.md``); the Redis limiter applies the same rules in
Lua, and ``tests/ratelimit/test_contract.py`` holds both to them.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from bisect import bisect_left, bisect_right, insort

import msgspec

from ghl_async._sansio import seconds_until_daily_reset
from ghl_async.ratelimit.budget import RateLimit
from ghl_async.ratelimit.protocol import Reply

__all__ = ["Ticket", "WindowBook"]

# The most sends wait_time() allows on one full look (see WindowBook._note_room).
_MAX_CREDIT = 32


class Ticket(msgspec.Struct, frozen=True, gc=False):
    """What the book notes at a send, for the neighbour estimate at its reply.

    (A struct: made in C, once per request.)
    """

    sent: float
    held: int  # our slots of the server's budget held at the send, not refused
    sends: int  # our sends before this one


class WindowBook:
    """The limiter's bookkeeping and decisions, with no clock and no waiting of its own.

    Every method takes ``now`` (seconds on a monotonic clock), so the rules are tested
    by moving a number, not by sleeping.
    """

    def __init__(self, rate_limit: RateLimit | None = None) -> None:
        # The caller's caps, each a constraint of its own.
        self._caps: list[RateLimit] = [rate_limit] if rate_limit is not None else []
        # The server's budget: HighLevel's default until a reply announces one (with no
        # cap); unknown until then with a cap.
        self._server: RateLimit | None = None if rate_limit is not None else RateLimit()
        self._derive()
        self.learned = False
        self.in_flight = 0
        self.paused_until = 0.0
        self.daily_until = 0.0
        # Reply times of finished requests, oldest first (a slot per constraint each).
        # Those before ``_live`` are pruned: every look bisects from there, and the
        # list drops them in one slice once they are a sixteenth of it (not one
        # front deletion per request: at a high budget it holds thousands).
        self._finished: list[float] = []
        self._live = 0
        # For the neighbour estimate: reply times of the requests the server refused
        # (they hold a slot here, but the server did not count them), and a count of
        # our sends.
        self._refused: list[float] = []
        self._sends = 0
        # Send times of our requests in flight, oldest first: a neighbour slot past its
        # end makes way for a send only while none of them went out within an interval.
        self._out: list[float] = []
        # End times of neighbour slots (the server's constraint only), soonest first.
        # One past its end stays until a reply of a send made after its end frees it.
        self._booked: list[float] = []

    # -- the constraints -----------------------------------------------------------

    def _derive(self) -> None:
        # Read on every acquire and reply: computed when the constraints change only.
        server = self._server
        self._constraints = (*self._caps, server) if server is not None else tuple(self._caps)
        self._longest = max((c.interval for c in self._constraints), default=0.0)
        # The window over which a send's ticket counts our slots (see take()) and a
        # neighbour slot past its end waits for a send of ours (_probe_at): the server's
        # interval; while it is unknown, the longest cap's.
        self._window = server.interval if server is not None else self._longest
        self._pruned_at = math.nan  # the horizon moved: prune again
        # Sends wait_time() allows at once, as its last full look counted them (see
        # _note_room); new constraints: look again in full.
        self._credit = 0

    @property
    def caps(self) -> tuple[RateLimit, ...]:
        """The caller's caps."""
        return tuple(self._caps)

    @property
    def server(self) -> RateLimit | None:
        """The server's budget: announced, HighLevel's default before that (with no
        cap), or ``None`` (unknown, with a cap).
        """
        return self._server

    @property
    def constraints(self) -> tuple[RateLimit, ...]:
        """Every constraint that holds: the caps, then the server's budget if known."""
        return self._constraints

    @property
    def tightest(self) -> RateLimit:
        """The constraint with the lowest steady rate (for display)."""
        return min(self.constraints, key=lambda c: (c.per_second, c.interval))

    @property
    def max_requests(self) -> int:
        """``max_requests`` of :attr:`tightest`."""
        return self.tightest.max_requests

    @property
    def interval(self) -> float:
        """``interval`` of :attr:`tightest`."""
        return self.tightest.interval

    def add_cap(self, now: float, rate_limit: RateLimit) -> None:
        """Add ``rate_limit`` as one more constraint (another caller's cap)."""
        if rate_limit not in self._caps:
            self._caps.append(rate_limit)
            self._derive()

    # -- slots ---------------------------------------------------------------------

    def _prune(self, now: float) -> None:
        # Pruning only bounds memory (every count bisects by its own edge, from the
        # first live time), and one acquire asks several times at one ``now``: once
        # is enough.
        if now == self._pruned_at:
            return
        self._pruned_at = now
        horizon = now - self._longest
        finished = self._finished
        live = self._live = bisect_right(finished, horizon, self._live)
        if live and live * 16 >= len(finished):
            del finished[:live]
            self._live = 0
        gone = bisect_right(self._refused, horizon)
        if gone:
            del self._refused[:gone]

    def _own_alive(self, now: float, constraint: RateLimit) -> int:
        """Index of the first finished request still holding a slot of ``constraint``."""
        return bisect_right(self._finished, now - constraint.interval, self._live)

    def _ours_counted(self, edge: float) -> int:
        """Our requests the server may count from ``edge`` on: those in flight, and those
        replied to since, less the ones it refused (it did not count them).
        """
        finished, refused = self._finished, self._refused
        alive = len(finished) - bisect_right(finished, edge, self._live)
        if refused:  # none, but for 429s within the longest window
            alive -= len(refused) - bisect_right(refused, edge)
        return self.in_flight + alive

    def _held_by(self, now: float, constraint: RateLimit) -> int:
        held = self.in_flight + len(self._finished) - self._own_alive(now, constraint)
        if constraint is self._server:
            held += len(self._booked)
        return held

    def held(self, now: float) -> int:
        """The most slots held now of any constraint (requests in flight, finished less
        than its interval ago, and neighbour slots for the server's budget).
        """
        self._prune(now)
        return max(self._held_by(now, c) for c in self.constraints)

    def neighbour_slots(self, now: float) -> int:
        """Neighbour slots booked and not yet expired."""
        self._prune(now)
        return len(self._booked)

    def _free_at(self, now: float, constraint: RateLimit) -> float | None:
        """When one more slot of ``constraint`` is free (``now`` if it is), or ``None``
        when that needs a request in flight to finish first.
        """
        finished = self._finished
        first = self._own_alive(now, constraint)
        booked = self._booked if constraint is self._server else []
        # Neighbour slots past their end wait for a reply, like a request in flight;
        # with none of ours out but sends an interval old, one of them makes way for a
        # send (see take()), and when the newest send out turns an interval old.
        overdue = bisect_right(booked, now)
        probe_at = math.inf
        if overdue:
            probe_at = self._probe_at()
            if probe_at <= now:
                overdue -= 1
                booked = booked[1:]
        finite = len(finished) - first + len(booked) - overdue
        held = self.in_flight + overdue + finite
        if held < constraint.max_requests:
            return now
        needed = held - constraint.max_requests + 1
        if needed > finite:
            return None if probe_at == math.inf else probe_at
        interval = constraint.interval
        expiries = heapq.merge(
            (f + interval for f in itertools.islice(finished, first, None)),
            itertools.islice(booked, overdue, None),
        )
        return min(next(itertools.islice(expiries, needed - 1, None)), probe_at)

    def overdue(self, now: float) -> bool:
        """Whether a neighbour slot past its end still waits for a reply to free it."""
        booked = self._booked
        return bool(booked) and booked[0] <= now

    def _probe_at(self) -> float:
        """From when a send may take the place of a neighbour slot past its end: once
        no send of ours out went out within the server's interval. A reply to one sent
        after the slot's end would free it, and one sent before may renew it; a send out
        that long has no reply coming soon (a hung request, a crashed process), and
        waiting for it would stall every send behind slots no reply can free.
        """
        out = self._out
        return out[-1] + self._window if out else -math.inf

    def blocked(self, now: float) -> tuple[str, float] | None:
        """``("daily", seconds)`` while the daily budget is spent, ``("pause", seconds)``
        while a 429's pause runs, else ``None``.
        """
        if now < self.daily_until:
            return "daily", self.daily_until - now
        if now < self.paused_until:
            return "pause", self.paused_until - now
        return None

    def wait_time(self, now: float) -> float | None:
        """``0.0``: send now; a positive number: look again after that many seconds;
        ``None``: wait until a request in flight finishes.
        """
        if self._credit:
            return 0.0  # room left from the last full look (see _note_room)
        blocked = self.blocked(now)
        if blocked is not None:
            return blocked[1]
        if not self.learned and self.in_flight:
            # Until the first reply says what the budget is, send one request at a time.
            return None
        self._prune(now)
        latest = now
        for constraint in self._constraints:
            free_at = self._free_at(now, constraint)
            if free_at is None:
                return None
            latest = max(latest, free_at)
        if latest == now and self.learned:
            self._note_room(now)
        return latest - now

    def _note_room(self, now: float) -> None:
        """Keep how many sends in a row :meth:`wait_time` would allow from ``now`` on,
        so it can say so without looking again until they are taken.

        The slots held of a constraint only grow by a send (:meth:`take` counts it off)
        or by what a reply teaches: a smaller budget, neighbour slots booked, a pause,
        the daily stop (each sets the count to zero, as does a new constraint). A reply
        otherwise turns a slot in flight into one finished at the same count, and time
        only frees slots. So the room counted now, the free slots of the fullest
        constraint, holds until then. (A neighbour slot past its end that a send may
        take the place of is not counted: that one is looked at in full.) At most
        :data:`_MAX_CREDIT`: a full look is also when the book is pruned.
        """
        room = min(c.max_requests - self._held_by(now, c) for c in self._constraints)
        self._credit = max(0, min(room, _MAX_CREDIT))

    def estimated_wait(self, now: float, ahead: int) -> float:
        """How long a request waits behind ``ahead`` others queued before it (first
        come, first served), at the soonest: for ``max_wait``.

        Per constraint ``(M, I)``: the slots held now free at known times (a request
        in flight no sooner than ``now + I``); the first ``M`` to free (the first few
        only bring the count under ``M`` after a budget shrank) serve the first ``M``
        requests of the queue, and each slot serves again one interval after it was
        taken. So the ``n``-th request of the queue (from 0) goes at
        ``free[n % M] + (n // M) * I`` at the earliest. Round trips only add to that;
        a waiter ahead that gives up (its own ``max_wait``) takes from it.
        """
        blocked = self.blocked(now)
        start = now if blocked is None else now + blocked[1]
        self._prune(now)
        latest = start
        for constraint in self.constraints:
            latest = max(latest, self._nth_free(now, start, constraint, ahead))
        return latest - now

    def _nth_free(self, now: float, start: float, constraint: RateLimit, n: int) -> float:
        budget, interval = constraint.max_requests, constraint.interval
        first = self._own_alive(now, constraint)
        finished = self._finished
        booked = self._booked if constraint is self._server else []
        held = self.in_flight + len(finished) - first + len(booked)
        index = n % budget + max(0, held - budget)  # among the held slots' free times
        free_now = max(0, budget - held)
        if index < free_now:
            at = start
        else:
            expiries = heapq.merge(
                (f + interval for f in itertools.islice(finished, first, None)),
                booked,
                itertools.repeat(now + interval, self.in_flight),
            )
            at = max(start, next(itertools.islice(expiries, index - free_now, None)))
        return at + (n // budget) * interval

    def take(self, now: float) -> Ticket:
        """Record a send that :meth:`wait_time` allowed; returns the ticket for finish()."""
        if self._credit:
            self._credit -= 1
        # Our slots the server could still count, over its interval (while unknown, the
        # longest cap's: more of ours, never a neighbour that is not there).
        held = self._ours_counted(now - self._window) if self._constraints else 0
        booked = self._booked
        if booked and booked[0] <= now and self._probe_at() <= now:
            # Nothing of ours sent within an interval is out to free a neighbour slot
            # past its end: this send takes its place and its reply looks again.
            del booked[0]
        insort(self._out, now)
        self.in_flight += 1
        sends = self._sends
        self._sends = sends + 1
        return Ticket(now, held, sends)

    # -- replies -------------------------------------------------------------------

    def finish(self, now: float, reply: Reply | None, ticket: Ticket | None = None) -> list[str]:
        """Record the end of a send (``ticket`` from :meth:`take`); return what changed."""
        self.in_flight -= 1
        out = self._out
        if out:
            # This send's time (the oldest when the ticket is unknown: conservative).
            at = 0 if ticket is None else bisect_left(out, ticket.sent)
            if at == len(out) or (ticket is not None and out[at] != ticket.sent):
                at = 0
            del out[at]
        insort(self._finished, now, self._live)
        if reply is None:
            return []
        notes = self._learn(now, reply, ticket)
        booked = self._booked
        if ticket is not None and booked and booked[0] <= ticket.sent:
            # A reply to a send made after a neighbour slot's end, that did not renew
            # it, frees it: one slot per reply.
            del booked[0]
        return notes

    def _learn(self, now: float, reply: Reply, ticket: Ticket | None) -> list[str]:
        status, rate = reply.status, reply.rate
        if status == 429:
            insort(self._refused, now)
        self.learned = True
        notes: list[str] = []
        server = self._server
        # Most replies repeat the budget and have daily budget left: what each of
        # those would learn is nothing (no call for them).
        if (
            server is None
            or rate.max_requests != server.max_requests
            or rate.interval != server.interval
        ):
            self._learn_budget(now, reply, notes)
        left = rate.daily_remaining
        daily_spent = False
        if left is not None and left > 0:
            self.daily_until = 0.0
        elif left is not None:
            self._learn_daily_spent(now, reply, notes)
            daily_spent = True
        if ticket is not None and not (daily_spent and status == 429):
            self._estimate_neighbour(now, reply, ticket, notes)
        if status == 429 and not daily_spent:
            fallback = self.server.interval if self.server is not None else self.interval
            pause = reply.retry_after if reply.retry_after is not None else fallback
            until = now + pause
            if until > self.paused_until:
                self._hold_through_pause(now, until)
                self.paused_until = until
                self._credit = 0
                notes.append(f"429: pausing {pause:.1f} s")
        return notes

    def _hold_through_pause(self, now: float, until: float) -> None:
        """A pause stops the clock of every neighbour slot that would end in it: nothing
        of ours is sent to renew it meanwhile, and the neighbour goes on spending.
        """
        self._prune(now)
        start = max(now, self.paused_until)  # a pause running already stopped them
        booked = self._booked
        ending = bisect_right(booked, until)
        if ending:
            pause = until - start
            booked[:ending] = [max(expiry, start) + pause for expiry in booked[:ending]]
            booked.sort()

    def _learn_budget(self, now: float, reply: Reply, notes: list[str]) -> None:
        rate = reply.rate
        max_requests, interval = rate.max_requests, rate.interval
        # Called by _learn only when the numbers differ from the known budget.
        if not max_requests or not interval:
            return
        announced = RateLimit(max_requests, interval)
        self._server = announced
        self._derive()
        notes.append(f"server budget now {announced.max_requests} per {announced.interval:g} s")
        # Own slots follow the new interval by themselves (they are kept as reply
        # times). Neighbour slots booked under a longer window end no later than a
        # new booking would, and no more than the new budget stay.
        latest = now + announced.interval
        booked = [min(expiry, latest) for expiry in self._booked]
        self._booked = booked[-announced.max_requests :]

    def _learn_daily_spent(self, now: float, reply: Reply, notes: list[str]) -> None:
        """A reply says the daily budget is spent: stop until it is expected back."""
        reset_in = reply.daily_reset_in
        if reset_in is None:
            reset_in = seconds_until_daily_reset(time.time(), reply.retry_after)
        if now + reset_in > self.daily_until:
            self.daily_until = now + reset_in
            self._credit = 0
            notes.append(f"daily budget spent: stopping for {reset_in:.0f} s")

    def _estimate_neighbour(
        self, now: float, reply: Reply, ticket: Ticket, notes: list[str]
    ) -> None:
        """The rule of the module docstring: book what the server counted beyond us."""
        server = self._server
        remaining = reply.rate.remaining
        if server is None or remaining is None:
            return
        budget = server.max_requests
        counted = budget - min(remaining, budget)
        later = self._sends - ticket.sends - 1  # ours sent during the round trip
        ours = ticket.held + (reply.status != 429) + later
        theirs = counted - ours
        if theirs <= 0:
            return
        # How many of ``ours`` the server may not have counted: the later sends (not
        # yet arrived, perhaps) and our slots that freed during the round trip (the
        # server may have forgotten them): ``ours`` less what we hold now.
        unsure = later + max(0, ours - self._ours_counted(now - server.interval))
        # One slot of room: a neighbour we crowd out shows only what it got, not what
        # it wants.
        reserve = min(theirs + 1, budget)
        end = now + server.interval + 2 * (now - ticket.sent)
        # Hold ``reserve`` slots until ``end``: move the latest bookings there and add
        # what is missing, so the same neighbour requests are never booked twice. Up
        # to ``unsure`` more slots already booked are kept too (never added).
        booked = self._booked
        moving = min(reserve + unsure, budget, len(booked))
        stay = len(booked) - moving
        extra = max(0, reserve - moving)
        moved = (max(expiry, end) for expiry in booked[stay:])
        self._booked = sorted([*booked[:stay], *moved, *[end] * extra])
        if extra:
            self._credit = 0  # more slots held: look again in full
            notes.append(
                f"server has {remaining} left: a neighbour holds {theirs}; "
                f"holding back {extra} more"
            )
