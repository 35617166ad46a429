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
    process.stdout.readline()
    process.stdout.readline()
    try:
        yield FakeServer(url, process)
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
