"""Pages to messages: a fan-out's ``(id, page)`` items handed out one message at a time.

:class:`MessageStream` is what :meth:`~ghl_async.Client.fan_out` returns. It behaves as
an async generator over the pages' items would (``async for``, ``aclose()``,
``contextlib.aclosing``; closing it closes the pages, which stops the fan-out), but
hands out a message of a page already in hand from a coroutine that returns at once:
an async generator's ``yield`` costs a ``StopIteration`` per item on the way out, and
at a hundred messages a page that was a tenth of the per-message cost.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from types import TracebackType
from typing import TypeVar

from ghl_async import errors
from ghl_async.models import Message, MessagesPage

__all__ = ["MessageStream"]

Item = tuple[str, Message | errors.GHLError]
_E = TypeVar("_E", bound=BaseException)


class MessageStream(AsyncGenerator[Item, None]):
    """``(conversation_id, message)`` for each message of each page ``pages`` yields, in
    order; an item that is an error is passed on as it is.

    Args:
        pages: ``(conversation_id, page or error)`` items; closed when this stream is.
    """

    __slots__ = ("_conversation_id", "_done", "_messages", "_pages")

    def __init__(self, pages: AsyncGenerator[tuple[str, MessagesPage | errors.GHLError], None]):
        self._pages = pages
        self._conversation_id = ""
        self._messages: Iterator[Message] = iter(())
        self._done = False

    def __aiter__(self) -> MessageStream:
        return self

    async def __anext__(self) -> Item:
        """The next message of the page in hand, else the first of the next page."""
        for message in self._messages:
            return self._conversation_id, message
        if self._done:
            raise StopAsyncIteration
        try:
            while True:
                conversation_id, item = await self._pages.__anext__()
                if not isinstance(item, MessagesPage):
                    return conversation_id, item
                self._conversation_id = conversation_id
                self._messages = messages = iter(item.messages)
                for message in messages:
                    return conversation_id, message
        except BaseException:
            # The pages ended, failed or were cancelled: so has this stream.
            await self.aclose()
            raise

    async def asend(self, value: None) -> Item:
        """As ``__anext__`` (nothing can be sent in)."""
        if value is not None:
            raise TypeError("can't send a value to a message stream")
        return await self.__anext__()

    async def athrow(
        self,
        typ: type[_E] | _E,
        val: object = None,
        tb: TracebackType | None = None,
    ) -> Item:
        """Close the stream (its pages too), then raise the exception given."""
        await self.aclose()
        if isinstance(typ, BaseException):
            raise typ.with_traceback(tb) if tb is not None else typ
        if isinstance(val, BaseException):
            raise val
        raise typ() if val is None else typ(val)

    async def aclose(self) -> None:
        """Stop: no more messages, and the pages closed (their fan-out stops)."""
        self._done = True
        self._messages = iter(())
        await self._pages.aclose()
