"""One budget shared by three processes through Redis (issue 6)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._harness import FAKE_TOKEN, fake_server
from ._report import Section


def run(smoke: bool) -> Section:
    from tests.redis_fixtures import RedisServer  # the tests' throwaway redis-server

    budget, interval, processes = 20, 1.0, 3
    conversations = 5 if smoke else 20  # 95 messages: 10 pages of 10 each
    pages = conversations * 10
    ideal = ((pages - 1) // budget) * interval
    section = Section(
        title="Three processes, one budget, through Redis",
        what=f"{processes} worker processes share {budget} requests per {interval:g} s via "
        f"`RedisLimiter` and read {pages} pages; the time includes starting the processes. "
        f"Ideal: {ideal:.0f} s.",
        columns=["setup", "time s", "% of ideal", "429s", "most in any window"],
    )
    if shutil.which("redis-server") is None:
        section.notes.append("Skipped: redis-server is not installed (make test installs it).")
        return section
    with tempfile.TemporaryDirectory() as folder:
        redis = RedisServer(Path(folder))
        redis.start()
        try:
            with fake_server(
                conversations=conversations, messages="95", rate=f"{budget}/{interval:g}s"
            ) as server:
                ids = server.stats()["conversationIds"]
                started = time.perf_counter()
                workers = [
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "tests.redis_worker",
                            server.url,
                            FAKE_TOKEN,
                            redis.url,
                            "location:bench",
                            f"{budget}/{interval:g}s",
                            *ids[i::processes],
                        ],
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                    for i in range(processes)
                ]
                outputs = [json.loads(w.communicate()[0]) for w in workers]
                wall = time.perf_counter() - started
                stats = server.stats()
        finally:
            redis.stop()
    assert sum(o["pages"] for o in outputs) == pages
    section.rows.append(
        [
            f"{processes} processes, RedisLimiter",
            wall,
            f"{100 * ideal / wall:.0f}%",
            stats["throttled"],
            stats["maxInWindow"],
        ]
    )
    section.notes.append("Floor (issue 6): at least 80% of ideal, zero 429s.")
    return section
