"""The ways a user reads many conversations, each driven the way its users must, and the
floors under them: the least aiohttp (or a bare socket) can do for the same pages.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import aiolimiter

from ghl_async import Client
from ghl_async.models import decode_page

from ._harness import FAKE_TOKEN


async def ghl_async_pages(url: str, ids: list[str], concurrency: int, **client: Any) -> int:
    async with Client(FAKE_TOKEN, base_url=url, max_concurrency=concurrency, **client) as c:
        pages = 0
        async for _ in c.fan_out_pages(ids):
            pages += 1
        return pages


async def ghl_async_messages(url: str, ids: list[str], concurrency: int, **client: Any) -> int:
    async with Client(FAKE_TOKEN, base_url=url, max_concurrency=concurrency, **client) as c:
        messages = 0
        async for _ in c.fan_out(ids):
            messages += 1
        return messages


class Counts:
    def __init__(self) -> None:
        self.pages = 0
        self.throttled = 0
        self.failed: str | None = None


async def handwritten(
    url: str,
    ids: list[str],
    concurrency: int,
    limiter: aiolimiter.AsyncLimiter | None = None,
    typed: bool = False,
) -> Counts:
    """One aiohttp session, a semaphore, json.loads, dicts; sleeps Retry-After on a 429.

    ``typed=True`` decodes with ghl_async's msgspec decoder instead: the floor that
    transport plus a typed decode cost, with no limiter, retries or validation.
    """
    counts = Counts()
    headers = {"Authorization": f"Bearer {FAKE_TOKEN}", "Version": "2021-04-15"}
    semaphore = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one(conversation_id: str) -> None:
            cursor: str | None = None
            while True:
                params = {"limit": "100"}
                if cursor:
                    params["lastMessageId"] = cursor
                async with semaphore:
                    if limiter is not None:
                        await limiter.acquire()
                    async with session.get(
                        f"{url}/conversations/{conversation_id}/messages", params=params
                    ) as response:
                        body = await response.read()
                        status = response.status
                        retry_after = response.headers.get("Retry-After")
                if status == 429:
                    counts.throttled += 1
                    await asyncio.sleep(float(retry_after or 1))
                    continue
                counts.pages += 1
                if typed:
                    typed_page = decode_page(body)
                    if typed_page.is_last:
                        return
                    cursor = typed_page.last_message_id
                    continue
                page = json.loads(body)["messages"]
                if not page["nextPage"] or not page["messages"]:
                    return
                cursor = page["lastMessageId"]

        await asyncio.gather(*(one(c) for c in ids))
    return counts


async def workers(url: str, ids: list[str], concurrency: int) -> int:
    """The floor for aiohttp: ``concurrency`` worker tasks looping over the conversations.

    One aiohttp session, a typed msgspec decode, no semaphore (the workers are the bound),
    no limiter, retries or validation: the least any aiohttp client does per page.
    """
    headers = {"Authorization": f"Bearer {FAKE_TOKEN}", "Version": "2021-04-15"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    pending = iter(ids)  # shared: each worker takes the next id when it is free
    pages = 0
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def worker() -> None:
            nonlocal pages
            for conversation_id in pending:
                params = {"limit": "100"}
                while True:
                    async with session.get(
                        f"{url}/conversations/{conversation_id}/messages", params=params
                    ) as response:
                        body = await response.read()
                    pages += 1
                    page = decode_page(body)
                    if page.is_last or not page.last_message_id:
                        break
                    params = {"limit": "100", "lastMessageId": page.last_message_id}

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return pages


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time, Content-Length bodies."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.head_end = -1
        self.length = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if self.head_end < 0:
            self.head_end = buffer.find(b"\r\n\r\n")
            if self.head_end < 0:
                return
            head = bytes(buffer[: self.head_end]).lower()
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                self._fail(ConnectionError("reply without Content-Length"))
                return
            stop = head.find(b"\r\n", at + 2)
            self.length = int(head[at + 17 : stop if stop > 0 else len(head)])
        end = self.head_end + 4 + self.length
        if len(buffer) >= end and self.waiter is not None:
            status = int(buffer[9:12])
            body = bytes(buffer[self.head_end + 4 : end])
            del buffer[:end]
            self.head_end = -1
            waiter, self.waiter = self.waiter, None
            waiter.set_result((status, body))

    def _fail(self, error: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError("connection closed"))

    async def get(self, request: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


async def raw_protocol(url: str, ids: list[str], concurrency: int) -> int:
    """The physical floor: worker tasks on bare asyncio protocols plus a msgspec decode.

    No HTTP library at all (a request is one formatted bytes string, a reply is cut at
    its Content-Length): what reading the pages costs in asyncio with the same decode.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = (
        f"Host: {parts.netloc}\r\nAuthorization: Bearer {FAKE_TOKEN}\r\n"
        "Version: 2021-04-15\r\nAccept: application/json\r\n\r\n"
    )
    loop = asyncio.get_running_loop()
    pending = iter(ids)
    pages = 0

    async def worker() -> None:
        nonlocal pages
        transport, connection = await loop.create_connection(_Connection, host, port)
        try:
            for conversation_id in pending:
                query = "limit=100"
                while True:
                    request = (
                        f"GET /conversations/{conversation_id}/messages?{query} HTTP/1.1\r\n"
                        + head
                    ).encode()
                    status, body = await connection.get(request)
                    if status != 200:
                        raise ConnectionError(f"status {status}")
                    pages += 1
                    page = decode_page(body)
                    if page.is_last or not page.last_message_id:
                        break
                    query = f"limit=100&lastMessageId={page.last_message_id}"
        finally:
            transport.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return pages


async def official_sdk(url: str, ids: list[str], concurrency: int) -> Counts:
    """HighLevel's SDK: a hand-written paging loop and gather with a semaphore."""
    # The SDK (the bench extra) ships no type information: HighLevel is untyped.
    from highlevel import HighLevel  # type: ignore[import-not-found, import-untyped, unused-ignore]

    class LocalHighLevel(HighLevel):  # type: ignore[misc]  # subclasses the untyped class
        BASE_URL = url

    counts = Counts()
    ghl = LocalHighLevel(private_integration_token=FAKE_TOKEN)
    semaphore = asyncio.Semaphore(concurrency)

    async def one(conversation_id: str) -> None:
        cursor: str | None = None
        while True:
            async with semaphore:
                reply = await ghl.conversations.get_messages(
                    conversation_id, last_message_id=cursor, limit=100
                )
            page = reply["messages"]
            counts.pages += 1
            if not page["nextPage"] or not page["messages"]:
                return
            cursor = page["lastMessageId"]

    try:
        await asyncio.gather(*(one(c) for c in ids))
    except Exception as exc:  # the SDK raises on the first 429
        counts.failed = f"{type(exc).__name__} after {counts.pages} pages"
    finally:
        await ghl.http_client.aclose()
    return counts
