"""One worker process of the shared-budget test: fetch conversations through Redis.

Besides its counts it reports, on the wall clock the parent shares, when it started,
when its imports were done, when it was let go, when its first and last pages came
and when its client and limiter were closed, so that a benchmark can say where the
seconds went. With ``--ready`` it prints ``ready`` once imported and starts when a
line arrives on stdin: a benchmark then lets every worker go at once and times the
limiter, not the interpreter's start-up.
"""

from __future__ import annotations

import time

STARTED = time.time()

import asyncio  # noqa: E402 - the start time is taken before the imports
import json  # noqa: E402
import sys  # noqa: E402

from ghl_async import Client, RateLimit  # noqa: E402
from ghl_async.ratelimit.redis import RedisLimiter  # noqa: E402

IMPORTED = time.time()


async def work(
    base_url: str, token: str, redis_url: str, key: str, rate: str, ids: list[str]
) -> dict[str, float]:
    go = time.time()
    limiter = RedisLimiter(redis_url, key=key, rate_limit=RateLimit.parse(rate))
    pages = 0
    first = last = 0.0
    try:
        async with Client(token, base_url=base_url, limiter=limiter) as client:
            async for _ in client.fan_out_pages(ids, page_size=10):
                last = time.time()
                if not pages:
                    first = last
                pages += 1
            requests, throttled = client.stats.requests, client.stats.throttled
    finally:
        await limiter.aclose()
    return {
        "pages": pages,
        "requests": requests,
        "throttled": throttled,
        "started": STARTED,
        "imported": IMPORTED,
        "go": go,
        "first_page": first,
        "last_page": last,
        "closed": time.time(),
    }


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if arguments[0] == "--ready":
        arguments = arguments[1:]
        print("ready", flush=True)
        sys.stdin.readline()
    base_url, token, redis_url, key, rate, *ids = arguments
    print(json.dumps(asyncio.run(work(base_url, token, redis_url, key, rate, ids))))
