"""``ghl-async export --location`` through the location export, its fallback, and kill -9."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ghl_async import RateLimit
from ghl_async.testing import FakeHighLevel, Faults
from tests.support.cli import by_conversation, cli_process, expected, read_lines, run_cli
from tests.support.helpers import ServerFactory

pytestmark = pytest.mark.anyio

ROOMY = RateLimit(100_000, 1.0)


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def ids_of(path: Path) -> list[str]:
    return [str(row["id"]) for row in read_lines(path)]


def records_of(checkpoint: Path) -> list[tuple[int, dict[str, Any]]]:
    """The checkpoint's complete ``[size, state]`` records (a torn tail left out)."""
    header, *records = checkpoint.read_bytes().split(b"\n")[:-1]
    assert json.loads(header)["format"].startswith("ghl-async-jsonl/")
    return [(int(size), state) for size, state in map(json.loads, records)]


def last_record(checkpoint: Path) -> tuple[int, dict[str, Any]]:
    """The checkpoint's last complete record: after it, the output is ``size`` bytes."""
    records = records_of(checkpoint)
    assert records, "no record committed"
    return records[-1]


async def test_location_export_writes_every_message_once_in_few_requests(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with server(conversations=60, messages=(0, 40), seed=51, rate_limit=ROOMY) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        out = tmp_path / "loc.jsonl"
        code = await run_cli(
            "export", "--location", fake.location_id, "--out", str(out), "--base-url", fake.url
        )
        assert code == 0
        ids = ids_of(out)
        assert len(ids) == len(set(ids)) == fake.total_messages
        assert fake.stats.by_route["messages"] == 0 and fake.stats.by_route["search"] == 0
        # ceil(non-emails / 500) + ceil(emails / 500) pages, give or take a final one
        assert fake.stats.by_route["export"] <= fake.total_messages // 500 + 4
        rows = read_lines(out)
        # the same rows per conversation as the fan-out, in the export's order
        assert {c: sorted(v) for c, v in by_conversation(rows).items()} == {
            c: sorted(v) for c, v in expected(fake, fake.conversation_ids).items()
        }
        assert "falling back" not in capsys.readouterr().err


@pytest.mark.parametrize("status", [403, 404])
async def test_a_refused_export_falls_back_to_search_and_fan_out(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    status: int,
) -> None:
    async with server(conversations=20, messages=(0, 30), seed=52, export_refusal=status) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        out = tmp_path / "fb.jsonl"
        argv = ("export", "--location", fake.location_id, "--out", str(out))
        assert await run_cli(*argv, "--base-url", fake.url) == 0
        err = capsys.readouterr().err
        assert "falling back to conversation search + fan-out" in err
        assert "location export" in err
        assert by_conversation(read_lines(out)) == expected(fake, fake.conversation_ids)
        # A resume of the fallback resumes the fallback (nothing left to do).
        before = out.read_bytes()
        assert await run_cli(*argv, "--base-url", fake.url, "--resume") == 0
        assert out.read_bytes() == before


async def test_channel_contact_since_and_email_bodies(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with server(conversations=10, messages=(5, 40), seed=53) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        base = ("--base-url", fake.url, "--location", fake.location_id)
        emails = tmp_path / "emails.jsonl"
        assert (
            await run_cli(
                "export", *base, "--channel", "email", "--email-bodies", "--out", str(emails)
            )
            == 0
        )
        rows = read_lines(emails)
        assert rows and {r["messageType"] for r in rows} == {"TYPE_EMAIL"}
        for row in rows:
            wanted = row["meta"]["email"]["messageIds"]  # type: ignore[index]
            assert [e["id"] for e in row["emails"]] == wanted  # type: ignore[attr-defined]
        conversation = fake.conversation_ids[3]
        contact = fake.messages(conversation)[0]["contactId"]
        mine = tmp_path / "contact.jsonl"
        assert await run_cli("export", *base, "--contact", contact, "--out", str(mine)) == 0
        assert sorted(ids_of(mine)) == sorted(m["id"] for m in fake.messages(conversation))
        added = fake.add_message(fake.conversation_ids[5])
        since = added["dateAdded"]
        new = tmp_path / "new.jsonl"
        assert await run_cli("export", *base, "--since", since, "--out", str(new)) == 0
        assert ids_of(new) == [added["id"]]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--channel", "sms"], "--channel needs --location"),
        (["--until", "2025-01-01"], "--until needs --location"),
    ],
)
async def test_location_flags_without_location_are_usage_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    says: str,
) -> None:
    monkeypatch.setenv("GHL_TOKEN", "t")
    code = await run_cli("export", "conv1", *argv, "--out", str(tmp_path / "x.jsonl"))
    assert code == 2
    assert says in capsys.readouterr().err


