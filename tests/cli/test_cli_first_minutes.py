"""The README's flow on the command line: its environment read, every early mistake one line.

A new user exports ``GHL_BASE_URL``, ``GHL_TOKEN`` and ``GHL_LOCATION_ID`` and runs the
commands as written. Each mistake before the first request (a wrong URL, a server that
is not HighLevel, a refused token, a foreign location, dates out of range) ends in one
line naming the likely cause, exit 2, no advice to ``--resume`` and nothing on disk.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path

import pytest
from aiohttp import web

from ghl_async import RateLimit
from ghl_async.testing import FakeHighLevel
from tests.support.cli import cli_process, read_lines, run_cli
from tests.support.helpers import ServerFactory

pytestmark = pytest.mark.anyio

ROOMY = RateLimit(100_000, 1.0)
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there


def one_line(text: str) -> str:
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith("ghl-async: "), text
    return lines[0]


def left_in(folder: Path) -> list[str]:
    """What a command left on disk in ``folder``."""
    return sorted(os.listdir(folder))


def ids_of(path: Path) -> set[str]:
    return {str(row["id"]) for row in read_lines(path)}


def all_ids(fake: FakeHighLevel) -> set[str]:
    return {m["id"] for c in fake.conversation_ids for m in fake.messages(c)}


@asynccontextmanager
async def not_highlevel() -> AsyncIterator[str]:
    """A web server that is not HighLevel: every path answers aiohttp's plain 404."""
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


# -- the environment of the README ---------------------------------------------------


