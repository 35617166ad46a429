"""Fan-out: many conversations read concurrently, their pages handed to one consumer.

The producers run in a task group inside a task of their own (tracked by the client),
never inside the consumer's async generator: the generator only reads a bounded memory
stream and, when it is closed for any reason (loop finished, ``break``, an exception in
the loop body, the consuming task cancelled), cancels that task and waits for it. So no
``yield`` ever happens inside a task group or cancel scope, and breaking out early stops
every in-flight request at once.

The stream's small buffer is the backpressure: a slow consumer slows fetching, and
memory holds at most ``buffer + concurrency`` pages whatever the total.
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

import anyio
from anyio.abc import ObjectSendStream

from . import errors
from .models import MessagesPage

__all__ = ["FanOutOptions", "IdSource", "PageSource", "run_fan_out"]

IdSource = Iterable[str] | AsyncIterable[str]
PageSource = Callable[[str], AsyncGenerator[MessagesPage, None]]
# What the stream carries: a page, or a conversation's final error.
Item = tuple[str, MessagesPage | BaseException]

_FATAL = (errors.AuthenticationError, errors.DailyLimitExceeded)

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
        async with self._lock:
            if self._done:
                return None
            try:
                if self._async is not None:
                    return await self._async.__anext__()
                assert self._sync is not None
                return next(self._sync)
            except (StopIteration, StopAsyncIteration):
                self._done = True
                return None


class _Run:
    """The producer side of one fan-out."""

    def __init__(
        self,
        ids: IdSource,
        pages: PageSource,
        options: FanOutOptions,
        send: ObjectSendStream[Item],
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

    async def _worker(self, scope: anyio.CancelScope) -> None:
        while (conversation_id := await self.ids.next()) is not None:
            error = await self._one(conversation_id)
            if error is None:
                continue
            # A refused token or a spent day fails every conversation alike: stop all.
            if self.options.return_exceptions and not isinstance(error, _FATAL):
                await self.send.send((conversation_id, error))
                continue
            if self.error is None:
                self.error = error
            scope.cancel()
            return

    async def _one(self, conversation_id: str) -> BaseException | None:
        last_cursor: str | None = None
        try:
            async with aclosing(self.pages(conversation_id)) as pages:
                async for page in pages:
                    await self.send.send((conversation_id, page))
                    last_cursor = page.last_message_id or last_cursor
        except (errors.GHLError, ValueError, TypeError) as exc:
            if isinstance(exc, errors.GHLError):
                exc.conversation_id = conversation_id
                exc.last_message_id = last_cursor
            return exc
        return None


async def run_fan_out(
    ids: IdSource,
    pages: PageSource,
    options: FanOutOptions,
    spawn: Callable[[Awaitable[None]], asyncio.Task[None]],
) -> AsyncGenerator[Item, None]:
    """Yield ``(conversation_id, page or error)`` as pages arrive; see the module doc."""
    send, receive = anyio.create_memory_object_stream[Item](options.buffer)
    run = _Run(ids, pages, options, send)
    task = spawn(run.run())
    try:
        with receive:
            async for item in receive:
                yield item
        # The stream ended: the producers are done (or failed).
        await task
        if run.error is not None:
            raise run.error
    finally:
        if not task.done():
            task.cancel()
            with anyio.move_on_after(_CLOSE_WAIT, shield=True):
                await asyncio.wait({task})
        if task.done() and not task.cancelled():
            # Mark the task's exception as retrieved; it was raised above or is moot.
            task.exception()
