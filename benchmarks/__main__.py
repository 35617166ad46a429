"""Run the benchmarks and write benchmarks/RESULTS.md with charts.

``python -m benchmarks`` runs everything (``make bench``); ``--smoke`` runs a small
version of each (``make bench-smoke``, a minute) and writes to benchmarks/out/ instead.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

from . import (
    agency,
    budget,
    decode,
    footprint,
    latency,
    location_export,
    location_floor,
    loopwork,
    memory,
    minting,
    paired,
    redis_shared,
    sink_postgres,
    sink_sqlite,
    throughput,
)
from . import workers as arq_workers
from ._harness import machine
from ._report import Section, draw
from .limiter_figures import run as limiter_run
from .neighbour import run as neighbour_run

BENCHMARKS = {
    "decode": decode.run,
    "throughput": throughput.run,
    "paired": paired.run,
    "callbacks": loopwork.run,
    "budget": budget.run,
    "latency": latency.run,
    "memory": memory.run,
    "footprint": footprint.run,
    "redis": redis_shared.run,
    "neighbour": neighbour_run,
    "limiter": limiter_run,
    "location": location_export.run,
    "location-floor": location_floor.run,
    "workers": arq_workers.run,
    "agency": agency.run,
    "minting": minting.run,
    "sink-sqlite": sink_sqlite.run,
    "sink-postgres": sink_postgres.run,
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--smoke", action="store_true", help="small and quick; no charts")
    parser.add_argument("--only", action="append", choices=list(BENCHMARKS))
    args = parser.parse_args()
    here = Path(__file__).parent
    # Only a full run replaces RESULTS.md and the charts the README links to.
    folder = here / "out" if args.smoke or args.only else here
    chosen = args.only or list(BENCHMARKS)
    load_before = os.getloadavg()[0]
    sections: list[Section] = []
    for name in chosen:
        started = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        section = BENCHMARKS[name](args.smoke)
        print(section.markdown(), flush=True)
        print(f"({name}: {time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)
        if not section.rows and not section.notes:
            print(f"benchmark {name} produced no table", file=sys.stderr)
            return 1
        sections.append(section)
    facts = machine()
    command = "make bench-smoke" if args.smoke else "make bench"
    header = [
        "# Benchmark results" + (" (smoke run)" if args.smoke else ""),
        "",
        f"- date: {dt.date.today().isoformat()}",
        f"- command: `{command}`" + (f" (only {', '.join(chosen)})" if args.only else ""),
        f"- machine: {facts['machine']}",
        f"- Python {facts['python']}; {facts['packages']}",
        "- Absolute times on a shared 2-core machine are noisy: read the ratios, measured "
        "side by side in the same run.",
        f"- load average (1 min) at start and end: {load_before:.1f}, {os.getloadavg()[0]:.1f}",
        "",
    ]
    drawn = [draw(s, folder / "charts") for s in sections] if not args.smoke else []
    header.append("")
    folder.mkdir(parents=True, exist_ok=True)
    text = "\n".join(header) + "\n".join(s.markdown() for s in sections)
    (folder / "RESULTS.md").write_text(text, encoding="utf-8")
    print(
        f"wrote {folder / 'RESULTS.md'}" + (f" and {sum(drawn)} charts" if drawn else ""),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
