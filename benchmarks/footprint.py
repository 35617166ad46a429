"""Import time and installed size, against the official SDK."""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from ._harness import sdk_available
from ._report import Section


def import_ms(module: str, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        err = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import {module}"],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        for line in err.splitlines():
            match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)", line)
            if match and match.group(3) == module and not match.group(2):
                times.append(int(match.group(1)) / 1000)
    return statistics.median(times)


_RSS = "int(open('/proc/self/statm').read().split()[1]) * __import__('os').sysconf('SC_PAGESIZE')"


def import_rss_mib(module: str) -> float:
    """Resident memory the import adds, measured inside one process."""
    code = f"before = {_RSS}; import {module}; print({_RSS} - before)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return int(out) / 2**20


def installed_mib(distribution: str) -> float:
    """Size on disk of a distribution and everything it requires (extras aside)."""
    seen: set[str] = set()
    total = 0
    todo = [distribution]
    while todo:
        name = re.split(r"[\s;<>=!~\[(]", todo.pop(), maxsplit=1)[0].lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for file in dist.files or ():
            path = Path(str(dist.locate_file(file)))
            if path.is_file() and "__pycache__" not in path.parts:
                total += path.stat().st_size
        for requirement in dist.requires or ():
            if "extra ==" not in requirement:
                todo.append(requirement)
    return total / 2**20


def run(smoke: bool) -> Section:
    rounds = 1 if smoke else 5
    rows = [("ghl_async", "ghl_async", "ghl-async")]
    if sdk_available():
        rows.append(("official SDK", "highlevel", "gohighlevel-api-client"))
    section = Section(
        title="Import time and footprint",
        what=f"`python -X importtime -c 'import X'` (median of {rounds}), the memory the "
        "import adds, and the size on disk of the package with its dependencies.",
        columns=["package", "import ms", "import adds MiB", "installed MiB (with deps)"],
    )
    for label, module, dist in rows:
        section.rows.append(
            [label, import_ms(module, rounds), import_rss_mib(module), installed_mib(dist)]
        )
    return section
