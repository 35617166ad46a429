"""The export's exactly-once core, directly: the checkpoint file and the sink's ordering."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ghl_async import Message, MessagesPage
from ghl_async.export.files import (
    CHECKPOINT_FORMAT,
    Checkpoint,
    ExportOptions,
    ExportRefused,
    OutputError,
    _Record,
    _Sink,
    complete_lines,
    ids_source,
    page_cursor,
)

OPTIONS = ExportOptions(
    format=CHECKPOINT_FORMAT, source=ids_source(["c1", "c2"]), types=None, base_url="http://h"
)
HEADER = msgspec.json.encode(OPTIONS) + b"\n"


def record(conversation_id: str, cursor: str | None, done: bool, size: int) -> bytes:
    return msgspec.json.encode(_Record(conversation_id, cursor, done, size)) + b"\n"


def page(*ids: str, cursor: str | None = None, more: bool = True) -> MessagesPage:
    messages = [Message(id=i, body=f"text {i}") for i in ids]
    return MessagesPage(messages=messages, last_message_id=cursor, next_page=more)


def parsed(data: bytes) -> Checkpoint:
    state = Checkpoint()
    state.parse(data)
    return state


# -- complete_lines (shared with JsonlSink) ------------------------------------------


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        (b"", []),
        (b"torn", []),
        (b"a\n", [(b"a", 2)]),
        (b"a\nbc\n", [(b"a", 2), (b"bc", 5)]),
        (b"a\nb", [(b"a", 2)]),
        (b"\n\n", [(b"", 1), (b"", 2)]),
    ],
)
def test_complete_lines_leave_a_torn_last_line_out(
    data: bytes, lines: list[tuple[bytes, int]]
) -> None:
    assert list(complete_lines(data)) == lines


# -- Checkpoint.load ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "cursors", "done", "size", "valid"),
    [
        (b"", {}, set(), 0, 0),
        (HEADER, {}, set(), 0, len(HEADER)),
        (HEADER + record("c1", "m1", False, 10), {"c1": "m1"}, set(), 10, None),
        (
            HEADER + record("c1", "m1", False, 10) + b'["c1","m2",fa',
            {"c1": "m1"},
            set(),
            10,
            len(HEADER + record("c1", "m1", False, 10)),
        ),
        # A record cut just before its newline is torn too: appending would glue to it.
        (HEADER + record("c1", None, True, 10)[:-1], {}, set(), 0, len(HEADER)),
        (
            HEADER + record("c1", "m1", False, 10) + record("c1", None, True, 20),
            {},
            {"c1"},
            20,
            None,
        ),
        (HEADER + b"garbage\n" + record("c1", "m1", False, 10), {}, set(), 0, len(HEADER)),
    ],
    ids=["empty", "header", "one", "torn-tail", "no-newline", "done", "garbage-middle"],
)
def test_checkpoint_reads_complete_lines_up_to_the_first_torn_one(
    data: bytes, cursors: dict[str, str], done: set[str], size: int, valid: int | None
) -> None:
    state = parsed(data)
    assert state.cursors == cursors
    assert state.done == done
    assert state.size == size
    assert state.valid_bytes == (len(data) if valid is None else valid)


def test_a_checkpoint_without_header_is_not_trusted() -> None:
    state = parsed(record("c1", "m1", False, 10))
    assert state.options is None
    assert state.valid_bytes == 0
    assert state.cursors == {}


_records = st.lists(
    st.tuples(
        st.sampled_from(["c1", "c2", "c3"]),
        st.none() | st.text("abcdef0123", min_size=1, max_size=8),
        st.booleans(),
    ),
    max_size=12,
)


@given(_records, st.data())
def test_any_cut_of_a_checkpoint_loads_as_its_complete_records(
    rows: list[tuple[str, str | None, bool]], data: st.DataObject
) -> None:
    lines = [HEADER]
    size = 0
    for conversation_id, cursor, done in rows:
        size += 7
        lines.append(record(conversation_id, cursor, done, size))
    whole = b"".join(lines)
    cut = data.draw(st.integers(0, len(whole)))
    complete = 0
    ends = []
    for line in lines:
        complete += len(line)
        ends.append(complete)
    kept = [end for end in ends if end <= cut]
    state = parsed(whole[:cut])
    assert state.valid_bytes == (kept[-1] if kept else 0)
    # The same state as loading just the complete lines.
    reference = parsed(whole[: state.valid_bytes])
    assert (state.size, state.cursors, state.done) == (
        reference.size,
        reference.cursors,
        reference.done,
    )
    assert state.size == 7 * max(0, len(kept) - 1)


# -- the sink -------------------------------------------------------------------------


def open_sink(out: Path, *, resume: bool = False, force: bool = False, **kw: Any) -> _Sink:
    return _Sink(str(out), OPTIONS, resume=resume, force=force, **kw)


def test_the_output_is_durable_before_the_record_that_covers_it(tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    checkpoint = Path(str(out) + ".checkpoint")
    seen: list[tuple[int, int]] = []

    def fsync(fd: int) -> None:
        # What the disk holds when the output is made durable: the lines, not the record.
        os.fsync(fd)
        seen.append((out.stat().st_size, len(Checkpoint.load(str(checkpoint)).cursors)))

    sink = open_sink(out, fsync=fsync, commit_every=0)
    try:
        sink.page("c1", page("m1", "m2", cursor="m2"))
        first = out.stat().st_size
        sink.page("c2", page("m3", cursor="m3"))
    finally:
        sink.close()
    assert seen == [(first, 0), (out.stat().st_size, 1)]
    assert Checkpoint.load(str(checkpoint)).size == out.stat().st_size


def test_records_are_committed_in_batches_after_one_fsync(tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    checkpoint = str(out) + ".checkpoint"
    now = [0.0]
    synced: list[int] = []

    def fsync(fd: int) -> None:
        synced.append(out.stat().st_size)
        # No record covers the lines being made durable yet.
        assert Checkpoint.load(checkpoint).size < out.stat().st_size

    sink = open_sink(out, fsync=fsync, commit_every=0.5, clock=lambda: now[0])
    try:
        sink.page("c1", page("m1", cursor="m1"))
        sink.page("c2", page("m2", cursor="m2"))
        assert synced == [] and Checkpoint.load(checkpoint).size == 0
        now[0] = 0.5
        sink.page("c3", page("m3", cursor="m3"))
        assert synced == [out.stat().st_size]
        assert Checkpoint.load(checkpoint).cursors == {"c1": "m1", "c2": "m2", "c3": "m3"}
        sink.page("c1", page("m4", cursor="m4", more=False))
    finally:
        sink.close()  # commits the rest
    state = Checkpoint.load(checkpoint)
    assert len(synced) == 2
    assert state.done == {"c1"} and state.size == out.stat().st_size


def test_the_cursor_is_the_last_message_when_the_server_leaves_it_out(tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    sink = open_sink(out)
    try:
        sink.page("c1", page("m1", "m2", cursor=None))
    finally:
        sink.close()
    assert Checkpoint.load(str(out) + ".checkpoint").cursors == {"c1": "m2"}
    assert page_cursor(page(cursor=None)) is None
    assert page_cursor(page("m1", cursor="server")) == "server"


def test_a_torn_record_is_cut_off_so_later_records_count(tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    checkpoint = Path(str(out) + ".checkpoint")
    sink = open_sink(out)
    sink.page("c1", page("m1", cursor="m1"))
    sink.close()
    size = out.stat().st_size
    with checkpoint.open("ab") as handle:
        handle.write(b'["c1","m9",fal')  # a crash (or ENOSPC) mid-record
    with out.open("ab") as handle:
        handle.write(b'{"id":"m9","bo')  # and the page it would have covered
    sink = open_sink(out, resume=True)
    assert sink.state.cursors == {"c1": "m1"}
    assert out.stat().st_size == size  # the uncovered bytes are cut back
    sink.page("c1", page("m2", cursor="m2", more=False))
    sink.close()
    state = Checkpoint.load(str(checkpoint))
    assert state.done == {"c1"}
    assert state.size == out.stat().st_size
    assert [msgspec.json.decode(x)["id"] for x in out.read_bytes().splitlines()] == ["m1", "m2"]


@pytest.mark.parametrize(
    ("wanted", "says"),
    [
        (msgspec.structs.replace(OPTIONS, types="TYPE_SMS"), "--types (all types)"),
        (msgspec.structs.replace(OPTIONS, source="location:abc"), "another list of"),
        (msgspec.structs.replace(OPTIONS, base_url="http://other"), "--base-url http://h"),
        (msgspec.structs.replace(OPTIONS, format="ghl-async-export/9"), "another version"),
    ],
)
def test_resume_with_other_options_is_refused(
    tmp_path: Path, wanted: ExportOptions, says: str
) -> None:
    out = tmp_path / "m.jsonl"
    sink = open_sink(out)
    sink.page("c1", page("m1", cursor="m1"))
    sink.close()
    before = out.read_bytes()
    with pytest.raises(ExportRefused, match="cannot resume") as caught:
        _Sink(str(out), wanted, resume=True, force=False)
    assert says in str(caught.value) and "--force" in str(caught.value)
    assert out.read_bytes() == before


@pytest.mark.parametrize("damage", ["missing", "shorter", "no-checkpoint", "old-format"])
def test_resume_refuses_an_output_that_does_not_match_and_never_pads(
    tmp_path: Path, damage: str
) -> None:
    out = tmp_path / "m.jsonl"
    checkpoint = Path(str(out) + ".checkpoint")
    sink = open_sink(out)
    sink.page("c1", page("m1", "m2", cursor="m2"))
    sink.close()
    if damage == "missing":
        out.unlink()
    elif damage == "shorter":
        out.write_bytes(out.read_bytes()[:10])
    elif damage == "no-checkpoint":
        checkpoint.unlink()
    else:
        checkpoint.write_bytes(record("c1", "m2", False, out.stat().st_size))
    with pytest.raises(ExportRefused, match="--force"):
        open_sink(out, resume=True)
    assert b"\0" not in (out.read_bytes() if out.exists() else b"")


def test_resume_with_nothing_written_yet_starts(tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    sink = open_sink(out, resume=True)
    sink.page("c1", page("m1", cursor="m1", more=False))
    sink.close()
    assert Checkpoint.load(str(out) + ".checkpoint").done == {"c1"}


def test_an_existing_output_needs_force(tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    out.write_bytes(b"precious\n")
    with pytest.raises(ExportRefused, match="--force"):
        open_sink(out)
    assert out.read_bytes() == b"precious\n"
    open_sink(out, force=True).close()
    assert out.read_bytes() == b""


def test_a_second_export_to_the_same_output_is_refused_at_once(tmp_path: Path) -> None:
    out = tmp_path / "m.jsonl"
    first = open_sink(out, commit_every=0)
    try:
        first.page("c1", page("m1", cursor="m1"))
        with pytest.raises(ExportRefused, match="another export is writing"):
            open_sink(out, resume=True)
        with pytest.raises(ExportRefused, match="another export is writing"):
            open_sink(out, force=True)
        # The refused runs changed nothing.
        assert Checkpoint.load(str(out) + ".checkpoint").cursors == {"c1": "m1"}
    finally:
        first.close()
    open_sink(out, resume=True).close()  # the lock goes with the first run


@pytest.mark.parametrize("where", ["directory", "missing-folder"])
def test_a_bad_output_path_is_refused_before_anything(tmp_path: Path, where: str) -> None:
    out = tmp_path if where == "directory" else tmp_path / "nope" / "m.jsonl"
    with pytest.raises(ExportRefused, match="cannot write"):
        open_sink(out)


def test_a_full_device_is_an_output_error() -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    sink = _Sink("/dev/full", OPTIONS, resume=False, force=False)
    try:
        with pytest.raises(OutputError) as caught:
            sink.page("c1", page("m1", cursor="m1"))
    finally:
        sink.close()
    assert caught.value.errno == errno.ENOSPC
    assert not caught.value.resumable and not caught.value.broken_pipe
    assert "No space left on device" in str(caught.value)
    with pytest.raises(ExportRefused, match="regular output file"):
        _Sink("/dev/full", OPTIONS, resume=True, force=False)
