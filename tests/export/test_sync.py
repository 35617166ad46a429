"""Incremental sync (``ghl-async sync`` and ``run_sync``) against FakeHighLevel."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ghl_async import Client, RetryPolicy, errors
from ghl_async._params import high_water, updated_at
from ghl_async.export.sync import STATE_FILE, PassMark, SyncRefused, advance, run_sync, wanted
from ghl_async.models import Message
from tests.support.cli import run_cli
from tests.support.helpers import ServerFactory

pytestmark = pytest.mark.anyio

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)


def message(message_id: str, added: int, updated: int | None = None) -> Message:
    fields: dict[str, Any] = {"id": message_id, "dateAdded": (T0 + timedelta(seconds=added))}
    if updated is not None:
        fields["dateUpdated"] = T0 + timedelta(seconds=updated)
    return msgspec.convert(fields, Message)


def test_wanted_and_advance_keep_the_boundary_once() -> None:
    mark = PassMark(mark=T0 + timedelta(seconds=10), ids=["a"])
    assert not wanted(message("a", 10), mark)  # at the mark and delivered
    assert wanted(message("b", 10), mark)  # at the mark, new
    assert not wanted(message("c", 9), mark)  # older
    assert wanted(message("d", 11), mark)  # newer
    assert wanted(message("a", 1, updated=12), mark)  # edited after the mark
    assert wanted(msgspec.convert({"id": "x"}, Message), mark)  # undated: always
    assert wanted(message("e", 0), PassMark())  # no mark: everything
    moved = advance(mark, message("b", 10))
    assert moved.mark == mark.mark and moved.ids == ["a", "b"]
    moved = advance(moved, message("f", 20))
    assert moved.mark == T0 + timedelta(seconds=20) and moved.ids == ["f"]
    assert advance(moved, message("g", 5)) == moved
    assert high_water([message("a", 1, 30), message("b", 20)], key=updated_at) == (
        T0 + timedelta(seconds=30),
        frozenset({"a"}),
    )


def rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_first_run_everything_then_only_new_and_changed(
    server: ServerFactory, tmp_path: Path
) -> None:
    async with server(conversations=15, messages=(0, 60), seed=61) as fake:
        out = tmp_path / "sync"
        async with Client(fake.token, base_url=fake.url) as client:
            first = await run_sync(client, fake.location_id, str(out))
            assert first.file is not None and first.run == 1
            ids = [r["id"] for r in rows(Path(first.file))]
            assert len(ids) == len(set(ids)) == fake.total_messages

            # Nothing new: one request per pass, nothing written, state untouched.
            state_before = (out / STATE_FILE).read_bytes()
            for _ in range(2):
                idle = await run_sync(client, fake.location_id, str(out))
                assert idle.file is None and idle.messages == 0
                assert idle.requests <= 2
            assert (out / STATE_FILE).read_bytes() == state_before
            assert sorted(p.name for p in out.glob("messages-*")) == ["messages-000001.jsonl"]

            added = fake.add_message(fake.conversation_ids[0])
            email = fake.add_message(fake.conversation_ids[1], messageType="TYPE_EMAIL", type=3)
            edited = fake.messages(fake.conversation_ids[2])[-1]["id"]
            fake.update_message(edited, status="read")
            second = await run_sync(client, fake.location_id, str(out))
            assert second.run == 2 and second.file is not None
            assert second.file.endswith("messages-000002.jsonl")
            got = {r["id"]: r for r in rows(Path(second.file))}
            assert set(got) == {added["id"], email["id"], edited}
            assert got[edited]["status"] == "read"
            assert second.requests <= 2

            # An edit of a message delivered at the mark comes again; nothing else does.
            fake.update_message(added["id"], status="read")
            third = await run_sync(client, fake.location_id, str(out))
            assert third.file is not None
            assert [r["id"] for r in rows(Path(third.file))] == [added["id"]]
            assert (await run_sync(client, fake.location_id, str(out))).file is None


async def test_a_crashed_run_is_done_again_under_its_number(
    server: ServerFactory, tmp_path: Path
) -> None:
    async with server(conversations=6, messages=(5, 30), seed=62) as fake:
        out = tmp_path / "sync"
        once = RetryPolicy(max_attempts=1)
        async with Client(fake.token, base_url=fake.url, retry=once) as client:
            await run_sync(client, fake.location_id, str(out))
            fake.add_message(fake.conversation_ids[0])
            # The run fails: no file, the old state; the next run does it again.
            fake.inject("500", count=1, route="export")
            with pytest.raises(errors.ServerError):
                await run_sync(client, fake.location_id, str(out))
            assert not (out / "messages-000002.jsonl").exists()
            again = await run_sync(client, fake.location_id, str(out))
            assert again.run == 2 and again.messages == 1


async def test_state_of_another_location_is_refused(server: ServerFactory, tmp_path: Path) -> None:
    async with server(conversations=2, messages=5) as fake:
        out = tmp_path / "sync"
        out.mkdir()
        (out / STATE_FILE).write_text(
            json.dumps({"format": "ghl-async-sync/1", "location": "other", "baseUrl": fake.url})
        )
        async with Client(fake.token, base_url=fake.url) as client:
            with pytest.raises(SyncRefused, match="belongs to location other"):
                await run_sync(client, fake.location_id, str(out))
        assert fake.stats.requests == 0


async def test_sync_command(
    server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with server(conversations=8, messages=(0, 30), seed=63) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        argv: tuple[str, ...] = (
            "sync",
            "--location",
            fake.location_id,
            "--out",
            str(tmp_path),
            "--base-url",
            fake.url,
        )
        assert await run_cli(*argv) == 0
        assert "run 1 wrote" in capsys.readouterr().err
        assert await run_cli(*argv) == 0
        assert "nothing new" in capsys.readouterr().err
    async with server(conversations=2, export_refusal=403) as fake:
        monkeypatch.setenv("GHL_TOKEN", fake.token)
        argv = ("sync", "--location", fake.location_id, "--out", str(tmp_path / "x"))
        assert await run_cli(*argv, "--base-url", fake.url) == 2
        assert "sync needs the location export" in capsys.readouterr().err
