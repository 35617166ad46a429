"""Helpers of the command line's tests: run ``ghl-async`` in a thread or a child process.

Also reads what an export wrote and what the fake holds, grouped per conversation.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import anyio

from ghl_async.cli.main import main
from ghl_async.testing import FakeHighLevel


async def run_cli(*argv: str) -> int:
    """Run main() in a worker thread so this test's loop keeps serving the fake."""
    return await anyio.to_thread.run_sync(main, list(argv))


def read_lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def by_conversation(rows: list[dict[str, object]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        grouped[str(row["conversationId"])].append(str(row["id"]))
    return grouped


def expected(fake: FakeHighLevel, ids: list[str]) -> dict[str, list[str]]:
    return {c: [m["id"] for m in fake.messages(c)] for c in ids if fake.messages(c)}


# A shell starts background jobs with SIGINT ignored, and a child inherits that: the
# command under test gets Python's Ctrl-C handler back, as it has in a terminal.
_CHILD = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "{setup}from ghl_async.cli.main import main; sys.exit(main(sys.argv[1:]))"
)


async def cli_process(
    *argv: str, env: dict[str, str], setup: str = "", **kwargs: Any
) -> asyncio.subprocess.Process:
    """``ghl-async *argv`` in a child process (``setup``: Python run before it)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _CHILD.format(setup=setup),
        *argv,
        env={**os.environ, **env},
        stdout=kwargs.pop("stdout", asyncio.subprocess.PIPE),
        stderr=asyncio.subprocess.PIPE,
        **kwargs,
    )
