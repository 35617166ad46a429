"""``ghl-async export --location`` through the location export, its fallback, and kill -9."""

from __future__ import annotations

import asyncio
import json
import signal
from collections import Counter
from pathlib import Path

import pytest

from ghl_async import RateLimit
from ghl_async.testing import FakeHighLevel
from tests.support.cli import by_conversation, cli_process, expected, read_lines, run_cli
from tests.support.helpers import ServerFactory

pytestmark = pytest.mark.anyio

ROOMY = RateLimit(100_000, 1.0)


def ids_of(path: Path) -> list[str]:
    return [str(row["id"]) for row in read_lines(path)]


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
        checkpoint = (tmp_path / "m.jsonl.checkpoint").read_text().splitlines()
        assert json.loads(checkpoint[0])["source"] == f"export:{fake.location_id}"
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
