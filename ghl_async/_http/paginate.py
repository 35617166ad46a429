"""The one paging loop: every cursor-paged endpoint runs through :func:`paginate`.

An endpoint brings its URL, first parameters, decoder and a pure "request + page ->
next request or None" function from :mod:`ghl_async._params`; this loop does the
rest, the same way for all: the one repeat guard (a cursor seen twice is a
:class:`~ghl_async.errors.PaginationError`, never a silent stop or an endless loop),
the next cursor checked before its page is handed out, and every error marked with
the conversation and the cursor to resume from.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import TypeVar

from ghl_async import errors
from ghl_async._http.engine import Engine
from ghl_async._params import cursor_of

__all__ = ["hand_over", "paginate"]

P = TypeVar("P")


async def paginate(
    engine: Engine,
    url: str,
    params: Mapping[str, str],
    decode: Callable[[bytes], P],
    next_params: Callable[[Mapping[str, str], P], Mapping[str, str] | None],
    *,
    what: str,
    conversation_id: str | None = None,
    check_cursor: Callable[[str], object] | None = None,
    on_page: Callable[[P], None] | None = None,
    ready: Callable[[], Awaitable[None]] | None = None,
) -> AsyncGenerator[P, None]:
    """Every page from ``params`` on, following ``next_params`` until it says ``None``.

    Args:
        engine: sends each request (retries, limiter, token).
        url: the endpoint.
        params: the first request's query (its cursor, if any, is where to start).
        decode: bytes to one page.
        next_params: the pure "request + page -> next request or None" function.
        what: names the listing in log lines.
        conversation_id: given, every error is marked with it and with the cursor of
            the request that failed (every page before it was handed out: resuming
            there loses nothing and repeats nothing).
        check_cursor: checks the server's next cursor before its page is handed out
            (raise ``ValueError``/``TypeError``: the reply becomes a ``DecodeError``).
        on_page: called with each page as it arrives (the client's counters).
        ready: awaited before the first request, in the consumer's loop (the client
            opens itself there).

    Raises:
        ghl_async.errors.PaginationError: the server repeated a cursor.
    """
    if ready is not None:
        await ready()
    cursor = cursor_of(params)
    seen: set[str] = set() if cursor is None else {cursor}
    current: Mapping[str, str] | None = params
    while current is not None:
        try:
            page = await engine.get(url, current, decode, what=what)
        except errors.GHLError as exc:
            _located(exc, conversation_id, cursor)
            raise
        if on_page is not None:
            on_page(page)
        following = next_params(current, page)
        after: str | None = None
        if following is not None:
            # Checked before the page goes out, so that on an error ``cursor`` is still
            # exactly where to resume: nothing after it handed out.
            after = cursor_of(following)
            if after is None or after in seen:
                raise _located(
                    errors.PaginationError(
                        f"the server repeated the cursor {after!r}: stopping instead of looping"
                    ),
                    conversation_id,
                    cursor,
                )
            if check_cursor is not None:
                try:
                    check_cursor(after)
                except (TypeError, ValueError) as exc:
                    # Not a cursor we could send back: the reply is not the documented JSON.
                    raise _located(errors.DecodeError(str(exc)), conversation_id, cursor) from exc
            seen.add(after)
        box = [page]
        del page
        # hand_over(box), inline (once a page): suspended until the consumer wants
        # more, the frame keeps no page.
        yield box.pop()
        current, cursor = following, after


def hand_over(box: list[P]) -> P:
    """Take the one item out of ``box``: how a generator yields what it must not keep.

    A generator suspended at ``yield page`` keeps ``page`` in its frame until it is
    resumed, and it stays suspended while its consumer works on the page and after (a
    fan-out's worker waiting for room in the stream, or for its next request): the
    page would outlive the consumer's use of it, one more page per generator. So a
    page goes out from a one-item list, not from a local::

        box = [page]
        del page
        yield hand_over(box)

    Once yielded, the generator holds no reference to it: the page is freed as soon as
    the consumer drops it.
    """
    return box.pop()


def _located(
    error: errors.GHLError, conversation_id: str | None, cursor: str | None
) -> errors.GHLError:
    if conversation_id is not None:
        errors.locate(error, conversation_id, cursor)
    return error
