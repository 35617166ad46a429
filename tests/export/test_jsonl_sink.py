"""JsonlSink: the Sink contract over one JSON Lines file and its checkpoint.

Real files throughout; the pipeline runs against FakeHighLevel over a real socket.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ghl_async import Client, RetryPolicy, errors
from ghl_async.export import JsonlSink
from ghl_async.export import jsonl as jsonl_module
from ghl_async.export.files import message_line
from ghl_async.export.pipeline import ExportResult, export_location
from ghl_async.export.sink import Batch, ExportState, Sink
from ghl_async.models import Message
from ghl_async.testing import FakeHighLevel

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(max_attempts=3, backoff_base=0.001, backoff_cap=0.01)
Mode = Literal["new", "resume", "force"]


def state(**fields: Any) -> ExportState:
    return ExportState(location_id=fields.pop("location_id", "L1"), query="q", **fields)


def messages(*ids: str, conversation: str | None = "c1") -> list[Message]:
    return [Message(id=i, body=f"text {i}", conversation_id=conversation) for i in ids]


def batch(*ids: str, conversation_ids: list[str | None] | None = None, **fields: Any) -> Batch:
    return Batch(
        messages=messages(*ids),
        conversation_ids=conversation_ids or [],
        state=state(**fields),
    )


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """The checkpoint's complete records after its header."""
    header, *rest = Path(str(path) + ".checkpoint").read_bytes().split(b"\n")[:-1]
    assert json.loads(header) == {"format": jsonl_module.CHECKPOINT_FORMAT}
    return [(int(size), found) for size, found in map(json.loads, rest)]


def checkpoint_of(out: Path) -> Path:
    return Path(str(out) + ".checkpoint")


def snapshot(out: Path) -> tuple[bytes | None, bytes | None]:
    """The output's and the checkpoint's bytes (``None``: no such file)."""
    return tuple(  # type: ignore[return-value]
        path.read_bytes() if path.exists() else None for path in (out, checkpoint_of(out))
    )


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)


def damage(out: Path, how: str, cut: int = 0) -> None:
    """Break an export as a crash, a user or an older ghl-async would."""
    checkpoint = checkpoint_of(out)
    if how == "no-checkpoint":
        checkpoint.unlink()
    elif how == "old-checkpoint":  # what ghl-async export --location wrote before
        checkpoint.write_bytes(b'{"format":"ghl-async-export/2","source":"export:L1"}\n')
    elif how == "shorter":
        out.write_bytes(out.read_bytes()[:10])
    elif how == "missing":
        out.unlink()
    elif how == "cut":
        checkpoint.write_bytes(checkpoint.read_bytes()[:cut])


def sink_of(path: Path, mode: Mode = "resume", **kw: Any) -> JsonlSink:
    kw.setdefault("commit_every", 0)
    return JsonlSink(str(path), mode=mode, **kw)


# -- the contract ---------------------------------------------------------------------


