"""Count what the event loop does: iterations, callbacks run, I/O events per poll.

CPU time on a shared machine is noisy; how many callbacks a page costs is not (nearly:
how many I/O events one poll returns still depends on timing). Every callback is a trip
through the loop's ready queue, so fewer callbacks per page is less work whatever the
clock says. Measured in the client process only.

Counted by a subclass of the selector loop (the default on Linux): ``_run_once`` (one
iteration: one ``epoll_wait`` then the ready callbacks), ``_process_events`` (the I/O
events one poll returned) and the ready queue's ``popleft`` (one callback each). These
are CPython internals (3.8 to 3.13), fine for a benchmark and nowhere else.
"""

from __future__ import annotations

import asyncio
import collections
import selectors
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["LoopCounts", "count_calls", "run_counted"]


@dataclass
class LoopCounts:
    """What one run cost the event loop."""

    iterations: int = 0
    callbacks: int = 0
    events: int = 0
    # Callbacks by kind: task steps, task wake-ups, I/O, timers, other.
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)

    def per(self, pages: int) -> dict[str, float]:
        """Per page: callbacks, loop iterations, and I/O events per poll."""
        return {
            "callbacks": self.callbacks / pages,
            "iterations": self.iterations / pages,
            "events per poll": self.events / self.iterations if self.iterations else 0.0,
            **{kind: count / pages for kind, count in sorted(self.kinds.items())},
        }


def _kind(handle: asyncio.Handle) -> str:
    if isinstance(handle, asyncio.TimerHandle):
        return "timer"
    callback: Any = handle._callback  # type: ignore[attr-defined]
    name = type(callback).__name__
    if name == "TaskStepMethWrapper":  # a task started, or it yielded with nothing to wait
        return "task step"
    qualname = getattr(callback, "__qualname__", "")
    if qualname.endswith("task_wakeup") or qualname.endswith("__wakeup"):
        return "task wake-up"  # a future a task awaited is done
    if "_read_ready" in qualname or "_write" in qualname or "_sock_" in qualname:
        return "I/O"
    return "other"


class _CountingQueue(collections.deque[asyncio.Handle]):
    def __init__(self) -> None:
        super().__init__()
        self.counts = LoopCounts()

    def popleft(self) -> asyncio.Handle:
        handle = super().popleft()
        if not handle._cancelled:
            self.counts.callbacks += 1
            self.counts.kinds[_kind(handle)] += 1
        return handle


class _CountingLoop(asyncio.SelectorEventLoop):
    """Counts into ``counts``: set it to start counting, to a throwaway one to stop."""

    def __init__(self) -> None:
        super().__init__(selectors.DefaultSelector())
        self._queue = _CountingQueue()
        self._ready: collections.deque[asyncio.Handle] = self._queue

    @property
    def counts(self) -> LoopCounts:
        return self._queue.counts

    @counts.setter
    def counts(self, counts: LoopCounts) -> None:
        self._queue.counts = counts

    def _run_once(self) -> None:
        self.counts.iterations += 1
        super()._run_once()  # type: ignore[misc]

    def _process_events(self, event_list: list[Any]) -> None:
        self.counts.events += len(event_list)
        super()._process_events(event_list)  # type: ignore[misc]


def run_counted(run: Callable[[], Awaitable[T]]) -> tuple[T, LoopCounts]:
    """Run ``run()`` on a fresh counting loop; its result and what the loop did.

    Counted from the first line of ``run`` to its return: not the loop's own start and
    shutdown (the step that starts ``run`` is not counted either).
    """
    counts = LoopCounts()

    async def main() -> T:
        loop.counts = counts
        try:
            return await run()
        finally:
            loop.counts = LoopCounts()

    # What asyncio.run does, on our loop (asyncio.Runner's loop_factory is 3.11+).
    loop = _CountingLoop()
    try:
        asyncio.set_event_loop(loop)
        result = loop.run_until_complete(main())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return result, counts


def count_calls(run: Callable[[], Awaitable[T]]) -> tuple[T, collections.Counter[str]]:
    """Run ``run()`` on a fresh loop under a profile hook; its result and the Python
    calls it made, by function (``module:qualname``; C functions as ``C:name``).

    A generator or coroutine resumed counts as a call (its frame is entered again):
    that is what a layer of async generators costs per item. Slow (a hook per call):
    for counting, never for timing.
    """
    import sys

    calls: collections.Counter[str] = collections.Counter()

    def hook(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            module = frame.f_globals.get("__name__", "?")
            calls[f"{module}:{getattr(code, 'co_qualname', code.co_name)}"] += 1
        elif event == "c_call":
            calls[f"C:{getattr(arg, '__qualname__', getattr(arg, '__name__', '?'))}"] += 1

    async def main() -> T:
        sys.setprofile(hook)
        try:
            return await run()
        finally:
            sys.setprofile(None)

    return asyncio.run(main()), calls
