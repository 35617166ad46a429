"""What every benchmark shares: a fake server in its own process, timing, machine facts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any

FAKE_TOKEN = "bench-token"


@dataclass
class FakeServer:
    url: str
    process: subprocess.Popen[str]
    location: str = ""  # the location the fake serves (its export route's locationId)

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_fake/stats") as response:
            stats: dict[str, Any] = json.loads(response.read())
        return stats


@contextlib.contextmanager
def fake_server(
    *,
    conversations: int,
    messages: str,
    rate: str = "100000000/1s",
    faults: str = "",
    seed: int = 0,
    versions: tuple[str, ...] = ("2021-04-15", "v3"),
) -> Iterator[FakeServer]:
    """`ghl-async serve-fake` in a separate process (its CPU is not the client's)."""
    argv = [
        sys.executable,
        "-m",
        "ghl_async",
        "serve-fake",
        "--port",
        "0",
        "--conversations",
        str(conversations),
        "--messages",
        messages,
        "--rate",
        rate,
        "--daily",
        "1000000000",
        "--seed",
        str(seed),
        "--token",
        FAKE_TOKEN,
    ]
    for version in versions:
        argv += ["--accept-version", version]
    if faults:
        argv += ["--faults", faults]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    url = process.stdout.readline().split()[-1]
    process.stdout.readline()  # token: ...
    location = process.stdout.readline().split()[-1]  # location: ...
    try:
        yield FakeServer(url, process, location)
    finally:
        process.terminate()
        process.wait()


def measure(run: Callable[[], Coroutine[Any, Any, Any]]) -> tuple[float, float, Any]:
    """Wall seconds, this process's CPU seconds, and the result of one run."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = asyncio.run(run())
    return time.perf_counter() - wall0, time.process_time() - cpu0, result


def median(values: list[float]) -> float:
    return statistics.median(values)


def version_of(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "machine": f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": ", ".join(
            f"{name} {version_of(name)}"
            for name in (
                "ghl-async",
                "aiohttp",
                "msgspec",
                "anyio",
                "aiolimiter",
                "httpx",
                "gohighlevel-api-client",
                "pydantic",
                "orjson",
            )
        ),
    }


def sdk_available() -> bool:
    return version_of("gohighlevel-api-client") != "not installed"


def turned(names: list[str], number: int) -> list[str]:
    """The order of round ``number``: rotated one place a round, so each name runs in
    every position in turn and no pair always runs in the same order (for two names,
    alternation). Drift within a round then favours no side over the rounds.
    """
    if not names:
        return []
    shift = number % len(names)
    return names[shift:] + names[:shift]


@dataclass(frozen=True)
class Paired:
    """The median of paired per-round ratios, with their spread.

    Each round measures both sides back to back; the ratio within a round cancels what
    the machine did that round (another job, a frequency change), which medians taken
    of each side apart do not: on a shared 2-core machine those drift by +-0.2x from run
    to run, the paired median by a few hundredths.
    """

    median: float
    low: float
    high: float
    q1: float
    q3: float
    rounds: int

    @classmethod
    def of(cls, ours: list[float], theirs: list[float]) -> Paired:
        """``ours[i] / theirs[i]`` for every round ``i``, summarised."""
        if len(ours) != len(theirs) or not ours:
            raise ValueError("paired ratios need the same, non-zero number of rounds")
        ratios = sorted(a / b for a, b in zip(ours, theirs, strict=True))
        if len(ratios) >= 2:
            q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
        else:
            q1 = q3 = ratios[0]
        return cls(statistics.median(ratios), ratios[0], ratios[-1], q1, q3, len(ratios))

    def __str__(self) -> str:
        """``1.13x (IQR 1.11-1.15, range 1.08-1.19, 9 rounds)``."""
        return (
            f"{self.median:.2f}x (IQR {self.q1:.2f}-{self.q3:.2f}, "
            f"range {self.low:.2f}-{self.high:.2f}, {self.rounds} rounds)"
        )

    def cell(self) -> str:
        """For a table cell: ``1.13x (1.11-1.15)``, the interquartile range."""
        return f"{self.median:.2f}x ({self.q1:.2f}-{self.q3:.2f})"