async def test_it_is_a_sink_and_load_returns_what_was_committed(tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    sink = sink_of(out)
    assert isinstance(sink, Sink)
    async with sink:
        assert await sink.load("L1") is None
        await sink.commit(batch("m1", "m2", cursor="k1", messages=2))
        await sink.commit(batch("m3", cursor=None, done=True, messages=3))
    async with sink_of(out) as again:
        loaded = await again.load("L1")
    assert loaded == state(cursor=None, done=True, messages=3)
    assert [row["id"] for row in lines(out)] == ["m1", "m2", "m3"]
    assert records(out)[-1][0] == out.stat().st_size


async def test_lines_are_todays_format_with_the_batchs_conversation_ids(tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    route = messages("m1", conversation="own")
    fallback = messages("m2", conversation=None)
    async with sink_of(out) as sink:
        await sink.load("L1")
        await sink.commit(Batch(messages=route, state=state(messages=1)))
        await sink.commit(
            Batch(messages=fallback, conversation_ids=["listed"], state=state(messages=2))
        )
    assert out.read_bytes() == message_line("own", route[0]) + message_line("listed", fallback[0])
    assert [row["conversationId"] for row in lines(out)] == ["own", "listed"]


async def test_the_output_is_durable_before_the_record_that_covers_it(tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    seen: list[tuple[int, int]] = []

    def fsync(fd: int) -> None:
        # What the disk holds when the lines are made durable: no record covers them yet.
        os.fsync(fd)
        covered = records(out)[-1][0] if records(out) else 0
        seen.append((os.fstat(fd).st_size, covered))

    async with sink_of(out, fsync=fsync) as sink:
        await sink.commit(batch("m1", messages=1))
        first = out.stat().st_size
        await sink.commit(batch("m2", messages=2))
    assert seen == [(first, 0), (out.stat().st_size, first)]
    assert records(out)[-1][0] == out.stat().st_size


async def test_records_are_grouped_one_fsync_per_interval_and_one_at_close(
    tmp_path: Path,
) -> None:
    out = tmp_path / "m.jsonl"
    now = [0.0]
    synced: list[int] = []
    sink = sink_of(out, commit_every=0.5, clock=lambda: now[0], fsync=synced.append)
    async with sink:
        await sink.commit(batch("m1", messages=1))
        await sink.commit(batch("m2", messages=2))
        assert synced == [] and records(out) == []  # written, not yet committed
        now[0] = 0.5
        await sink.commit(batch("m3", messages=3))
        assert len(synced) == 1
        # One record for the three batches: the latest state covers them all.
        assert [found["messages"] for _, found in records(out)] == [3]
        await sink.commit(batch("m4", done=True, messages=4))
    assert len(synced) == 2
    assert records(out)[-1] == (
        out.stat().st_size,
        msgspec.to_builtins(state(done=True, messages=4)),
    )


async def test_a_torn_tail_is_cut_and_later_records_count(tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    async with sink_of(out) as sink:
        await sink.commit(batch("m1", cursor="k1", messages=1))
    size = out.stat().st_size
    append(out, message_line("c1", messages("m2")[0]))  # lines no record covers
    append(out, b'{"id":"m3","bo')  # and a half-written one
    append(checkpoint_of(out), b'[999,{"locationId":"L1","qu')  # a record torn by kill -9
    async with sink_of(out) as sink:
        assert await sink.load("L1") == state(cursor="k1", messages=1)
        assert out.stat().st_size == size
        await sink.commit(batch("m2", done=True, messages=2))
    assert [row["id"] for row in lines(out)] == ["m1", "m2"]
    assert [found["messages"] for _, found in records(out)] == [1, 2]
    async with sink_of(out) as sink:
        assert await sink.load("L1") == state(done=True, messages=2)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_cut_of_the_checkpoint_resumes_from_its_last_whole_record(data: st.DataObject) -> None:
    import anyio

    async def run() -> None:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "m.jsonl"
            async with sink_of(out) as sink:
                for i in range(1, 5):
                    await sink.commit(batch(f"m{i}", cursor=f"k{i}", messages=i))
            whole = snapshot(out)[1] or b""
            header = len(whole.split(b"\n", 1)[0]) + 1
            cut = data.draw(st.integers(header, len(whole)), label="cut")
            damage(out, "cut", cut)
            kept = records(out)
            async with sink_of(out) as sink:
                loaded = await sink.load("L1")
            if kept:
                size, found = kept[-1]
                assert loaded is not None and loaded.messages == found["messages"]
                assert out.stat().st_size == size
                assert len(lines(out)) == found["messages"]
            else:
                assert loaded is None and out.stat().st_size == 0

    anyio.run(run)


async def test_stdout_is_a_stream_with_nothing_to_resume(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    async with JsonlSink("-") as sink:
        assert sink.stream
        assert await sink.load("L1") is None
        await sink.commit(batch("m1", messages=1))
        await sink.commit(batch("m2", done=True, messages=2))
    assert [json.loads(x)["id"] for x in capsysbinary.readouterr().out.splitlines()] == [
        "m1",
        "m2",
    ]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
async def test_a_full_device_is_a_sink_error_and_the_sink_stops() -> None:
    async with JsonlSink("/dev/full", mode="new") as sink:
        assert sink.stream and await sink.load("L1") is None
        with pytest.raises(errors.SinkError, match="cannot write /dev/full: No space") as caught:
            await sink.commit(batch("m1", messages=1))
        assert isinstance(caught.value.__cause__, OSError)
        assert caught.value.__cause__.errno == errno.ENOSPC
        with pytest.raises(errors.SinkError):  # and refuses every later commit
            await sink.commit(batch("m2", messages=2))


async def test_force_starts_over_and_new_takes_an_empty_file(tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    async with sink_of(out) as sink:
        await sink.commit(batch("m1", messages=1))
    async with sink_of(out, "force") as sink:
        assert out.read_bytes() == b""
        assert await sink.load("L1") is None
        await sink.commit(batch("m9", messages=1))
    assert [row["id"] for row in lines(out)] == ["m9"]
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    async with sink_of(empty, "new") as sink:
        await sink.commit(batch("m1", messages=1))
    assert len(lines(empty)) == 1


# -- refusals -------------------------------------------------------------------------


async def _exported(out: Path) -> bytes | None:
    async with sink_of(out) as sink:
        await sink.commit(batch("m1", "m2", cursor="k", messages=2))
    return snapshot(out)[0]


@pytest.mark.parametrize(
    ("damage_done", "mode", "says"),
    [
        ("none", "new", "exists; pass --resume to continue that export or --force"),
        ("no-checkpoint", "resume", "it has no checkpoint; start over with --force"),
        ("old-checkpoint", "resume", "checkpoint is from another version of ghl-async"),
        ("shorter", "resume", "has 10 bytes but its checkpoint records"),
        ("missing", "resume", "is missing but its checkpoint records"),
    ],
)
async def test_a_file_that_cannot_be_used_is_refused_before_a_byte_changes(
    tmp_path: Path, damage_done: str, mode: Mode, says: str
) -> None:
    out = tmp_path / "m.jsonl"
    await _exported(out)
    damage(out, damage_done)
    before = snapshot(out)
    with pytest.raises(errors.SinkError, match=says) as caught:
        async with sink_of(out, mode):
            pass
    assert "\n" not in str(caught.value)
    assert snapshot(out) == before


async def test_a_file_of_another_location_is_refused_at_load(tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    before = await _exported(out)
    async with sink_of(out) as sink:
        with pytest.raises(errors.SinkError, match="holds the export of location L1"):
            await sink.load("L2")
        with pytest.raises(errors.SinkError, match="load it to resume"):
            await sink.commit(batch("m3", location_id="L2"))
    assert out.read_bytes() == before


async def test_a_second_sink_on_the_same_file_is_refused_at_once(tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    async with sink_of(out) as first:
        await first.commit(batch("m1", messages=1))
        for mode in ("resume", "force", "new"):
            with pytest.raises(errors.SinkError, match="another export is writing"):
                async with sink_of(out, mode):
                    pass
        assert [row["id"] for row in lines(out)] == ["m1"]
    async with sink_of(out) as again:  # the lock goes with the first sink
        assert await again.load("L1") == state(messages=1)


@pytest.mark.parametrize("where", ["directory", "missing-folder"])
async def test_a_path_that_cannot_be_written_is_a_sink_error(tmp_path: Path, where: str) -> None:
    out = tmp_path if where == "directory" else tmp_path / "nope" / "m.jsonl"
    with pytest.raises(errors.SinkError, match="cannot write"):
        async with sink_of(out):
            pass


async def test_a_switch_to_the_fallback_part_way_skips_what_the_route_wrote(
    tmp_path: Path,
) -> None:
    # Lines are appended, not upserted: what the fallback reads again is skipped, in
    # the run that switched and in a run resuming it.
    out = tmp_path / "m.jsonl"
    listed = messages("m1", "m2", "m3", conversation=None)

    def fallback(*found: Message, **fields: Any) -> Batch:
        ids: list[str | None] = ["c1"] * len(found)
        return Batch(messages=list(found), conversation_ids=ids, state=state(**fields))

    async with sink_of(out) as sink:
        await sink.commit(batch("m1", cursor="k1", messages=1))
        await sink.commit(
            fallback(listed[0], listed[1], fallback=True, conversations={"c1": "m2"})
        )
    async with sink_of(out) as sink:
        loaded = await sink.load("L1")
        assert loaded is not None and loaded.fallback
        await sink.commit(fallback(*listed, fallback=True, conversations={"c1": None}))
    assert [row["id"] for row in lines(out)] == ["m1", "m2", "m3"]


async def test_a_stream_refuses_a_switch_to_the_fallback_part_way(
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    async with JsonlSink("-") as sink:
        await sink.commit(batch("m1", cursor="k1", messages=1))
        with pytest.raises(errors.SinkError, match="export to a file instead"):
            await sink.commit(batch("m1", fallback=True, messages=2))
    assert len(capsysbinary.readouterr().out.splitlines()) == 1


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"path": 3}, TypeError),
        ({"path": ""}, ValueError),
        ({"path": "a\x00b"}, ValueError),
        ({"path": "m.jsonl", "mode": "append"}, ValueError),
        ({"path": "m.jsonl", "commit_every": -1}, ValueError),
        ({"path": "m.jsonl", "commit_every": "1"}, TypeError),
    ],
)
def test_bad_arguments_are_refused_before_anything_opens(
    kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        JsonlSink(**kwargs)


async def test_a_sink_is_entered_once_and_used_only_open(tmp_path: Path) -> None:
    sink = sink_of(tmp_path / "m.jsonl")
    with pytest.raises(RuntimeError, match="not open"):
        await sink.load("L1")
    async with sink:
        pass
    with pytest.raises(RuntimeError, match="entered once"):
        async with sink:
            pass


async def test_a_long_checkpoint_is_compacted_to_its_last_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jsonl_module, "_COMPACT_BYTES", 2000)
    out = tmp_path / "m.jsonl"
    async with sink_of(out) as sink:
        for i in range(1, 80):
            await sink.commit(batch(f"m{i}", cursor=f"k{i}", messages=i))
    assert len(snapshot(out)[1] or b"") < 4000
    assert records(out)[-1] == (
        out.stat().st_size,
        msgspec.to_builtins(state(cursor="k79", messages=79)),
    )
    async with sink_of(out) as sink:
        assert await sink.load("L1") == state(cursor="k79", messages=79)
    assert len(lines(out)) == 79


# -- the pipeline into a file ----------------------------------------------------------


def all_ids(fake: FakeHighLevel) -> set[str]:
    return {m["id"] for c in fake.conversation_ids for m in fake.messages(c)}


class Stop(Exception):
    """Stops a run after a number of commits (the test's own, not the library's)."""


def stop_after(commits: int) -> Callable[[ExportResult], None]:
    def on_batch(result: ExportResult) -> None:
        if result.pages + (result.state is not None and result.state.done) >= commits:
            raise Stop

    return on_batch


@pytest.mark.parametrize("refusal", [None, 404], ids=["route", "fallback"])
@pytest.mark.parametrize("stop", [1, 2, 5])
@pytest.mark.parametrize("commit_every", [0, 60])
async def test_a_run_stopped_at_any_commit_resumes_to_every_message_exactly_once(
    tmp_path: Path, refusal: int | None, stop: int, commit_every: float
) -> None:
    out = tmp_path / "m.jsonl"
    async with FakeHighLevel(
        conversations=12, messages=(0, 450), seed=7, export_refusal=refusal
    ) as fake:
        async with Client(fake.token, base_url=fake.url, retry=FAST) as client:
            sink = JsonlSink(str(out), mode="new", commit_every=commit_every)
            with pytest.raises(Stop):
                async with sink:
                    await export_location(
                        client, fake.location_id, sink, on_batch=stop_after(stop)
                    )
            # What the checkpoint holds covers the file exactly: never ahead of it.
            size, found = records(out)[-1]
            assert size == out.stat().st_size
            assert found["fallback"] == (refusal is not None)
            async with JsonlSink(str(out)) as resumed:
                result = await export_location(client, fake.location_id, resumed)
        assert result.resumed and result.state is not None and result.state.done
        want = all_ids(fake)
    counts = Counter(row["id"] for row in lines(out))
    assert set(counts) == want
    assert max(counts.values()) == 1
    assert records(out)[-1][0] == out.stat().st_size


@pytest.mark.parametrize("stop", [None, 4, 9])
async def test_the_route_refused_part_way_then_stopped_and_resumed_writes_each_message_once(
    tmp_path: Path, stop: int | None
) -> None:
    out = tmp_path / "m.jsonl"
    async with FakeHighLevel(conversations=20, messages=(50, 300), seed=24) as fake:

        def plan_change(result: ExportResult) -> None:
            if result.pages == 2 and not result.fallback:
                fake.inject("404", 50, route="export")  # the route is gone for good
            if stop is not None and result.pages >= stop:
                raise Stop

        async with Client(fake.token, base_url=fake.url, retry=FAST) as client:
            sink = JsonlSink(str(out), mode="new", commit_every=0)
            try:
                async with sink:
                    result = await export_location(
                        client, fake.location_id, sink, on_batch=plan_change
                    )
                assert stop is None and result.fallback
            except Stop:
                async with JsonlSink(str(out)) as resumed:
                    result = await export_location(client, fake.location_id, resumed)
                assert result.resumed and result.fallback
        want = all_ids(fake)
    counts = Counter(row["id"] for row in lines(out))
    assert set(counts) == want
    assert max(counts.values()) == 1
    assert records(out)[-1][0] == out.stat().st_size


async def test_a_refused_cursor_restarting_its_pass_writes_each_message_once(
    tmp_path: Path,
) -> None:
    out = tmp_path / "m.jsonl"
    async with FakeHighLevel(conversations=30, messages=(50, 400), seed=21) as fake:

        def refuse_a_cursor(result: ExportResult) -> None:
            if result.pages in (2, 5):
                fake.inject("422", route="export")  # "Invalid cursor" after a pause

        async with (
            Client(fake.token, base_url=fake.url, retry=FAST) as client,
            JsonlSink(str(out), mode="new") as sink,
        ):
            result = await export_location(
                client, fake.location_id, sink, on_batch=refuse_a_cursor
            )
        assert not result.fallback
        want = all_ids(fake)
    counts = Counter(row["id"] for row in lines(out))
    assert set(counts) == want
    assert max(counts.values()) == 1
