"""How many page requests an agency's fan-outs run at once: as many as the process can use.

A location needs a few requests at once to spend its budget (rate x round trip), and K
locations K times that. But a process has one event loop: past what its CPU handles,
more requests at once only queue inside it, each keeping its coroutines, futures and
reply objects alive long enough for the garbage collector to promote them and walk them
again and again (300 locations with 256 requests at once: 16% of the CPU in the
collector, against 8% with 64).

So the cap follows the event loop's own thread. While that thread is busy nearly all
the time (CPU-bound: more requests cannot go faster), the cap shrinks; while it has
time to spare and requests are waiting for a slot, the cap grows back, up to its
ceiling. Over a slow network (live HighLevel answers in 100-300 ms) the loop has time
to spare and the cap stays at its ceiling; on a fast one it settles about where the
loop is just kept busy. The decision is :func:`next_in_flight`, a pure function; the
measuring is done by :class:`InFlight` on the requests' own path, without a task.

"Busy" is the time the thread was running or ready to run and waiting for a CPU
(Linux's ``/proc/thread-self/schedstat``), so that a loop starved by other processes on
a shared machine counts as busy as it is: either way its callbacks queue. Elsewhere it
is the thread's CPU time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from ghl_async._http.engine import Slots

__all__ = ["InFlight", "busy_time", "next_in_flight"]

#: The loop's thread busy this share of a period or more: CPU-bound, shrink.
BUSY: Final = 0.9
#: Busy less than this with requests waiting for a slot: room to grow.
IDLE: Final = 0.8
#: How often the cap is reconsidered (seconds of wall time).
PERIOD: Final = 0.1
#: A period longer than this (no request for a while) is not judged.
STALE: Final = 4 * PERIOD
#: The cap never shrinks below this (or the ceiling, if lower).
FLOOR: Final = 32


_SCHEDSTAT: Final = "/proc/thread-self/schedstat"


def _schedstat_seconds() -> float:
    with open(_SCHEDSTAT, "rb") as handle:
        running, waiting = handle.read().split()[:2]
    return (int(running) + int(waiting)) / 1e9


def _has_schedstat() -> bool:
    try:
        _schedstat_seconds()
    except (OSError, ValueError):
        return False
    return True


#: Seconds the calling thread has been running or ready to run (Linux), else its CPU time.
busy_time: Callable[[], float] = _schedstat_seconds if _has_schedstat() else time.thread_time


def next_in_flight(limit: int, busy: float, waiting: bool, *, floor: int, ceiling: int) -> int:
    """The cap on page requests at once after a period with the loop ``busy`` (0 to 1).

    CPU-bound (``busy`` >= :data:`BUSY`): an eighth fewer. Time to spare (below
    :data:`IDLE`) and requests ``waiting`` for a slot: a sixteenth more. Otherwise as it
    is. Always within ``[min(floor, ceiling), ceiling]``.

    >>> next_in_flight(256, 0.97, True, floor=16, ceiling=256)
    224
    >>> next_in_flight(64, 0.5, True, floor=16, ceiling=256)
    68
    >>> next_in_flight(64, 0.5, False, floor=16, ceiling=256)
    64
    """
    low = min(floor, ceiling)
    if busy >= BUSY:
        limit -= max(1, limit // 8)
    elif busy < IDLE and waiting:
        limit += max(1, limit // 16)
    return max(low, min(ceiling, limit))


class InFlight:
    """The shared cap on page requests at once, resized by :func:`next_in_flight`.

    A worker calls :meth:`take` before it asks for its next page and :meth:`give` once
    the page (or the error) is in. Each worker holds one slot at a time.
    """

    __slots__ = ("_cpu", "_cpu_at", "_wall", "_wall_at", "ceiling", "floor", "limiter", "peak")

    def __init__(
        self,
        ceiling: int,
        floor: int = FLOOR,
        *,
        wall: Callable[[], float] = time.perf_counter,
        cpu: Callable[[], float] = busy_time,
    ) -> None:
        self.ceiling = ceiling
        self.floor = floor
        self.limiter = Slots(ceiling)
        self.peak = 0
        """The most page requests at once so far."""
        # The clocks: wall time, and the busy time of the thread running the event loop.
        self._wall = wall
        self._cpu = cpu
        self._wall_at = wall()
        self._cpu_at = cpu()

    @property
    def limit(self) -> int:
        """The cap now."""
        return int(self.limiter.total_tokens)

    @property
    def held(self) -> int:
        """Page requests running now."""
        return self.limiter.borrowed_tokens

    def restart(self) -> None:
        """Start a period now (a fan-out begins: what came before says nothing of it)."""
        self._wall_at = self._wall()
        self._cpu_at = self._cpu()

    async def take(self) -> None:
        """Wait for a slot (FIFO); reconsider the cap once a period."""
        limiter = self.limiter
        wall = self._wall()
        if wall - self._wall_at >= PERIOD:
            self._reconsider(wall)
        # A free slot needs no trip through the loop: the request is the checkpoint.
        await limiter.acquire()
        held = limiter.borrowed_tokens
        if held > self.peak:
            self.peak = held

    def give(self) -> None:
        """Give the calling task's slot back."""
        self.limiter.release()

    def _reconsider(self, wall: float) -> None:
        cpu = self._cpu()
        elapsed = wall - self._wall_at
        busy = (cpu - self._cpu_at) / elapsed
        self._wall_at, self._cpu_at = wall, cpu
        if elapsed > STALE:
            # No page was asked for in a long while (the pool idle, or busy with work of
            # another kind): that period says nothing about requests at once.
            return
        limiter = self.limiter
        limiter.resize(
            next_in_flight(
                self.limit, busy, limiter.waiting > 0, floor=self.floor, ceiling=self.ceiling
            )
        )
