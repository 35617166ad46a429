"""A sync's runs as numbered JSON Lines files, each immutable once it appears.

Layout of the directory (made for loading into a warehouse)::

    DIR/messages-000001.jsonl   the first run: every message
    DIR/messages-000002.jsonl   a later run: only what was new or changed since
    DIR/sync-state.json         the state after the last finished run
    DIR/run.jsonl               the run under way (a JsonlSink: lines + checkpoint)

Load the files in number order and upsert by ``id`` (a changed message comes again,
whole, with a later ``dateUpdated``). A run with nothing new adds no file.

**The state is never ahead of the data, and a visible file never changes.** A run
writes ``run.jsonl`` through a :class:`~ghl_async.export.jsonl.JsonlSink`, which
commits its own state with its lines (so a killed run goes on where it stopped). When
the run ends, in this order: the last lines and record are fsynced; ``sync-state.json``
is replaced (written whole, fsynced, renamed) naming the run's file; ``run.jsonl`` is
renamed to that name; its checkpoint is removed. A crash between the two renames is
finished by the next open (the state names a file that is not there yet and
``run.jsonl`` holds it); a checkpoint left without its output is removed then too. A file's number
is one past the highest number in the directory *and* in the state, so a number is
never used twice, even if the state file is lost.

A state file that is missing while numbered files exist, that belongs to another
location, or that was edited into something it cannot hold is refused in one line
(:class:`~ghl_async.errors.SinkError`); nothing is changed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
from collections.abc import Callable
from types import TracebackType
from typing import IO, Final

import msgspec

from ghl_async import errors
from ghl_async.export.jsonl import JsonlSink
from ghl_async.export.sink import Batch, ExportState

__all__ = ["STATE_FILE", "NumberedFiles"]

STATE_FILE: Final = "sync-state.json"
STATE_FORMAT: Final = "ghl-async-sync/2"
RUN_FILE: Final = "run.jsonl"
_NUMBERED: Final = re.compile(r"messages-(\d{6,})\.jsonl")


class _SavedState(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``sync-state.json``: the last finished run, its file, and the state after it."""

    format: str
    run: int
    file: str | None
    state: ExportState

    def __post_init__(self) -> None:
        if self.run < 0:
            raise ValueError("run must be 0 or more")
        if self.file is not None and _NUMBERED.fullmatch(self.file) is None:
            raise ValueError(f"file {self.file!r} is not a numbered file")


_decode_saved: Final = msgspec.json.Decoder(_SavedState).decode
_encode: Final = msgspec.json.Encoder().encode


def file_name(run: int) -> str:
    """The name of run ``run``'s file."""
    return f"messages-{run:06d}.jsonl"


def highest_number(names: list[str]) -> int:
    """The highest run number among ``names`` (0: none)."""
    numbers = [int(m.group(1)) for m in map(_NUMBERED.fullmatch, names) if m is not None]
    return max(numbers, default=0)


