"""Fan-out: many conversations read concurrently, their pages handed to one consumer.

Generic in the page type: any ``id -> async generator of pages`` source fans out the
same way (a conversation's messages, a contact's messages, an export's pages).

The producers run in a task group inside a task of their own (tracked by the client),
never inside the consumer's async generator: the generator only reads a bounded memory
stream and, when it is closed for any reason (loop finished, ``break``, an exception in
the loop body, the consuming task cancelled), cancels that task and waits for it. So no
``yield`` ever happens inside a task group or cancel scope, and breaking out early stops
every in-flight request at once.

The stream's small buffer is the backpressure: a slow consumer slows fetching, and
memory holds at most ``buffer + concurrency`` pages whatever the total.

The stream is :class:`Handoff`, not an anyio memory stream: the same bounded buffer and
the same exceptions, with no forced trip through the event loop on either side. A page
arriving for an idle consumer wakes it once; pages arriving while it waits to run join
the buffer and are taken on that one wake-up. (anyio's ``receive`` and ``send`` each
yield to the loop first, a checkpoint per page the fan-out does not need: every page
it hands over was just awaited from the network.)

Errors: a :class:`~ghl_async.errors.GHLError` belongs to its conversation (yielded as
its item with ``return_exceptions=True``, else it stops the rest and is raised). Any
other exception is the caller's own (an id source or token provider raising, a bad id)
or a bug: it stops the fan-out and is raised as itself. Workers never let an exception
out of the task group, so the caller never sees an ``ExceptionGroup``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
)
from contextlib import aclosing
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

import anyio

from ghl_async import errors

__all__ = [
    "FanOutOptions",
    "Handoff",
    "IdSource",
    "Ids",
    "PageSource",
    "Producers",
    "Sink",
    "Workers",
    "deliver",
    "run_fan_out",
]

P = TypeVar("P")
T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)

IdSource = Iterable[str] | AsyncIterable[str]
#: Where one id's pages come from (an async generator, closed when the fan-out stops).
PageSource = Callable[[str], AsyncGenerator[P, None]]

# How long closing a fan-out waits for its producers to wind down.
_CLOSE_WAIT = 1.0


@dataclass(frozen=True, slots=True)
class FanOutOptions:
    """How a fan-out runs."""

    concurrency: int
    return_exceptions: bool
    buffer: int


class Ids:
    """Hands out ids one at a time from a sync or async iterable, lazily."""

    def __init__(self, ids: IdSource) -> None:
        self._sync: Iterator[str] | None = None
        self._async: AsyncIterator[str] | None = None
        if isinstance(ids, AsyncIterable):
            self._async = ids.__aiter__()
        else:
            self._sync = iter(ids)
        self._lock = anyio.Lock()
        self._done = False

    async def next(self) -> str | None:
        if self._sync is not None:
            # A plain iterator is never awaited inside, so no other task can interleave
            # with this call: no lock (and no trip through the loop) needed.
            if self._done:
                return None
            try:
                return next(self._sync)
            except StopIteration:
                self._done = True
                return None
        async with self._lock:
            if self._done:
                return None
            try:
                assert self._async is not None
                return await self._async.__anext__()
            except StopAsyncIteration:
                self._done = True
                return None


class Sink(Protocol[T_contra]):
    """Where producers put items: a :class:`Handoff` (or an anyio send stream)."""

    def send_nowait(self, item: T_contra) -> None: ...

    async def send(self, item: T_contra) -> None: ...

    async def __aenter__(self) -> object: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None: ...


class Handoff(Generic[T]):
    """A bounded buffer between many producer tasks and one consumer, in one event loop.

    The sending side mirrors an anyio memory stream's: ``send_nowait`` raises
    ``anyio.WouldBlock`` when full and ``anyio.BrokenResourceError`` once the consumer
    has gone; ``send`` waits for room; leaving ``async with`` marks the producers done.
    The receiving side: ``receive_nowait`` raises ``anyio.WouldBlock`` or
    ``anyio.EndOfStream``; ``receive`` waits on one future; ``close`` is the consumer
    leaving. Nothing here yields to the loop except to wait.

    A producer waiting for room parks its item (as anyio does): the consumer moves it
    into the buffer when it takes one out, so waiting producers are served in order and
    memory holds at most ``capacity`` items plus one per waiting producer.
    """

    __slots__ = ("_capacity", "_closed", "_ended", "_items", "_parked", "_waiter")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: deque[T] = deque()
        # Producers waiting for room: their future (set True once the item is in the
        # buffer, False if the consumer left) and the item.
        self._parked: deque[tuple[asyncio.Future[bool], T]] = deque()
        self._waiter: asyncio.Future[None] | None = None  # the consumer, waiting
        self._closed = False  # the consumer has gone
        self._ended = False  # the producers are done

    # -- the producers' side ---------------------------------------------------------

    def send_nowait(self, item: T) -> None:
        """Put ``item`` in the buffer, or raise ``WouldBlock`` when it is full."""
        if self._closed:
            raise anyio.BrokenResourceError
        if len(self._items) >= self._capacity:
            raise anyio.WouldBlock
        self._items.append(item)
        self._wake()

    async def send(self, item: T) -> None:
        """Put ``item`` in the buffer, waiting for room."""
        try:
            self.send_nowait(item)
            return
        except anyio.WouldBlock:
            pass
        entry = (asyncio.get_running_loop().create_future(), item)
        self._parked.append(entry)
        self._wake()  # a consumer waiting on a buffer of size 0 takes it from here
        try:
            delivered = await entry[0]
        finally:
            if entry in self._parked:  # cancelled while waiting: the item stays ours
                self._parked.remove(entry)
        if not delivered:
            raise anyio.BrokenResourceError

    async def __aenter__(self) -> Handoff[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._ended = True
        self._wake()

    # -- the consumer's side ---------------------------------------------------------

    def receive_nowait(self) -> T:
        """The next item; ``WouldBlock`` if none yet, ``EndOfStream`` if none will come."""
        items = self._items
        if items:
            item = items.popleft()
            if self._parked:
                waiting = self._unpark()
                if waiting:
                    items.append(waiting[0])
            return item
        if self._parked:  # a buffer of size 0: straight from a waiting producer
            waiting = self._unpark()
            if waiting:
                return waiting[0]
        if self._ended:
            raise anyio.EndOfStream
        raise anyio.WouldBlock

    def _unpark(self) -> tuple[T] | None:
        # The first waiting producer's item, telling it so; one cancelled meanwhile
        # (its future cancelled, its own cleanup not run yet) keeps its item.
        parked = self._parked
        while parked:
            future, item = parked.popleft()
            if not future.done():
                future.set_result(True)
                return (item,)
        return None

    async def receive(self) -> T:
        """The next item, waiting for one (``EndOfStream`` when none will come)."""
        while True:
            try:
                return self.receive_nowait()
            except anyio.WouldBlock:
                pass
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def close(self) -> None:
        """The consumer has gone: producers get ``BrokenResourceError`` from now on."""
        self._closed = True
        self._items.clear()
        parked, self._parked = self._parked, deque()
        for future, _ in parked:
            if not future.done():
                future.set_result(False)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Workers(Generic[T]):
    """What the producer side of every fan-out shares: its stream, the error that
    stopped it, its workers' task group, and a conversation's pages sent into the stream.

    Each worker runs a loop of its own (:meth:`_start`); the loop returns the errors of
    its conversations rather than raise them, so whatever leaves the task group (a bug,
    an outside cancellation) is real and propagates.
    """

    __slots__ = ("error", "send")

    def __init__(self, send: Sink[T]) -> None:
        self.send = send
        self.error: BaseException | None = None

    async def _start(
        self, workers: int, loop: Callable[[anyio.CancelScope], Awaitable[None]]
    ) -> None:
        """Run ``workers`` copies of ``loop`` until all end, then leave the stream."""
        async with self.send, anyio.create_task_group() as tg:
            scope = tg.cancel_scope
            for _ in range(workers):
                tg.start_soon(self._guarded, partial(loop, scope), scope)

    async def _guarded(
        self, work: Callable[[], Awaitable[None]], scope: anyio.CancelScope
    ) -> None:
        """Run one worker's loop; what it raises stops every worker under ``scope``."""
        try:
            await work()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            # The consumer has gone: nothing is left to deliver, and nobody to tell.
            scope.cancel()
        except Exception as exc:
            self._stop(exc, scope)

    def _stop(self, error: BaseException, scope: anyio.CancelScope) -> None:
        if self.error is None:
            self.error = error
        scope.cancel()

    async def _put(self, item: T) -> None:
        # The request just awaited was this task's checkpoint: wait (and checkpoint
        # again) only when the buffer is full.
        try:
            self.send.send_nowait(item)
        except anyio.WouldBlock:
            await self.send.send(item)

    async def _send_pages(
        self, head: tuple[str, ...], conversation_id: str, pages_of: PageSource[Any]
    ) -> errors.GHLError | None:
        """Send each page of ``conversation_id`` as the item ``(*head, page)``.

        Returns the conversation's error, if one ended it.
        """
        send: Sink[Any] = self.send
        try:
            async with aclosing(pages_of(conversation_id)) as pages:
                async for page in pages:
                    item = head + (page,)  # noqa: RUF005 - faster than (*head, page)
                    # Waiting for its next page, a worker must not keep this one alive.
                    del page
                    # As _put, inline: a page waiting for room is held by this frame only.
                    try:
                        send.send_nowait(item)
                    except anyio.WouldBlock:
                        await send.send(item)
                    del item
        except errors.GHLError as exc:
            # The page source marks its errors with the cursor to resume from; one that
            # did not (a source of another kind) gets at least the id it was reading.
            if exc.conversation_id is None:
                errors.locate(exc, conversation_id, exc.last_message_id)
            return exc
        return None


