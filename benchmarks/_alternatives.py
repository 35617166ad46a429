"""The three ways a user reads many conversations, each driven the way its users must."""

from __future__ import annotations

import asyncio
import json
from typing import Any

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


async def official_sdk(url: str, ids: list[str], concurrency: int) -> Counts:
    """HighLevel's SDK: a hand-written paging loop and gather with a semaphore."""
    from highlevel import HighLevel

    class LocalHighLevel(HighLevel):
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
