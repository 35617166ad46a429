"""Logging: -v/-vv and GHL_ASYNC_LOG turn the ``ghl_async`` loggers on; no line shows a token."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import pytest

from ghl_async import RateLimit, _logging
from ghl_async.testing import Faults
from tests.support.cli import cli_process, run_cli
from tests.support.helpers import ServerFactory

pytestmark = pytest.mark.anyio

ROOMY = RateLimit(100_000, 1.0)


def log_lines(err: str) -> list[str]:
    """The lines of stderr that the package's handler wrote."""
    return [line for line in err.splitlines() if " ghl_async" in line]


@pytest.mark.parametrize("switch", ["-vv", "GHL_ASYNC_LOG=debug"])
async def test_a_debug_run_logs_and_never_shows_the_token(
    switch: str, server: ServerFactory, tmp_path: Path
) -> None:
    faults = Faults(server_error=0.2)  # retries to log
    async with server(
        conversations=20, messages=(0, 60), seed=301, rate_limit=ROOMY, faults=faults
    ) as fake:
        env = {"GHL_TOKEN": fake.token, "GHL_BASE_URL": fake.url}
        flags: list[str] = []
        if switch.startswith("-"):
            flags.append(switch)
        else:
            env["GHL_ASYNC_LOG"] = "debug"
        out = tmp_path / "m.jsonl"
        argv = ("export", *fake.conversation_ids, "--out", str(out), "--no-progress", *flags)
        process = await cli_process(*argv, env=env)
        _, raw = await process.communicate()
    err = raw.decode()
    assert process.returncode == 0, err
    lines = log_lines(err)
    assert any(" DEBUG " in line for line in lines), err
    assert any(
        " INFO ghl_async.cli: " in line and "answers as HighLevel" in line for line in lines
    )
    # Every line of stderr, logged or not, is free of the token.
    assert all(fake.token not in line for line in err.splitlines())


async def test_v_is_info_and_no_flag_is_quiet(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("GHL_ASYNC_LOG", raising=False)
    async with server(conversations=4, messages=(0, 20), seed=302, rate_limit=ROOMY) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        argv = ("export", "--location", fake.location_id, "--base-url", fake.url)
        assert await run_cli(*argv, "--out", str(tmp_path / "a.jsonl"), "-v") == 0
        verbose = log_lines(capsys.readouterr().err)
        assert await run_cli(*argv, "--out", str(tmp_path / "b.jsonl")) == 0
        quiet = log_lines(capsys.readouterr().err)
        # -v before the command counts as well as after it.
        assert await run_cli("-v", *argv, "--out", str(tmp_path / "c.jsonl")) == 0
        before = log_lines(capsys.readouterr().err)
    assert verbose and all(" DEBUG " not in line for line in verbose)
    assert any("answers as HighLevel" in line for line in verbose)
    assert quiet == []
    assert any("answers as HighLevel" in line for line in before)
    # The command's handler is gone once it returned: the library is quiet again.
    assert logging.getLogger("ghl_async").level == logging.NOTSET


def test_redaction_covers_registered_secrets_arguments_and_bearer_headers() -> None:
    _logging.redact("pit-0123456789abcdef")
    record = logging.LogRecord(
        "ghl_async.http", logging.DEBUG, __file__, 1,
        "sent %s with Authorization: Bearer %s", ("pit-0123456789abcdef", "other-secret"), None,
    )  # fmt: skip
    assert _logging.RedactSecrets().filter(record)
    text = record.getMessage()
    assert "pit-0123456789abcdef" not in text and "other-secret" not in text
    assert text == "sent <redacted> with Authorization: Bearer <redacted>"


def test_the_request_line_has_the_path_only() -> None:
    line = _logging.request_line(
        "GET",
        "https://services.leadconnectorhq.com/conversations/search?locationId=L&token=s3cret",
        status=200,
        latency=0.0842,
        attempt=1,
        limiter_wait=0.25,
    )
    assert line == (
        "GET /conversations/search -> 200 in 84 ms (attempt 1, waited 250 ms for a rate slot)"
    )


async def test_the_variable_is_read_at_import_for_library_users() -> None:
    code = (
        "import logging, ghl_async._logging; "
        "logging.getLogger('ghl_async.http').info('hello from the library')"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        env={**os.environ, "GHL_ASYNC_LOG": "info"},
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    assert process.returncode == 0
    assert " INFO ghl_async.http: hello from the library" in err.decode()