class NumberedFiles:
    """A :class:`~ghl_async.export.sink.Sink` for :func:`~ghl_async.export.sync_location`:
    one numbered JSON Lines file per run with something new, in a directory of its own.

    ``async with NumberedFiles(directory) as sink:`` creates the directory if needed,
    locks it (two syncs never write one directory), checks its state file and finishes
    a run a crash left between its last two steps. The module's docstring gives the
    layout and the order of writes.

    Args:
        directory: the directory (one location's sync).
        fsync: makes a file durable (``os.fsync``; tests pass their own).

    Raises:
        TypeError, ValueError: a bad argument.
    """

    def __init__(self, directory: str, *, fsync: Callable[[int], None] = os.fsync) -> None:
        if not isinstance(directory, str):
            raise TypeError(f"directory must be a str, not {type(directory).__name__}")
        if not directory or "\x00" in directory:
            raise ValueError(f"directory must name a directory, not {directory!r}")
        self._directory = directory
        self._fsync = fsync
        self._lock: IO[bytes] | None = None
        self._saved: _SavedState | None = None
        self._run: JsonlSink | None = None
        self._entered = False
        self.last_file: str | None = None
        """The file the latest finished run added (``None``: none, or nothing new)."""

    def __repr__(self) -> str:
        return f"NumberedFiles({self._directory!r})"

    def _path(self, name: str) -> str:
        return os.path.join(self._directory, name)

    # -- opening ------------------------------------------------------------------------

    async def __aenter__(self) -> NumberedFiles:
        """Lock the directory, read and check its state; :class:`SinkError` if refused."""
        if self._entered:
            raise RuntimeError("a NumberedFiles sink can be entered once")
        self._entered = True
        try:
            os.makedirs(self._directory, exist_ok=True)
            self._lock = self._take_lock()
            self._saved = self._read_state()
            self._finish_rename()
        except OSError as exc:
            self._release()
            raise errors.SinkError(f"cannot use {self._directory}: {exc.strerror or exc}") from exc
        except BaseException:
            self._release()
            raise
        return self

    def _take_lock(self) -> IO[bytes]:
        handle = open(self._path(".lock"), "ab")  # noqa: SIM115 - held until __aexit__
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise errors.SinkError(
                    f"another sync is writing {self._directory}; wait for it"
                ) from None
            raise
        return handle

    def _read_state(self) -> _SavedState | None:
        path = self._path(STATE_FILE)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            names = os.listdir(self._directory)
            if highest_number(names):
                raise errors.SinkError(
                    f"{self._directory} holds numbered files but no {STATE_FILE}: restore "
                    f"it, or sync into a new directory (a full sync there)"
                ) from None
            return None
        if b'"format":"ghl-async-sync/1"' in data.replace(b" ", b""):
            raise errors.SinkError(
                f"{path} was written by ghl-async 0.1 (another layout): go on with that "
                f"version, or sync into a new directory (a full sync there)"
            )
        try:
            saved = _decode_saved(data)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            raise errors.SinkError(
                f"{path} is not a state this ghl-async wrote ({str(exc)[:120]}); restore "
                f"it, or sync into a new directory"
            ) from None
        if saved.format != STATE_FORMAT:
            raise errors.SinkError(
                f"{path} is from another ghl-async ({saved.format}); sync into a new directory"
            )
        if saved.state.location_id == "" or saved.state.run_started is not None:
            raise errors.SinkError(f"{path} holds no finished run; restore it")
        return saved

    def _finish_rename(self) -> None:
        """Finish a run a crash stopped between its state and its rename, and drop a
        checkpoint left without its output (the output is made first, moved last).
        """
        saved, run = self._saved, self._path(RUN_FILE)
        if saved is not None and saved.file is not None:
            final = self._path(saved.file)
            if not os.path.exists(final) and os.path.exists(run):
                os.replace(run, final)  # the state names it: the run under way is done
                self._sync_directory()
        if not os.path.exists(run):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(run + ".checkpoint")

    # -- the contract -------------------------------------------------------------------

    async def load(self, location_id: str) -> ExportState | None:
        """The state of the run under way, else the state after the last finished run.

        Raises:
            ghl_async.errors.SinkError: the directory holds another location's sync.
        """
        saved = self._saved
        if saved is not None and saved.state.location_id != location_id:
            raise errors.SinkError(
                f"{self._directory} holds the sync of location {saved.state.location_id}; "
                f"sync location {location_id} into another directory"
            )
        run = await self._run_sink()
        under_way = await run.load(location_id)
        if under_way is not None:
            return under_way
        return saved.state if saved is not None else None

    async def _run_sink(self) -> JsonlSink:
        if self._lock is None:
            raise RuntimeError("the sink is not open: use 'async with NumberedFiles(dir):'")
        if self._run is None:
            run = JsonlSink(self._path(RUN_FILE), mode="resume", commit_every=0)
            self._run = await run.__aenter__()
        return self._run

    async def commit(self, batch: Batch) -> None:
        """Append ``batch`` to the run under way; a run's closing batch finishes it.

        The closing batch (``state.done`` with no run under way) makes the run's file
        appear under the next number (when it holds anything) after the state that
        names it.

        Raises:
            ghl_async.errors.SinkError: a file could not be written; what was committed
                stands.
        """
        run = await self._run_sink()
        await run.commit(batch)
        if batch.state.done and batch.state.run_started is None:
            await self._finish(batch.state)

    async def _finish(self, state: ExportState) -> None:
        run, self._run = self._run, None
        assert run is not None
        await run.__aexit__(None, None, None)  # the last lines and record, fsynced
        try:
            self._saved, name = self._publish(state)
        except OSError as exc:
            raise errors.SinkError(
                f"cannot finish the run in {self._directory}: {exc.strerror or exc}; run "
                f"the sync again to finish it"
            ) from exc
        self.last_file = None if name is None else self._path(name)

    def _publish(self, state: ExportState) -> tuple[_SavedState, str | None]:
        """The state naming the run's file, then the file under its number (if any)."""
        path = self._path(RUN_FILE)
        size = os.path.getsize(path)
        previous = self._saved.run if self._saved is not None else 0
        number = max(previous, highest_number(os.listdir(self._directory))) + 1
        name = file_name(number) if size else None
        saved = _SavedState(
            format=STATE_FORMAT, run=number if size else previous, file=name, state=state
        )
        self._replace_state(saved)
        if name is not None:
            os.replace(path, self._path(name))
            self._sync_directory()
            os.unlink(path + ".checkpoint")
        else:  # the checkpoint first: an empty output left alone starts afresh
            os.unlink(path + ".checkpoint")
            os.unlink(path)
        return saved, name

    def _replace_state(self, saved: _SavedState) -> None:
        path = self._path(STATE_FILE)
        temporary = path + ".tmp"
        with open(temporary, "wb") as handle:
            handle.write(_encode(saved) + b"\n")
            handle.flush()
            self._fsync(handle.fileno())
        os.replace(temporary, path)
        self._sync_directory()

    def _sync_directory(self) -> None:
        fd = os.open(self._directory, os.O_RDONLY)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    # -- closing ------------------------------------------------------------------------

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the run under way (what it committed stands) and unlock."""
        try:
            if self._run is not None:
                run, self._run = self._run, None
                await run.__aexit__(exc_type, exc, tb)
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self._lock.close()
            self._lock = None
