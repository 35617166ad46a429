"""Event-loop work per page: callbacks, loop iterations and I/O events per poll, counted.

The same clients and pages as the throughput benchmark, each run on a counting event
loop (benchmarks/_loopcount.py) and not timed. A count does not depend on the machine's
load, so it shows progress that CPU time on a shared machine hides.
"""

from __future__ import annotations

from ._harness import fake_server, median
from ._loopcount import run_counted
from ._report import Section
from .throughput import WORKER_FLOOR, clients, pages_of, size

KINDS = ("task step", "task wake-up", "I/O", "timer", "other")


def run(smoke: bool) -> Section:
    conversations, messages, _ = size(smoke)
    rounds = 1 if smoke else 3
    pages = pages_of(conversations, messages)
    with fake_server(conversations=conversations, messages=messages) as server:
        ids = server.stats()["conversationIds"]
        runs = clients(server.url, ids, sdk=False)
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, runner in runs.items():
                _, counts = run_counted(runner)
                samples[name].append(counts.per(pages))
    section = Section(
        title="Event-loop work per page",
        what=f"The throughput run's {pages} pages, {conversations} conversations, "
        f"16 in flight, on an event loop that counts what it does (the client process "
        f"only, not timed); median of {rounds} rounds. A callback is one trip through the "
        "loop's ready queue: a task step (a task started or yielded with nothing to wait "
        "for), a task wake-up (a future it awaited is done), an I/O callback, a timer.",
        columns=[
            "client",
            "callbacks / page",
            *(f"{kind}s / page" for kind in KINDS),
            "loop iterations / page",
            "I/O events per poll",
        ],
    )
    for name, per in samples.items():
        section.rows.append(
            [
                name,
                median([p["callbacks"] for p in per]),
                *(median([p.get(kind, 0.0) for p in per]) for kind in KINDS),
                median([p["iterations"] for p in per]),
                median([p["events per poll"] for p in per]),
            ]
        )
    ours = median([p["callbacks"] for p in samples["ghl_async fan_out_pages"]])
    floor = median([p["callbacks"] for p in samples[WORKER_FLOOR]])
    section.notes.append(
        f"ghl_async fan_out_pages: {ours:.2f} callbacks per page against {floor:.2f} for the "
        "worker floor. Target (issue 12): at most 2.5. Every forced yield costs a callback "
        "and often a whole loop iteration, and fewer I/O events per poll means less batching."
    )
    section.chart = (
        "loop_callbacks.png",
        "event-loop callbacks per page (lower is better)",
        list(samples),
        [median([p["callbacks"] for p in per]) for per in samples.values()],
    )
    return section
