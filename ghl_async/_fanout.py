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

Errors: a :class:`~ghl_async.errors.GHLError` belongs to its conversation (yielded as
its item with ``return_exceptions=True``, else it stops the rest and is raised). Any
other exception is the caller's own (an id source or token provider raising, a bad id)
or a bug: it stops the fan-out and is raised as itself. Workers never let an exception
out of the task group, so the caller never sees an ``ExceptionGroup``.
"""

from __future__ import annotations

import asyncio
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
)
from contextlib import aclosing
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from . import errors

__all__ = ["FanOutOptions", "IdSource", "PageSource", "run_fan_out"]

P = TypeVar("P")

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


class _Ids:
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


class _Run(Generic[P]):
    """The producer side of one fan-out."""

    def __init__(
        self,
        ids: IdSource,
        pages: PageSource[P],
        options: FanOutOptions,
        send: MemoryObjectSendStream[tuple[str, P | errors.GHLError]],
    ) -> None:
        self.ids = _Ids(ids)
        self.pages = pages
        self.options = options
        self.send = send
        self.error: BaseException | None = None

    async def run(self) -> None:
        # Workers return conversation errors rather than raise them, so whatever leaves
        # this task group (a bug, an outside cancellation) is real and propagates.
        async with self.send, anyio.create_task_group() as tg:
            for _ in range(self.options.concurrency):
                tg.start_soon(self._worker, tg.cancel_scope)

    def _stop(self, error: BaseException, scope: anyio.CancelScope) -> None:
        if self.error is None:
            self.error = error
        scope.cancel()

    async def _worker(self, scope: anyio.CancelScope) -> None:
        try:
            while (conversation_id := await self.ids.next()) is not None:
                error = await self._one(conversation_id)
                if error is None:
                    continue
                # A refused token or a spent day fails every conversation alike: stop all.
                if self.options.return_exceptions and not error.stops_fan_out:
                    await self.send.send((conversation_id, error))
                    continue
                self._stop(error, scope)
                return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            # The consumer has gone: nothing is left to deliver, and nobody to tell.
            scope.cancel()
        except Exception as exc:
            self._stop(exc, scope)

    async def _one(self, conversation_id: str) -> errors.GHLError | None:
        try:
            async with aclosing(self.pages(conversation_id)) as pages:
                async for page in pages:
                    item = (conversation_id, page)
                    # Waiting for its next page, a worker must not keep this one alive.
                    del page
                    # The request just awaited was this task's checkpoint: wait (and
                    # checkpoint again) only when the buffer is full.
                    try:
                        self.send.send_nowait(item)
                    except anyio.WouldBlock:
                        await self.send.send(item)
                    del item
        except errors.GHLError as exc:
            # The page source marks its errors with the cursor to resume from; one that
            # did not (a source of another kind) gets at least the id it was reading.
            if exc.conversation_id is None:
                errors.locate(exc, conversation_id, exc.last_message_id)
            return exc
        return None


def _retrieve(task: asyncio.Task[None]) -> None:
    # Whatever the producers' task ends with was raised to the consumer or is moot
    # (the consumer left first): never "Task exception was never retrieved".
    if not task.cancelled():
        task.exception()


async def run_fan_out(
    ids: IdSource,
    pages: PageSource[P],
    options: FanOutOptions,
    spawn: Callable[[Awaitable[None]], asyncio.Task[None]],
    ready: Callable[[], Awaitable[None]] | None = None,
) -> AsyncGenerator[tuple[str, P | errors.GHLError], None]:
    """Yield ``(conversation_id, page or error)`` as pages arrive; see the module doc.

    ``ready`` is awaited first, in the consumer's loop (the client opens itself there).
    """
    if ready is not None:
        await ready()
    send, receive = anyio.create_memory_object_stream[tuple[str, P | errors.GHLError]](
        options.buffer
    )
    run = _Run(ids, pages, options, send)
    task = spawn(run.run())
    task.add_done_callback(_retrieve)
    try:
        with receive:
            while True:
                # Take a waiting item without a trip through the loop; the buffer bounds
                # how many items pass without one, and the consumer's own awaits between
                # items are checkpoints of its own.
                try:
                    item = receive.receive_nowait()
                except anyio.WouldBlock:
                    try:
                        item = await receive.receive()
                    except anyio.EndOfStream:
                        break
                except anyio.EndOfStream:
                    break
                yield item
                del item  # not kept alive while the next one is awaited
        # The stream ended: the producers are done (or failed).
        await task
        if run.error is not None:
            raise run.error
    finally:
        if not task.done():
            task.cancel()
            with anyio.move_on_after(_CLOSE_WAIT, shield=True):
                await asyncio.wait({task})
