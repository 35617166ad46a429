"""One worker process of the shared-budget test: fetch conversations through Redis."""

from __future__ import annotations

import asyncio
import json
import sys

from ghl_async import Client, RateLimit
from ghl_async.redis import RedisLimiter


async def work(
    base_url: str, token: str, redis_url: str, key: str, rate: str, ids: list[str]
) -> dict[str, int]:
    limiter = RedisLimiter(redis_url, key=key, rate_limit=RateLimit.parse(rate))
    try:
        async with Client(token, base_url=base_url, limiter=limiter) as client:
            pages = 0
            async for _ in client.fan_out_pages(ids, page_size=10):
                pages += 1
            return {
                "pages": pages,
                "requests": client.stats.requests,
                "throttled": client.stats.throttled,
            }
    finally:
        await limiter.aclose()


if __name__ == "__main__":
    base_url, token, redis_url, key, rate, *ids = sys.argv[1:]
    print(json.dumps(asyncio.run(work(base_url, token, redis_url, key, rate, ids))))
