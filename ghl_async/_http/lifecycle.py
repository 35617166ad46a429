"""Open, close and reopen under a new event loop: the life cycle Client and Locations share.

Both own a :class:`~ghl_async._http.transport.Transport` and state that belongs to one
event loop (a limiter, concurrency slots, locks), open on first use, run their fan-outs'
producers in tasks of their own, and stop those tasks before closing. :class:`Lifecycle`
does that once; each owner says only what it rebinds to a new loop (:meth:`_bind`) and
what else it closes (:meth:`_close_parts`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from types import TracebackType
from typing import ClassVar, TypeVar

import anyio

from ghl_async._http.transport import Transport

__all__ = ["Lifecycle"]

_L = TypeVar("_L", bound="Lifecycle")


class Lifecycle:
    """The open/close/reopen life of an object that owns a transport and spawns tasks.

    ``open`` binds it to the running loop (once per loop: :meth:`_bind`) and opens the
    transport; ``aclose`` cancels the tasks it spawned, waits for them, closes its parts
    and the transport; ``async with`` does both. Methods that send call :meth:`_ready`
    first: it opens on first use, or again under a new event loop (a second
    ``asyncio.run()``), and refuses once closed. ``open`` again after ``aclose`` is
    allowed.
    """

    #: The :class:`RuntimeError` message of a use after ``aclose``.
    _closed_message: ClassVar[str] = "closed: open it again or make a new one"

    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        # The producers of running fan-outs, cancelled by aclose().
        self._tasks: set[asyncio.Task[None]] = set()
        # The event loop the loop-bound state belongs to (None: never opened).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def __aenter__(self: _L) -> _L:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Open the HTTP session (bound to the running loop); ``async with`` does this for you.

        Used under another event loop than before (a second ``asyncio.run()``), it opens
        again for the new loop: the session, the limiter and the concurrency slots
        belong to a loop.
        """
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            moved = self._loop is not None
            if moved:
                self._transport.abandon()  # its session belongs to the old loop
            self._bind(loop, moved=moved)
            self._loop = loop
        await self._transport.open()
        self._closed = False

    async def aclose(self) -> None:
        """Stop running fan-outs and close the session (if it was opened here)."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            with anyio.CancelScope(shield=True):
                await asyncio.wait(tasks)
        await self._close_parts()
        await self._transport.aclose()

    def _bind(self, loop: asyncio.AbstractEventLoop, *, moved: bool) -> None:
        """Make the state that belongs to ``loop``; ``moved``: it was bound to another."""

    async def _close_parts(self) -> None:
        """Close what else this owns, after its tasks and before its transport."""

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(self._closed_message)

    async def _ready(self) -> None:
        """Open on first use (or under a new event loop, or a shut transport); raise if closed."""
        self._check_open()
        if self._loop is not asyncio.get_running_loop() or not self._transport.is_open:
            await self.open()

    def _spawn(self, work: Awaitable[None]) -> asyncio.Task[None]:
        """Run ``work`` in a task of its own, cancelled by :meth:`aclose` if still running."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
