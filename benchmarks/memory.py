"""Memory: 200,000 messages through fan_out with a slow consumer, against holding them all."""

from __future__ import annotations

import json
import subprocess
import sys

from ._harness import fake_server
from ._report import Section


def run(smoke: bool) -> Section:
    conversations, messages = (20, "500") if smoke else (200, "1000")
    results = {}
    with fake_server(conversations=conversations, messages=messages) as server:
        for mode in ("stream", "materialise"):
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.memory_child", mode, server.url],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[mode] = json.loads(out)
    section = Section(
        title="Memory",
        what=f"{results['stream']['messages']:,} messages through `fan_out`, each run in a "
        "fresh process; growth of peak RSS after the client is warm.",
        columns=["how", "messages", "peak RSS growth MiB"],
    )
    section.rows.append(
        [
            "ghl_async fan_out, slow consumer",
            results["stream"]["messages"],
            results["stream"]["growth_kib"] / 1024,
        ]
    )
    section.rows.append(
        [
            "the same messages kept in a list",
            results["materialise"]["messages"],
            results["materialise"]["growth_kib"] / 1024,
        ]
    )
    section.notes.append("Floor (issues 3 and 5): under 80 MiB for 200,000 messages.")
    return section