async def test_export_follows_the_readme_environment(
    server: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with server(conversations=12, messages=(0, 30), seed=201, rate_limit=ROOMY) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        monkeypatch.setenv("GHL_BASE_URL", fake.url)
        monkeypatch.setenv("GHL_LOCATION_ID", fake.location_id)
        out = tmp_path / "messages.jsonl"
        # --location with no value given falls to GHL_LOCATION_ID, --base-url to GHL_BASE_URL.
        assert await run_cli("export", "--out", str(out)) == 0
        assert ids_of(out) == all_ids(fake)
        # An explicit flag wins over its variable.
        monkeypatch.setenv("GHL_BASE_URL", UNREACHABLE)
        monkeypatch.setenv("GHL_LOCATION_ID", "someOtherLocation")
        again = tmp_path / "again.jsonl"
        argv = ("export", "--location", fake.location_id, "--base-url", fake.url)
        assert await run_cli(*argv, "--out", str(again)) == 0
        assert ids_of(again) == all_ids(fake)


async def test_sync_follows_the_readme_environment(
    server: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with server(conversations=10, messages=(0, 20), seed=202, rate_limit=ROOMY) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        monkeypatch.setenv("GHL_BASE_URL", fake.url)
        monkeypatch.setenv("GHL_LOCATION_ID", fake.location_id)
        database = tmp_path / "m.db"
        assert await run_cli("sync", "--to", f"sqlite:///{database}") == 0
    with closing(sqlite3.connect(database)) as db:
        (count,) = db.execute("SELECT count(*) FROM messages").fetchone()
    assert count == fake.total_messages


async def test_help_names_each_variable_and_describes_every_command() -> None:
    for command, says in [
        ("export", ["GHL_BASE_URL", "GHL_LOCATION_ID", "GHL_TOKEN", "default: messages.jsonl"]),
        ("sync", ["GHL_BASE_URL", "GHL_LOCATION_ID", "GHL_TOKEN"]),
        ("demo", ["fake HighLevel in this process"]),
        ("status", ["queued export's progress"]),
    ]:
        process = await cli_process(command, "--help", env={})
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        text = " ".join(out.decode().split())  # argparse wraps lines
        for word in says:
            assert word in text, (command, word)


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("GHL_BASE_URL", "ftp://example.com", "GHL_BASE_URL: must be an http(s) URL"),
        ("GHL_LOCATION_ID", "a/b", "GHL_LOCATION_ID: location id 'a/b' is not"),
    ],
)
async def test_a_bad_variable_is_named_in_one_line(
    variable: str,
    value: str,
    says: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GHL_TOKEN", "t")
    monkeypatch.setenv("GHL_LOCATION_ID", "someLocation")
    monkeypatch.setenv(variable, value)
    assert await run_cli("export", "--out", str(tmp_path / "m.jsonl")) == 2
    assert says in one_line(capsys.readouterr().err)
    assert left_in(tmp_path) == []


async def test_plain_http_off_loopback_names_no_library_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GHL_TOKEN", "t")
    assert await run_cli("export", "abc", "--base-url", "http://10.1.2.3:8080") == 2
    line = one_line(capsys.readouterr().err)
    assert "must use https" in line and "localhost" in line
    assert "allow_insecure" not in line


# -- nothing on disk for a mistake before the first request ---------------------------


COMMANDS = {
    "export --location --out": ["export", "--location", "{location}", "--out", "{tmp}/m.jsonl"],
    "export ids --out": ["export", "{conversation}", "--out", "{tmp}/m.jsonl"],
    "export --to sqlite": ["export", "--location", "{location}", "--to", "sqlite:///{tmp}/m.db"],
    "sync": ["sync", "--location", "{location}", "--to", "sqlite:///{tmp}/m.db"],
    "sync --out DIR": ["sync", "--location", "{location}", "--out", "{tmp}"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize(
    ("mistake", "says"),
    [
        ("unreachable", "cannot reach http://127.0.0.1:9 (connection refused"),
        ("not HighLevel", "does not look like HighLevel's API"),
        ("token refused", "the token was refused"),
    ],
)
async def test_a_mistake_before_the_first_request_is_one_line_and_leaves_nothing(
    command: str,
    mistake: str,
    says: str,
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with (
        server(conversations=3, messages=(1, 5), seed=203) as fake,
        not_highlevel() as other,
    ):
        token, url = fake.token, fake.url
        if mistake == "unreachable":
            url = UNREACHABLE
        elif mistake == "not HighLevel":
            url = other
        else:
            token = "pit-not-the-right-one"
        monkeypatch.setenv("GHL_TOKEN", token)
        argv = [
            arg.replace("{tmp}", str(tmp_path))
            .replace("{location}", fake.location_id)
            .replace("{conversation}", fake.conversation_ids[0])
            for arg in COMMANDS[command]
        ]
        code = await run_cli(*argv, "--base-url", url)
    assert code == 2
    line = one_line(capsys.readouterr().err)
    assert says in line, line
    assert "--resume" not in line and "run it again" not in line
    assert token not in line or mistake != "token refused"
    assert left_in(tmp_path) == []


async def test_a_location_the_token_cannot_read_leaves_nothing(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with server(conversations=3, messages=(1, 5), seed=204) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        out = tmp_path / "m.jsonl"
        argv = ("export", "--location", "notMyLocation", "--out", str(out), "--base-url", fake.url)
        assert await run_cli(*argv) == 2
    line = one_line(capsys.readouterr().err)
    assert "cannot list location notMyLocation" in line and "GHL_LOCATION_ID" in line
    assert left_in(tmp_path) == []


# -- dates (issue #22) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--until", "9999-12-31T23:59:59-01:00"], "outside the dates UTC can hold"),
        (["--since", "0001-01-01T00:00:00+01:00"], "outside the dates UTC can hold"),
        (["--since", "2025-06-02", "--until", "2025-06-01"], "--since (2025-06-02T00:00:00"),
    ],
)
async def test_dates_at_the_limits_or_reversed_are_one_line_before_any_file(
    flags: list[str],
    says: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GHL_TOKEN", "t")
    out = tmp_path / "m.jsonl"
    argv = ("export", "--location", "someLocation", "--out", str(out), "--base-url", UNREACHABLE)
    assert await run_cli(*argv, *flags) == 2
    line = one_line(capsys.readouterr().err)
    assert says in line, line
    assert left_in(tmp_path) == []


async def test_dates_at_the_limits_that_fit_utc_are_accepted(
    server: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with server(conversations=4, messages=(1, 10), seed=205, rate_limit=ROOMY) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        out = tmp_path / "m.jsonl"
        argv = (
            "export",
            "--location",
            fake.location_id,
            "--out",
            str(out),
            "--base-url",
            fake.url,
        )
        code = await run_cli(*argv, "--since", "0001-01-02", "--until", "9999-12-30T00:00:00Z")
    assert code == 0
    assert ids_of(out) == all_ids(fake)


# -- email bodies that could not be fetched (issue #22) ------------------------------


BAD_EMAIL_ID = "../../oauth/x"  # not an email id: never sent, recorded as failed


@pytest.mark.parametrize("into", ["--out", "--to"])
async def test_email_bodies_missing_are_counted_in_the_summary_and_exit_1(
    into: str,
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with server(conversations=4, messages=(2, 10), seed=206, rate_limit=ROOMY) as fake:
        fake.add_message(
            fake.conversation_ids[0],
            messageType="TYPE_EMAIL",
            type=3,
            meta={"email": {"messageIds": [BAD_EMAIL_ID]}},
        )
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        target = str(tmp_path / "m.jsonl") if into == "--out" else f"sqlite:///{tmp_path}/m.db"
        argv = ("export", "--location", fake.location_id, into, target, "--base-url", fake.url)
        code = await run_cli(*argv, "--email-bodies")
    assert code == 1
    err = capsys.readouterr().err
    assert "1 email bodies could not be fetched" in err
    assert f"first {BAD_EMAIL_ID}:" in err
    assert "Traceback" not in err


# -- a reader that goes away ----------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["serve-fake", "--port", "0"],  # prints its URL and token on stdout, then serves
        ["serve-fake", "--port", "0", "-v"],
        ["export", "--help"],  # argparse drops what it cannot write: 0, quietly, is fine
    ],
)
async def test_a_closed_stdout_ends_quietly_without_a_traceback(argv: list[str]) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader went away before a byte was written (| head -0)
    try:
        process = await cli_process(*argv, env={}, stdout=write_end)
    finally:
        os.close(write_end)
    _, err = await process.communicate()
    assert process.returncode in ((0, 141) if "--help" in argv else (141,)), err.decode()
    assert b"Traceback" not in err and b"BrokenPipeError" not in err


# -- progress -------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["location", "ids"])
async def test_the_bar_refreshes_twice_a_second_while_the_budget_holds_it_back(
    source: str, server: ServerFactory, tmp_path: Path
) -> None:
    # 5 requests a second: a run of a few seconds, most of it waiting for the budget.
    conversations = 30 if source == "location" else 8  # 15 requests or so either way
    async with server(
        conversations=conversations, messages=(150, 300), seed=207, rate_limit=RateLimit(5, 1.0)
    ) as fake:
        what = ["--location", fake.location_id] if source == "location" else fake.conversation_ids
        argv = ("export", *what, "--out", str(tmp_path / "m.jsonl"), "--progress")
        loop = asyncio.get_running_loop()
        started = loop.time()
        process = await cli_process(*argv, env={"GHL_TOKEN": fake.token, "GHL_BASE_URL": fake.url})
        _, raw = await process.communicate()
        elapsed = loop.time() - started
    err = raw.decode()
    assert process.returncode == 0, err
    assert elapsed > 2.0
    frames = err.split("\r")
    assert len(frames) >= 2 * (elapsed - 1.0), (len(frames), elapsed)
    last = frames[-1]
    if source == "location":  # messages counted, requests beside
        assert f"{fake.total_messages}msg" in last and "requests=" in last
    else:
        assert f"{len(fake.conversation_ids)}/{len(fake.conversation_ids)}" in last
        assert f"messages={fake.total_messages}" in last


@pytest.mark.parametrize("source", ["location", "ids"])
async def test_a_stop_before_the_first_line_leaves_nothing_and_no_resume_advice(
    source: str,
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The check's request is the day's last: the run's first request finds it spent.
    async with server(conversations=4, messages=(5, 20), seed=208, daily_limit=1) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        what = ["--location", fake.location_id] if source == "location" else fake.conversation_ids
        out = tmp_path / "m.jsonl"
        code = await run_cli("export", *what, "--out", str(out), "--base-url", fake.url)
    assert code == 1
    line = one_line(capsys.readouterr().err)
    assert "daily request budget is spent" in line and "nothing was written" in line, line
    assert "--resume" not in line
    assert left_in(tmp_path) == []


@pytest.mark.parametrize("source", ["location", "ids"])
async def test_force_with_a_wrong_url_keeps_the_old_output(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GHL_TOKEN", "pit-some-token")
    out = tmp_path / "m.jsonl"
    out.write_text('{"id":"an earlier export"}\n')
    what = ["--location", "someLocation"] if source == "location" else ["someConversation"]
    argv = ("export", *what, "--out", str(out), "--force", "--base-url", UNREACHABLE)
    assert await run_cli(*argv) == 2
    assert read_lines(out) == [{"id": "an earlier export"}]
    assert left_in(tmp_path) == ["m.jsonl"]
