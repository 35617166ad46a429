"""A location's export as one JSON Lines file, its state committed with the lines.

::

    from ghl_async.export import JsonlSink, export_location

    async with JsonlSink("messages.jsonl") as sink:  # resumes what the file holds
        await export_location(client, location_id, sink)

Each message is one line, as :func:`~ghl_async.export.files.message_line` writes it
(the wire's camelCase, with ``conversationId``; a fetched email body is inside its
message's line, under ``emails``). Beside the output, ``PATH.checkpoint`` holds the
state: a header line ``{"format":"ghl-async-jsonl/1"}``, then one record a commit,
``[SIZE,STATE]``: after this commit the output is ``SIZE`` bytes long and the export
stands at ``STATE`` (the whole :class:`~ghl_async.export.sink.ExportState`).

One ordering makes a ``kill -9`` at any instant harmless: a batch's lines are written,
then fsynced, *before* the record covering them is appended. Opening the file again
cuts the output back to the last complete record's size (lines no record covers, a
half-written line) and drops a torn record, so the state is never ahead of the data and
the run resumes with every message exactly once. Records are grouped: one fsync and one
record per ``commit_every`` seconds (and one when the sink closes) rather than per page;
a page whose record was not written yet is neither kept nor counted, and is read again.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import IO, Final, Literal

import msgspec

from ghl_async import errors
from ghl_async.export.files import (
    ExportRefused,
    complete_lines,
    is_regular,
    lock_output,
    message_line,
)
from ghl_async.export.sink import Batch, ExportState

__all__ = ["CHECKPOINT_FORMAT", "JsonlSink"]

#: The ``format`` of a JSON Lines sink's checkpoint header; another is refused on resume.
CHECKPOINT_FORMAT: Final = "ghl-async-jsonl/1"

_MODES: Final = ("new", "resume", "force")
# Past this size, and many times the last record, the checkpoint is rewritten to its
# header and last record (a fallback's state names every conversation: records grow).
_COMPACT_BYTES: Final = 4 << 20


class _Header(msgspec.Struct, kw_only=True):
    format: str


class _Record(msgspec.Struct, array_like=True):
    size: int
    state: ExportState


class _Written(msgspec.Struct, rename="camel"):
    """What a resumed fallback needs of a line already written: its ids."""

    id: str = ""
    conversation_id: str | None = None


_header_decoder: Final = msgspec.json.Decoder(_Header)
_record_decoder: Final = msgspec.json.Decoder(_Record)
_written_decoder: Final = msgspec.json.Decoder(_Written)
_encoder: Final = msgspec.json.Encoder()
_HEADER: Final = _encoder.encode(_Header(format=CHECKPOINT_FORMAT)) + b"\n"


class _Checkpoint(msgspec.Struct):
    """A checkpoint file as read: header found, its last complete record, bytes to keep."""

    header: bool = False
    last: _Record | None = None
    valid_bytes: int = 0


def _read_checkpoint(data: bytes) -> _Checkpoint:
    found = _Checkpoint()
    for line, end in complete_lines(data):
        try:
            if not found.header:
                if _header_decoder.decode(line).format != CHECKPOINT_FORMAT:
                    break
                found.header = True
            else:
                found.last = _record_decoder.decode(line)
        except msgspec.DecodeError:  # torn, corrupt, or another format: stop trusting
            break
        found.valid_bytes = end
    return found


def _write_all(handle: IO[bytes], data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = handle.write(view)
        if written is None:  # a non-blocking stream that is full
            raise BlockingIOError(errno.EAGAIN, "the output would block")
        view = view[written:]
    handle.flush()


class JsonlSink:
    """A :class:`~ghl_async.export.sink.Sink` writing one location to a JSON Lines file.

    ``async with JsonlSink(path) as sink:`` opens the file and locks it (two exports
    never write one file); :meth:`load` and :meth:`commit` follow the
    :class:`~ghl_async.export.sink.Sink` contract, with the state in
    ``path + ".checkpoint"`` (see the module's docstring for its format). A file holds
    one location's export. Lines are appended, never rewritten: a message is written
    once, in the version read first (the fallback skips what the file already holds of
    the conversations it reads again; to do so it keeps their ids in memory).

    ``path="-"`` writes to stdout; stdout, a pipe or a device is a *stream*: lines in
    order, no checkpoint, nothing to resume (:meth:`load` returns ``None``).

    Args:
        path: the output file (its folder must exist), or ``"-"`` for stdout.
        mode: ``"resume"`` (the default) goes on from the checkpoint, or starts when
            nothing was written yet; ``"new"`` refuses a file that is not empty;
            ``"force"`` empties the file and starts again.
        commit_every: seconds between fsyncs (each followed by the latest record);
            ``0`` commits every batch at once. The sink commits when it closes too.
        fsync: makes the output durable (``os.fsync``; tests pass their own).
        clock: seconds, for ``commit_every`` (``time.monotonic``).

    Raises:
        TypeError, ValueError: a bad argument (before anything is opened).

    Every refusal is a :class:`ghl_async.errors.SinkError` with a one-line message, for
    the command line as it is (its flags ``--resume`` and ``--force`` are the modes
    ``"resume"`` and ``"force"``): the file exists (``"new"``); a resume of a file with
    no checkpoint, a checkpoint of another version or location, or a file shorter than
    its checkpoint says; another process holds the lock; the path cannot be written.
    """

    def __init__(
        self,
        path: str,
        *,
        mode: Literal["new", "resume", "force"] = "resume",
        commit_every: float = 0.5,
        fsync: Callable[[int], None] = os.fsync,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(path, str):
            raise TypeError(f"path must be a str, not {type(path).__name__}")
        if not path or "\x00" in path:
            raise ValueError(f"path must name a file or '-', not {path!r}")
        if mode not in _MODES:
            raise ValueError(f"mode must be 'new', 'resume' or 'force', not {mode!r}")
        if isinstance(commit_every, bool) or not isinstance(commit_every, (int, float)):
            raise TypeError(f"commit_every must be a number, not {type(commit_every).__name__}")
        if not math.isfinite(commit_every) or commit_every < 0:
            raise ValueError(f"commit_every must be finite and >= 0, not {commit_every!r}")
        self._path = path
        self._mode = mode
        self._commit_every = float(commit_every)
        self._fsync = fsync
        self._clock = clock
        self._entered = False
        self._closed = False
        self._broken: str | None = None
        self._records_ok = False  # after a failed write: the pending record still holds
        self._out: IO[bytes] | None = None
        self._owned = False
        self._created = False
        self._stream = False
        self._checkpoint: IO[bytes] | None = None
        self._checkpoint_size = 0
        self._found = _Checkpoint()  # what the checkpoint held when opened
        self._prepared = False
        self._size = 0  # the output's length: every complete line written
        self._pending: _Record | None = None
        self._latest: ExportState | None = None  # the state of the last batch written
        self._committed_at = 0.0
        self._written: set[str] = set()

    @property
    def path(self) -> str:
        """The output file (``"-"``: stdout)."""
        return self._path

    @property
    def stream(self) -> bool:
        """The output is a stream (stdout, a pipe, a device): no checkpoint, no resume.

        Known once the sink is open.
        """
        return self._stream

    def __repr__(self) -> str:
        return f"JsonlSink({self._path!r}, mode={self._mode!r})"

    # -- opening ----------------------------------------------------------------------

    async def __aenter__(self) -> JsonlSink:
        """Open and lock the output, read its checkpoint; :class:`SinkError` if refused.

        Nothing is changed yet but what the mode says: ``"force"`` (or a fresh file)
        empties the output and writes the checkpoint's header.
        """
        if self._entered:
            raise RuntimeError("a JsonlSink can be entered once")
        self._entered = True
        try:
            self._open()
        except BaseException as exc:
            self._close_files()
            if self._created:  # refused: leave no empty file behind
                with contextlib.suppress(OSError):
                    os.unlink(self._path)
            if isinstance(exc, ExportRefused):
                raise errors.SinkError(str(exc)) from None
            if isinstance(exc, OSError):  # a full disk writing the header, an I/O error
                detail = exc.strerror or str(exc)
                raise errors.SinkError(f"cannot write {self._path}: {detail}") from exc
            raise
        self._committed_at = self._clock()
        return self

    def _open(self) -> None:
        path = self._path
        if path == "-":
            self._out, self._stream = sys.stdout.buffer, True
            return
        try:
            try:  # O_EXCL: know for sure whether this run created the file
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
                self._created = True
            except FileExistsError:
                fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise ExportRefused(f"cannot write {path}: {exc.strerror or exc}") from None
        existed = not self._created
        self._out, self._owned = os.fdopen(fd, "r+b", buffering=0), True
        lock_output(fd, path)
        if not is_regular(fd):
            self._stream = True
            return
        size = os.fstat(fd).st_size
        checkpoint_path = path + ".checkpoint"
        found = _Checkpoint()
        if self._mode == "resume":
            found = self._resumable(checkpoint_path, size, existed=existed)
        elif self._mode == "new" and size:
            raise ExportRefused(
                f"{path} exists; pass --resume to continue that export or --force to replace it"
            )
        try:
            if found.header:
                self._checkpoint = open(checkpoint_path, "r+b", buffering=0)  # noqa: SIM115
            else:
                self._checkpoint = open(checkpoint_path, "wb", buffering=0)  # noqa: SIM115
        except OSError as exc:
            raise ExportRefused(f"cannot write {checkpoint_path}: {exc.strerror or exc}") from None
        self._found = found
        if not found.header:  # a fresh export: an empty output, then the header
            self._out.truncate(0)
            _write_all(self._checkpoint, _HEADER)
            self._checkpoint_size = len(_HEADER)
            self._prepared = True

    def _resumable(self, checkpoint_path: str, size: int, *, existed: bool) -> _Checkpoint:
        path = self._path
        try:
            with open(checkpoint_path, "rb") as handle:
                data: bytes | None = handle.read()
        except FileNotFoundError:
            data = None
        except OSError as exc:
            raise ExportRefused(f"cannot read {checkpoint_path}: {exc.strerror or exc}") from None
        found = _read_checkpoint(data or b"")
        if not found.header:
            if not size:
                return found  # nothing written yet: resuming is starting
            why = (
                "it has no checkpoint"
                if not data
                else "its checkpoint is from another version of ghl-async or unreadable"
            )
            raise ExportRefused(f"cannot resume {path}: {why}; start over with --force")
        recorded = found.last.size if found.last is not None else 0
        if size < recorded:
            has = "is missing" if not existed else f"has {size} bytes"
            raise ExportRefused(
                f"cannot resume {path}: it {has} but its checkpoint records {recorded}; "
                f"start over with --force"
            )
        return found

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Commit what is written and not yet covered, then close (and unlock).

        Raises:
            ghl_async.errors.SinkError: that last commit failed (only when leaving
                without an error: the error that stopped the run comes first).
        """
        try:
            if self._out is not None and (self._broken is None or self._records_ok):
                try:
                    self._commit_records()
                except errors.SinkError:
                    if exc is None:
                        raise
        finally:
            self._closed = True
            self._close_files()

    def _close_files(self) -> None:
        for handle in (self._checkpoint, self._out if self._owned else None):
            if handle is not None:
                with contextlib.suppress(OSError):  # unbuffered: nothing is left to lose
                    handle.close()
        self._checkpoint = None

    # -- the contract -----------------------------------------------------------------

    def _live(self) -> IO[bytes]:
        if self._broken is not None:
            raise errors.SinkError(self._broken)
        if self._out is None or self._closed:
            raise RuntimeError("the sink is not open: use 'async with JsonlSink(path) as sink:'")
        return self._out

    async def load(self, location_id: str) -> ExportState | None:
        """The state the checkpoint holds (``None``: a stream, or nothing committed).

        Cuts the output back to the size that state covers (and the checkpoint back to
        its last complete record) before anything is appended.

        Raises:
            ghl_async.errors.SinkError: the file holds another location's export.
        """
        self._live()
        last = self._found.last
        if last is not None and last.state.location_id != location_id:
            raise errors.SinkError(
                f"cannot resume {self._path}: it holds the export of location "
                f"{last.state.location_id}; start over with --force or choose another output"
            )
        self._prepare()
        return last.state if last is not None else None

    def _prepare(self) -> None:
        """Cut what no record covers, once, before the first append."""
        if self._prepared:
            return
        self._prepared = True
        if self._stream or self._checkpoint is None or self._out is None:
            return
        found = self._found
        size = found.last.size if found.last is not None else 0
        try:
            self._out.truncate(size)
            self._out.seek(size)
            self._checkpoint.truncate(found.valid_bytes)
            self._checkpoint.seek(found.valid_bytes)
            self._checkpoint_size = found.valid_bytes
            if found.last is not None and found.last.state.fallback:
                self._written = self._ids_to_skip(found.last.state, size)
        except OSError as exc:
            self._broken = f"cannot write {self._path}: {exc.strerror or exc}"
            raise errors.SinkError(self._broken) from exc
        self._size = size
        self._latest = found.last.state if found.last is not None else None

    def _ids_to_skip(self, state: ExportState, size: int) -> set[str]:
        """The ids in the first ``size`` bytes that the fallback may read again.

        The fallback skips only the conversations it finished; it reads the others from
        their newest message, some of whose messages the file may hold (an unfinished
        conversation's first pages, or what the export route wrote before it was
        refused part way). Lines are appended, not upserted: those ids are skipped.
        """
        finished = {c for c, cursor in state.conversations.items() if cursor is None}
        seen: set[str] = set()
        with open(self._path, "rb") as handle:
            position = 0
            for line in handle:
                position += len(line)
                if position > size:
                    break
                try:
                    written = _written_decoder.decode(line)
                except msgspec.DecodeError:  # pragma: no cover - the sink wrote each line
                    continue
                if written.conversation_id not in finished:
                    seen.add(written.id)
        return seen

    async def commit(self, batch: Batch) -> None:
        """Append ``batch``'s lines; its state's record follows at the next fsync.

        The conversation id of each line is ``batch.conversation_ids[i]`` when given,
        else the message's own. ``batch.emails`` are already in their messages' lines.

        Raises:
            TypeError: ``batch`` is not a :class:`~ghl_async.export.sink.Batch`.
            ValueError: ``conversation_ids`` is neither empty nor one per message.
            ghl_async.errors.SinkError: the output could not be written (a full disk,
                a closed pipe: the error's ``__cause__`` is the ``OSError``), or the
                batch cannot follow what the file holds (another location; a file
                holding an export that was not loaded). Nothing of the batch is kept;
                after a write error the sink refuses every later commit.
        """
        if not isinstance(batch, Batch):
            raise TypeError(f"commit takes a Batch, not {type(batch).__name__}")
        if batch.conversation_ids and len(batch.conversation_ids) != len(batch.messages):
            raise ValueError(
                f"batch has {len(batch.conversation_ids)} conversation ids"
                f" for {len(batch.messages)} messages"
            )
        out = self._live()
        self._check_follows(batch.state)
        self._prepare()
        data = b"".join(self._lines(batch))
        try:
            _write_all(out, data)
        except OSError as exc:
            raise self._failed(exc) from exc
        self._size += len(data)
        self._latest = batch.state
        if self._stream:
            return
        self._pending = _Record(self._size, batch.state)
        if self._clock() - self._committed_at >= self._commit_every:
            self._commit_records()

    def _check_follows(self, state: ExportState) -> None:
        found = self._found.last
        if not self._prepared and found is not None:
            raise errors.SinkError(
                f"{self._path} holds an export of location {found.state.location_id}: "
                f"load it to resume, or start over with --force"
            )
        last = self._latest
        if last is None:
            return
        if state.location_id != last.location_id:
            raise errors.SinkError(
                f"{self._path} holds the export of location {last.location_id}, not "
                f"{state.location_id}: one file keeps one location"
            )
        if state.fallback and not last.fallback and self._size:
            # The route was refused part way: the fallback reads the location again.
            if self._stream:
                raise errors.SinkError(
                    f"the location export was refused part way; the fallback would write "
                    f"again what {self._path} already got: export to a file instead"
                )
            try:
                # Every id written so far: at the switch no conversation is finished yet
                # (``last`` is the route's state; this batch's own state would count the
                # conversation it finishes, whose ids the route wrote too).
                self._written = self._ids_to_skip(last, self._size)
            except OSError as exc:
                raise self._failed(exc) from exc

    def _lines(self, batch: Batch) -> Iterable[bytes]:
        ids = batch.conversation_ids or [None] * len(batch.messages)
        written = self._written
        for message, conversation_id in zip(batch.messages, ids, strict=True):
            if written and message.id in written:
                continue
            yield message_line(conversation_id or message.conversation_id or "", message)

    def _failed(self, exc: OSError, *, lines: bool = True) -> errors.SinkError:
        """Stop for good after a failed write, the output cut back to whole lines.

        After a failed write of ``lines``, the record pending still covers only whole
        lines: closing commits it (the pages before the failure need not be read again).
        """
        self._broken = f"cannot write {self._path}: {exc.strerror or exc}"
        if lines and not self._stream and self._out is not None:
            try:
                self._out.truncate(self._size)
                self._out.seek(self._size)
                self._records_ok = True
            except OSError:  # the next open cuts it back anyway
                pass
        return errors.SinkError(self._broken)

    def _commit_records(self) -> None:
        """Make the lines durable, then append the latest record (which covers them).

        One fsync per ``commit_every`` seconds rather than per page: an fsync blocks the
        event loop for milliseconds, and a crash costs only the pages since, read again.
        """
        self._committed_at = self._clock()
        record, checkpoint, out = self._pending, self._checkpoint, self._out
        if record is None or checkpoint is None or out is None:
            return
        line = _encoder.encode(record) + b"\n"
        try:
            # The record must never reach the disk before the lines it covers.
            self._fsync(out.fileno())
            _write_all(checkpoint, line)
        except OSError as exc:
            raise self._failed(exc, lines=False) from exc
        self._pending = None
        self._checkpoint_size += len(line)
        if self._checkpoint_size > max(_COMPACT_BYTES, 16 * len(line)):
            self._compact(line)

    def _compact(self, line: bytes) -> None:
        """Replace the checkpoint by its header and last record, atomically."""
        target = self._path + ".checkpoint"
        temporary = target + ".tmp"
        try:
            with open(temporary, "wb") as handle:
                handle.write(_HEADER + line)
                handle.flush()
                self._fsync(handle.fileno())
            # Opened before the rename: once renamed, appends must go to the new file.
            replaced = open(temporary, "ab", buffering=0)  # noqa: SIM115 - closed on exit
        except OSError:
            return  # the long checkpoint stands, still whole: compact another time
        try:
            os.replace(temporary, target)
        except OSError:
            replaced.close()
            return
        if self._checkpoint is not None:
            self._checkpoint.close()
        self._checkpoint = replaced
        self._checkpoint_size = len(_HEADER) + len(line)
        # The rename made durable; a crash before it leaves the old file, whole.
        with contextlib.suppress(OSError):
            folder = os.open(os.path.dirname(os.path.abspath(target)), os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
