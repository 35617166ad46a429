"""An agency's locations in one process: pages/s against the summed budgets, CPU, RSS, GC.

For each K, ``serve-fake --locations K`` runs in its own process (budgets compressed to
100 per 1 s per location) and a fresh client process reads every location through
:class:`ghl_async.Locations` for a fixed time, measuring pages/s, its own CPU per page,
its RSS, and the share of its CPU spent in the cyclic garbage collector (``gc.callbacks``).
The fake's data is about the same in total whatever K (fewer conversations per location
as K grows), so the fake's memory stays put.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._report import Section

RATE = "100/1s"
PAGE_SIZE = 100
MESSAGES = "100-200"


def _serve(k: int, conversations: int, info: Path) -> subprocess.Popen[str]:
    argv = [
        sys.executable,
        "-m",
        "ghl_async",
        "serve-fake",
        "--port",
        "0",
        "--locations",
        str(k),
        "--conversations",
        str(conversations),
        "--messages",
        MESSAGES,
        "--rate",
        RATE,
        "--daily",
        "1000000000",
        "--info",
        str(info),
    ]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 120
    while not (info.exists() and info.stat().st_size > 0):
        if time.monotonic() > deadline or process.poll() is not None:
            process.terminate()
            raise RuntimeError("serve-fake did not start")
        time.sleep(0.1)
    return process


def _rss_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


async def _read(info: dict[str, Any], seconds: float) -> dict[str, Any]:
    from ghl_async import Locations, RateLimit

    tokens = {entry["id"]: entry["token"] for entry in info["locations"]}
    gc_time = [0.0]
    started_gc = [0.0]
    # Per generation: a young collection walks what survived since the last one, a
    # full one everything tracked, so both counts and times say where the work is.
    collections = [0, 0, 0]
    gc_times = [0.0, 0.0, 0.0]

    def on_gc(phase: str, gc_info: dict[str, Any]) -> None:
        if phase == "start":
            started_gc[0] = time.process_time()  # CPU, not wall: the machine is shared
        else:
            spent = time.process_time() - started_gc[0]
            gc_time[0] += spent
            collections[gc_info["generation"]] += 1
            gc_times[gc_info["generation"]] += spent

    pages = 0
    async with Locations(
        tokens, base_url=info["url"], rate_limit=RateLimit.parse(RATE), max_pages=256
    ) as pool:
        rss_before = _rss_mib()
        tracked_before = len(gc.get_objects())
        tracked_mid: int | None = None
        gc.callbacks.append(on_gc)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        stop = wall0 + seconds
        rss_peak = rss_before
        async for _location, _conversation, _page in pool.fan_out_pages(
            locations=list(tokens), page_size=PAGE_SIZE
        ):
            pages += 1
            if pages % 256 == 0:
                rss_peak = max(rss_peak, _rss_mib())
                if pages == 1024:  # steady state: every location started
                    tracked_mid = len(gc.get_objects())
                if time.perf_counter() > stop:
                    break
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        gc.callbacks.remove(on_gc)
        if tracked_mid is None:  # a short run: what is tracked at its end
            tracked_mid = len(gc.get_objects())
        throttled = 0
        for location_id in tokens:
            throttled += (await pool.client(location_id)).stats.throttled
    return {
        "pages": pages,
        "wall": wall,
        "cpu": cpu,
        "gc": gc_time[0],
        "rss": max(rss_peak, _rss_mib()),
        "rss_start": rss_before,
        "throttled": throttled,
        "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "collections": collections,
        "gc_times": gc_times,
        "tracked_per_location": (tracked_mid - tracked_before) / len(tokens),
    }


def _child(info_path: str, seconds: float) -> None:
    info = json.loads(Path(info_path).read_text())
    print(json.dumps(asyncio.run(_read(info, seconds))))


def _one(k: int, seconds: float) -> dict[str, Any]:
    conversations = max(8, 2_400 // k)
    with tempfile.TemporaryDirectory() as folder:
        info = Path(folder) / "agency.json"
        server = _serve(k, conversations, info)
        try:
            server_cpu = _cpu_of(server.pid)
            began = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.agency", info, str(seconds)],
                capture_output=True,
                text=True,
                check=True,
            )
            # Over the client's whole life (start-up included): a lower bound while reading.
            server_busy = (_cpu_of(server.pid) - server_cpu) / (time.perf_counter() - began)
        finally:
            server.terminate()
            server.wait()
    result = dict(json.loads(out.stdout.strip().splitlines()[-1]))
    result["server_busy"] = server_busy
    return result


def _cpu_of(pid: int) -> float:
    """CPU seconds process ``pid`` has used (user + system)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(smoke: bool) -> Section:
    sizes = [5, 20] if smoke else [10, 100, 200, 300]
    seconds = 1.5 if smoke else 6.0
    section = Section(
        title="An agency's locations in one process",
        what=(
            f"K locations read through `ghl_async.Locations` in one process, budgets "
            f"compressed to {RATE} per location, pages of {PAGE_SIZE} messages, for "
            f"{seconds:g} s each; `serve-fake --locations K` in its own process. "
            "Client CPU per page is this process's CPU; GC is the time inside the cyclic "
            "collector (gc.callbacks) as a share of that CPU."
        ),
        columns=[
            "locations K",
            "pages/s",
            "of K x 100",
            "CPU per page (ms)",
            "client CPU busy",
            "server CPU busy",
            "RSS (MiB)",
            "GC share",
            "429s",
        ],
    )
    base: dict[str, float] | None = None
    for k in sizes:
        result = _one(k, seconds)
        rate = result["pages"] / result["wall"]
        row_cpu_ms = 1000 * result["cpu"] / max(1, result["pages"])
        section.rows.append(
            [
                k,
                rate,
                f"{100 * rate / (k * 100):.0f}%",
                row_cpu_ms,
                f"{100 * result['cpu'] / result['wall']:.0f}%",
                f"{100 * result['server_busy']:.0f}%",
                result["rss"],
                f"{100 * result['gc'] / max(result['cpu'], 1e-9):.1f}%",
                int(result["throttled"]),
            ]
        )
        split = ", ".join(
            f"gen{generation} {count} ({1000 * spent:.0f} ms)"
            for generation, (count, spent) in enumerate(
                zip(result["collections"], result["gc_times"], strict=True)
            )
        )
        section.notes.append(
            f"K={k}: collections {split}; "
            f"{result['tracked_per_location']:.0f} tracked objects per location "
            "(first-use imports included)"
        )
        if base is None:
            base = {"k": k, "rss": result["rss"], "cpu_ms": row_cpu_ms}
        else:
            per_location = (result["rss"] - base["rss"]) / (k - base["k"])
            section.notes.append(
                f"K={k}: {per_location:.3f} MiB RSS per location over K={base['k']:g}; "
                f"CPU per page {row_cpu_ms / base['cpu_ms']:.2f}x K={base['k']:g}'s"
            )
    section.notes.append(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}")
    return section


if __name__ == "__main__":
    _child(sys.argv[1], float(sys.argv[2]))
