"""Run in its own process: peak RSS growth while reading every message."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading

from ghl_async import Client

from ._harness import FAKE_TOKEN


def rss_kib() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGESIZE") // 1024


class PeakRss:
    """Samples this process's resident memory every 5 ms; keeps the highest."""

    def __init__(self) -> None:
        self.peak = rss_kib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_kib())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib())


async def main(mode: str, url: str) -> dict[str, int]:
    async with Client(FAKE_TOKEN, base_url=url) as client:
        ids = [c.id async for c in client.iter_conversations("ve9EPM428h8vShlRW1KT")]
        await client.get_messages(ids[0], limit=100)  # warm: session, decoder, caches
        before = rss_kib()
        count = 0
        with PeakRss() as peak:
            if mode == "stream":
                async for _ in client.fan_out(ids):
                    count += 1
                    if count % 100 == 0:
                        await asyncio.sleep(0.001)  # a consumer slower than the network
            else:
                everything = [m async for _, m in client.fan_out(ids)]
                count = len(everything)
        return {"messages": count, "growth_kib": peak.peak - before}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