class _Run(Workers[tuple[str, P | errors.GHLError]]):
    """The producer side of one fan-out of conversations."""

    __slots__ = ("ids", "options", "pages")

    def __init__(
        self,
        ids: IdSource,
        pages: PageSource[P],
        options: FanOutOptions,
        send: Sink[tuple[str, P | errors.GHLError]],
    ) -> None:
        super().__init__(send)
        self.ids = Ids(ids)
        self.pages = pages
        self.options = options

    async def run(self) -> None:
        await self._start(self.options.concurrency, self._worker)

    async def _worker(self, scope: anyio.CancelScope) -> None:
        while (conversation_id := await self.ids.next()) is not None:
            error = await self._send_pages((conversation_id,), conversation_id, self.pages)
            if error is None:
                continue
            # A refused token or a spent day fails every conversation alike: stop all.
            if self.options.return_exceptions and not error.stops_fan_out:
                await self.send.send((conversation_id, error))
                continue
            self._stop(error, scope)
            return


def _retrieve(task: asyncio.Task[None]) -> None:
    # Whatever the producers' task ends with was raised to the consumer or is moot
    # (the consumer left first): never "Task exception was never retrieved".
    if not task.cancelled():
        task.exception()


class Producers(Protocol):
    """The producer side of a fan-out, as :func:`deliver` runs it."""

    @property
    def error(self) -> BaseException | None:
        """What stopped the producers, to raise to the consumer (``None``: nothing)."""

    def run(self) -> Coroutine[object, object, None]:
        """Produce every item into the stream, then leave it (``async with``)."""