async def test_bad_dates_and_channels_are_usage_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await run_cli("export", "--location", "loc1", "--since", "yesterday") == 2
    assert "not an ISO 8601 date" in capsys.readouterr().err
    assert await run_cli("export", "--location", "loc1", "--channel", "fax") == 2
    assert "not a channel" in capsys.readouterr().err


async def test_killed_mid_location_export_then_resumed_gives_every_message_once(
    tmp_path: Path,
) -> None:
    async with FakeHighLevel(
        conversations=60, messages=(100, 300), seed=54, rate_limit=ROOMY
    ) as fake:
        out = tmp_path / "m.jsonl"
        argv = (
            "export",
            "--location",
            fake.location_id,
            "--out",
            str(out),
            "--base-url",
            fake.url,
            "--rate",
            "5/1s",  # about 25 pages: slow enough to be killed part way
        )
        env = {"GHL_TOKEN": fake.token}
        process = await cli_process(*argv, env=env)
        for _ in range(2000):
            await asyncio.sleep(0.01)
            if out.exists() and out.stat().st_size > 2_000_000:
                break
        process.send_signal(signal.SIGKILL)
        await process.communicate()
        assert process.returncode == -signal.SIGKILL
        assert out.stat().st_size > 0
        # The checkpoint names this location's export and never covers more than the file.
        size, state = last_record(tmp_path / "m.jsonl.checkpoint")
        assert state["locationId"] == fake.location_id and not state["done"]
        assert 0 < size <= out.stat().st_size
        first_run = fake.stats.by_route["export"]
        resumed = await cli_process(*argv[:-2], "--resume", env=env)
        _, err = await resumed.communicate()
        assert resumed.returncode == 0, err.decode()
        # The resume started from the checkpoint, not from the top: it made fewer
        # requests than a whole export takes.
        emails = sum(
            m.get("messageType") == "TYPE_EMAIL"
            for c in fake.conversation_ids
            for m in fake.messages(c)
        )
        whole = -(-(fake.total_messages - emails) // 500) + -(-emails // 500)
        assert first_run >= 2
        assert fake.stats.by_route["export"] - first_run < whole
    counts = Counter(ids_of(out))
    assert len(counts) == fake.total_messages
    assert max(counts.values()) == 1


@pytest.mark.slow
@pytest.mark.parametrize("refusal", [None, 404], ids=["route", "fallback"])
async def test_killed_at_many_instants_the_file_holds_every_message_once(
    tmp_path: Path, refusal: int | None
) -> None:
    rng = random.Random(2027)
    faults = Faults(latency=0.2)  # a page takes a while: kills land mid-run
    async with FakeHighLevel(
        # The route reads 500 messages a page, the fallback 100: sizes that 12 kills do
        # not finish, and the last run does quickly.
        conversations=100 if refusal is None else 40,
        messages=(50, 400),
        seed=56,
        faults=faults,
        rate_limit=ROOMY,
        export_refusal=refusal,
    ) as fake:
        out = tmp_path / "m.jsonl"
        checkpoint = tmp_path / "m.jsonl.checkpoint"
        argv = (
            "export", "--location", fake.location_id, "--out", str(out), "--base-url",
            fake.url, "--concurrency", "2", "--resume",  # resuming nothing yet is starting
        )  # fmt: skip
        env = {"GHL_TOKEN": fake.token}
        killed = 0
        for _ in range(40):  # until 12 runs were killed, or one ran to the end
            process = await cli_process(*argv, env=env)
            await asyncio.sleep(rng.uniform(0.3, 2.0))  # some while still starting up
            if process.returncode is not None:
                break
            process.kill()
            await process.communicate()
            killed += 1
            if checkpoint.exists() and checkpoint.stat().st_size:
                # The state is never ahead of the data.
                assert all(size <= out.stat().st_size for size, _ in records_of(checkpoint))
            if killed == 12:
                break
        last = await cli_process(*argv, env=env)
        _, err = await last.communicate()
        assert last.returncode == 0, err.decode()
        want = {m["id"] for c in fake.conversation_ids for m in fake.messages(c)}
    assert killed == 12
    counts = Counter(ids_of(out))
    assert set(counts) == want
    assert max(counts.values()) == 1
    size, state = last_record(checkpoint)
    assert size == out.stat().st_size and state["done"]
    assert state["fallback"] == (refusal is not None)
    if refusal is None:  # the route never reads a page twice: the count is the location's
        assert state["messages"] == len(want)


async def test_an_output_that_cannot_be_used_is_refused_in_one_line_and_left_alone(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with server(conversations=4, messages=(5, 30), seed=57) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        out = tmp_path / "m.jsonl"
        base = ("export", "--location", fake.location_id, "--out", str(out))
        assert await run_cli(*base, "--base-url", fake.url) == 0
        before = out.read_bytes()
        capsys.readouterr()
        refusals = [
            ((), "exists; pass --resume to continue that export or --force"),
            (("--resume", "--channel", "sms"), "with other arguments"),
            (("--resume", "--location", "otherLocation"), "holds the export of location"),
        ]
        for extra, says in refusals:
            assert await run_cli(*base, "--base-url", fake.url, *extra) == 2
            line = one_line(capsys.readouterr().err)
            assert says in line and "--force" in line, line
        assert out.read_bytes() == before
        # The same command resumes (nothing left to do); --force starts over.
        assert await run_cli(*base, "--base-url", fake.url, "--resume") == 0
        assert out.read_bytes() == before
        assert await run_cli(*base, "--base-url", fake.url, "--force") == 0
        assert sorted(ids_of(out)) == sorted(
            m["id"] for c in fake.conversation_ids for m in fake.messages(c)
        )


async def test_stdout_and_a_plain_progress_line_of_pages(
    server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as after `pip install ghl-async`
    async with server(conversations=6, messages=(5, 30), seed=58) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        argv = ("export", "--location", fake.location_id, "--out", "-", "--base-url", fake.url)
        assert await run_cli(*argv, "--progress") == 0
        captured = capsysbinary.readouterr()
        assert await run_cli(*argv, "--resume") == 2
        refused = capsysbinary.readouterr().err.decode()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert len(rows) == len({r["id"] for r in rows}) == fake.total_messages
    err = captured.err.decode()
    assert "export: 1 pages, " in err and f"{fake.total_messages} messages" in err
    assert "--resume needs an output file, not stdout" in one_line(refused)


async def test_a_full_disk_stops_in_one_line_and_resume_completes_exactly_once(
    tmp_path: Path,
) -> None:
    async with FakeHighLevel(conversations=30, messages=(50, 300), seed=59) as fake:
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
        env = {"GHL_TOKEN": fake.token}
        # The file-size limit stands for a disk that fills up part way (EFBIG, like ENOSPC).
        limit = "import resource; resource.setrlimit(resource.RLIMIT_FSIZE, (600000, 600000)); "
        full = await cli_process(*argv, env=env, setup=limit)
        _, err = await full.communicate()
        assert full.returncode == 3, err.decode()
        line = one_line(err.decode())
        assert f"cannot write {out}: File too large" in line and "--resume" in line
        # Whole lines only, and the checkpoint covers them all: the pages before the
        # failure are not read again.
        assert 0 < out.stat().st_size <= 600000
        assert out.read_bytes().endswith(b"\n")
        assert last_record(tmp_path / "m.jsonl.checkpoint")[0] == out.stat().st_size
        resumed = await cli_process(*argv, "--resume", env=env)
        _, err = await resumed.communicate()
        assert resumed.returncode == 0, err.decode()
        want = {m["id"] for c in fake.conversation_ids for m in fake.messages(c)}
    counts = Counter(ids_of(out))
    assert set(counts) == want
    assert max(counts.values()) == 1
