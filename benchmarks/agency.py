"""An agency's locations in one process: pages/s against the summed budgets, CPU, RSS, GC.

For each K, ``serve-fake --locations K`` runs in its own process (budgets compressed to
100 per 1 s per location) and a fresh client process reads every location through
:class:`ghl_async.Locations` for a fixed time, measuring pages/s, its own CPU per page,
its RSS, and the share of its CPU spent in the cyclic garbage collector (``gc.callbacks``).

The fake's data is about the same in total whatever K (fewer conversations per location
as K grows), so the fake's memory and start-up stay put. Before the clock starts, the
client reads every location whole once (``fan_out_pages(locations=...)``: the location
export route, 500 messages a request) and reports what that cost in requests per
location. So that every run is in steady state for its whole time at every K, the
client then lists each location's conversations
(``/conversations/search``, before the clock starts, then a second for the budgets to
refill) and reads them through ``fan_out_pages(pairs)``, every pair as many times over as
the time needs (the same conversation read again, from its first page): a run that runs
out of work before its time is reported as such.

Two trees side by side (the library of each, this benchmark and the fake of this one),
alternating against one fake per K::

    python -m benchmarks.agency compare before=/path/to/main after=.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._report import Section

REPO = Path(__file__).resolve().parent.parent

RATE = "100/1s"
PAGE_SIZE = 100
MESSAGES = "100-200"
# Above what one process reads per second at any K (about 2,100-2,500 today): the pairs
# are repeated until a run of ``seconds`` cannot run out of them.
MOST_PAGES_PER_SECOND = 4_000
# Set in a client's environment: it calls gc.freeze() after its start-up (a tree named
# NAME+freeze in ``compare``).
FREEZE = "GHL_BENCH_GC_FREEZE"


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
        tokens,
        base_url=info["url"],
        rate_limit=RateLimit.parse(RATE),
        max_pages=256,
    ) as pool:
        # A whole location read once, as fan_out_locations does: what it costs a location.
        whole_started = time.perf_counter()
        whole_messages = 0
        async for _location, _none, page in pool.fan_out_pages(locations=list(tokens)):
            whole_messages += len(page.messages)
        whole_wall = time.perf_counter() - whole_started
        whole_requests = 0
        for location_id in tokens:
            whole_requests += (await pool.client(location_id)).stats.requests
        await asyncio.sleep(1.2)  # every location's budget full again
        conversations: dict[str, list[str]] = {}
        for location_id in tokens:
            client = await pool.client(location_id)
            conversations[location_id] = [
                c.id async for c in client.iter_conversations(location_id)
            ]
        # About messages / page size, plus half a page per conversation for its last.
        pages_per_pass = sum(
            entry["messages"] / PAGE_SIZE + entry["conversations"] / 2
            for entry in info["locations"]
        )
        wanted = seconds * min(len(tokens) * 100, MOST_PAGES_PER_SECOND) * 1.5
        passes = max(1, math.ceil(wanted / max(1.0, pages_per_pass)))
        pairs = [
            (location_id, conversation_id)
            for _ in range(passes)
            for location_id, ids in conversations.items()
            for conversation_id in ids
        ]
        await asyncio.sleep(1.2)  # every location's budget full again
        gc.collect()
        if os.environ.get(FREEZE):
            # The application's recipe, not the library's: a worker process it owns
            # freezes what start-up made, so no collection walks it again.
            gc.freeze()
        rss_before = _rss_mib()
        tracked_before = len(gc.get_objects())
        tracked_mid: int | None = None
        gc.callbacks.append(on_gc)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        stop = wall0 + seconds
        rss_peak = rss_before
        ran_out = True
        async for _location, _conversation, _page in pool.fan_out_pages(
            pairs, page_size=PAGE_SIZE
        ):
            pages += 1
            if pages % 256 == 0:
                rss_peak = max(rss_peak, _rss_mib())
                if pages == 1024:  # steady state: every location started
                    tracked_mid = len(gc.get_objects())
                if time.perf_counter() > stop:
                    ran_out = False
                    break
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        gc.callbacks.remove(on_gc)
        if tracked_mid is None:  # a short run: what is tracked at its end
            tracked_mid = len(gc.get_objects())
        in_flight = getattr(pool, "in_flight_limit", None)
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
        "ran_out": ran_out,
        # The adaptive cap on page requests at once, where the run left it (None: a tree
        # without one).
        "in_flight": in_flight,
        "passes": passes,
        "whole_requests": whole_requests,
        "whole_messages": whole_messages,
        "whole_wall": whole_wall,
    }


def _child(info_path: str, seconds: float, tree: str | None) -> None:
    if tree is not None:  # that tree's library; this tree's benchmark
        sys.path.insert(0, tree)
    info = json.loads(Path(info_path).read_text())
    print(json.dumps(asyncio.run(_read(info, seconds))))


def _client(
    info: Path,
    seconds: float,
    server: subprocess.Popen[str],
    tree: str | None,
    freeze: bool = False,
) -> dict[str, Any]:
    server_cpu = _cpu_of(server.pid)
    began = time.perf_counter()
    argv = [sys.executable, "-m", "benchmarks.agency", "child", str(info), str(seconds)]
    out = subprocess.run(
        argv + ([tree] if tree is not None else []),
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **({FREEZE: "1"} if freeze else {})},
    )
    # Over the client's whole life (start-up included): a lower bound while reading.
    server_busy = (_cpu_of(server.pid) - server_cpu) / (time.perf_counter() - began)
    result = dict(json.loads(out.stdout.strip().splitlines()[-1]))
    result["server_busy"] = server_busy
    return result


def _fake(k: int) -> tuple[subprocess.Popen[str], Path, tempfile.TemporaryDirectory[str]]:
    folder = tempfile.TemporaryDirectory()
    info = Path(folder.name) / "agency.json"
    return _serve(k, max(8, 2_400 // k), info), info, folder


def _one(k: int, seconds: float) -> dict[str, Any]:
    server, info, folder = _fake(k)
    try:
        return _client(info, seconds, server, None)
    finally:
        server.terminate()
        server.wait()
        folder.cleanup()


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
        columns=COLUMNS,
    )
    base: dict[str, float] | None = None
    for k in sizes:
        result = _one(k, seconds)
        row_cpu_ms = 1000 * result["cpu"] / max(1, result["pages"])
        section.rows.append(_row(k, result))
        _notes(section, k, result)
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


COLUMNS = [
    "locations K",
    "pages/s",
    "of K x 100",
    "CPU per page (ms)",
    "client CPU busy",
    "server CPU busy",
    "RSS (MiB)",
    "GC share",
    "429s",
]


def _row(k: int, result: dict[str, Any]) -> list[Any]:
    rate = result["pages"] / result["wall"]
    return [
        k,
        rate,
        f"{100 * rate / (k * 100):.0f}%",
        1000 * result["cpu"] / max(1, result["pages"]),
        f"{100 * result['cpu'] / result['wall']:.0f}%",
        f"{100 * result['server_busy']:.0f}%",
        result["rss"],
        f"{100 * result['gc'] / max(result['cpu'], 1e-9):.1f}%",
        int(result["throttled"]),
    ]


def _notes(section: Section, k: int, result: dict[str, Any], label: str = "") -> None:
    split = ", ".join(
        f"gen{generation} {count} ({1000 * spent:.0f} ms)"
        for generation, (count, spent) in enumerate(
            zip(result["collections"], result["gc_times"], strict=True)
        )
    )
    section.notes.append(
        f"{label}K={k}: collections {split}; "
        f"{result['tracked_per_location']:.0f} tracked objects per location "
        f"(first-use imports included); {result['passes']} pass(es) over the data"
        + ("; RAN OUT OF WORK before its time" if result["ran_out"] else "")
        + (
            f"; requests at once capped at {result['in_flight']} at the end"
            if result.get("in_flight") is not None
            else ""
        )
    )
    if "whole_requests" in result:
        requests = result["whole_requests"]
        section.notes.append(
            f"{label}K={k}: every location read whole once (fan_out_pages(locations=...)) "
            f"in {result['whole_wall']:.1f} s: {requests / k:.1f} requests per location, "
            f"{result['whole_messages'] / max(1, requests):.0f} messages a request (a fake "
            "serving its first export request builds its index then: in the time)"
        )


def compare(
    trees: list[tuple[str, str]], sizes: list[int], seconds: float, rounds: int
) -> Section:
    """Each tree's library side by side, alternating against one fake per K."""
    section = Section(
        title="An agency's locations in one process: trees side by side",
        what=(
            f"As the agency table; trees {', '.join(f'{n}={p}' for n, p in trees)}, "
            f"{rounds} round(s) each, order alternating, one fake per K."
        ),
        columns=["tree", *COLUMNS],
    )
    for k in sizes:
        server, info, folder = _fake(k)
        try:
            order = list(trees)
            for round_ in range(rounds):
                for name, path in order if round_ % 2 == 0 else order[::-1]:
                    time.sleep(1.5)  # the fake's windows empty between runs
                    tree, freeze = str(Path(path).resolve()), name.endswith("+freeze")
                    result = _client(info, seconds, server, tree, freeze)
                    section.rows.append([name, *_row(k, result)])
                    _notes(section, k, result, f"{name} ")
                    print(section.rows[-1], file=sys.stderr, flush=True)
        finally:
            server.terminate()
            server.wait()
            folder.cleanup()
    section.notes.append(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}")
    return section


def _main(argv: list[str]) -> None:
    if argv[0] == "child":
        _child(argv[1], float(argv[2]), argv[3] if len(argv) > 3 else None)
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.agency")
    parser.add_argument("command", choices=["compare"])
    parser.add_argument(
        "trees", nargs="+", help="NAME=PATH of each tree (NAME+freeze: gc.freeze() after start-up)"
    )
    parser.add_argument("--sizes", default="10,100,200,300")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    trees: list[tuple[str, str]] = []
    for tree in args.trees:
        name, _, path = tree.partition("=")
        trees.append((name, path))
    sizes = [int(size) for size in args.sizes.split(",")]
    print(compare(trees, sizes, args.seconds, args.rounds).markdown())


if __name__ == "__main__":
    _main(sys.argv[1:])