def run_fan_out(
    ids: IdSource,
    pages: PageSource[P],
    options: FanOutOptions,
    spawn: Callable[[Awaitable[None]], asyncio.Task[None]],
    ready: Callable[[], Awaitable[None]] | None = None,
) -> AsyncGenerator[tuple[str, P | errors.GHLError], None]:
    """Yield ``(conversation_id, page or error)`` as pages arrive; see the module doc.

    ``ready`` is awaited first, in the consumer's loop (the client opens itself there).
    """

    def producers(stream: Handoff[tuple[str, P | errors.GHLError]]) -> _Run[P]:
        return _Run(ids, pages, options, stream)

    return deliver(options.buffer, producers, spawn, ready)


async def deliver(
    buffer: int,
    producers: Callable[[Handoff[T]], Producers],
    spawn: Callable[[Awaitable[None]], asyncio.Task[None]],
    ready: Callable[[], Awaitable[None]] | None = None,
) -> AsyncGenerator[T, None]:
    """The consumer's side of any fan-out: yield what ``producers`` put in the stream.

    ``ready`` is awaited first; then a :class:`Handoff` of ``buffer`` items is made,
    ``producers(stream)`` run in a task of their own (``spawn``), and their items yielded
    as they come. Closed for any reason (the loop finished, ``break``, an exception in
    the loop body, the consuming task cancelled), it closes the stream, cancels that task
    and waits for it (at most a second); an error the producers recorded is raised.
    """
    if ready is not None:
        await ready()
    stream = Handoff[T](buffer)
    run = producers(stream)
    task = spawn(run.run())
    task.add_done_callback(_retrieve)
    try:
        try:
            while True:
                # Take a waiting item without a trip through the loop; the buffer bounds
                # how many items pass without one, and the consumer's own awaits between
                # items are checkpoints of its own.
                try:
                    item = stream.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        item = await stream.receive()
                    except anyio.EndOfStream:
                        break
                except anyio.EndOfStream:
                    break
                yield item
                del item  # not kept alive while the next one is awaited
        finally:
            stream.close()
        # The stream ended: the producers are done (or failed).
        await task
        if run.error is not None:
            raise run.error
    finally:
        if not task.done():
            task.cancel()
            with anyio.move_on_after(_CLOSE_WAIT, shield=True):
                await asyncio.wait({task})
