"""Pages to messages: each page's items handed out one at a time.

:class:`MessageStream` is what :meth:`~ghl_async.Client.fan_out` and
:meth:`~ghl_async.Client.iter_location_messages` return. It behaves as an async
generator over the pages' items would (``async for``, ``aclose()``,
``contextlib.aclosing``; closing it closes the pages, which stops their requests), but
hands out an item of a page already in hand from a coroutine that returns at once: an
async generator's ``yield`` costs a ``StopIteration`` per item on the way out, and at a
hundred messages a page that was a tenth of the per-message cost.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterable, Iterator
from itertools import repeat
from types import TracebackType
from typing import Generic, TypeVar

from ghl_async import errors
from ghl_async.models import Message, MessagesPage

__all__ = ["MessageStream", "conversation_items"]

P = TypeVar("P")
T = TypeVar("T")
_E = TypeVar("_E", bound=BaseException)

Item = tuple[str, Message | errors.GHLError]


def conversation_items(item: tuple[str, MessagesPage | errors.GHLError]) -> Iterator[Item]:
    """A fan-out's ``(conversation_id, page)`` as ``(conversation_id, message)`` pairs;
    an error is passed on as it is.
    """
    conversation_id, page = item
    if isinstance(page, MessagesPage):
        return zip(repeat(conversation_id), page.messages)
    return iter(((conversation_id, page),))


class MessageStream(AsyncGenerator[T, None], Generic[P, T]):
    """Every item of ``split(page)`` for each page ``pages`` yields, in order.

    Args:
        pages: the pages; closed when this stream is.
        split: a page's items (called once per page, as it comes).
    """

    __slots__ = ("_done", "_items", "_pages", "_split")

    def __init__(self, pages: AsyncGenerator[P, None], split: Callable[[P], Iterable[T]]):
        self._pages = pages
        self._split = split
        self._items: Iterator[T] = iter(())
        self._done = False

    def __aiter__(self) -> MessageStream[P, T]:
        return self

    async def __anext__(self) -> T:
        """The next item of the page in hand, else the first of the next page."""
        for item in self._items:
            return item
        if self._done:
            raise StopAsyncIteration
        try:
            while True:
                page = await self._pages.__anext__()
                self._items = items = iter(self._split(page))
                for item in items:
                    return item
        except BaseException:
            # The pages ended, failed or were cancelled: so has this stream.
            await self.aclose()
            raise

    async def asend(self, value: None) -> T:
        """As ``__anext__`` (nothing can be sent in)."""
        if value is not None:
            raise TypeError("can't send a value to a message stream")
        return await self.__anext__()

    async def athrow(
        self,
        typ: type[_E] | _E,
        val: object = None,
        tb: TracebackType | None = None,
    ) -> T:
        """Close the stream (its pages too), then raise the exception given."""
        await self.aclose()
        if isinstance(typ, BaseException):
            raise typ.with_traceback(tb) if tb is not None else typ
        if isinstance(val, BaseException):
            raise val
        raise typ() if val is None else typ(val)

    async def aclose(self) -> None:
        """Stop: no more items, and the pages closed (their requests stop)."""
        self._done = True
        self._items = iter(())
        await self._pages.aclose()
