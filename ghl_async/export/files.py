"""Exporting messages to JSON Lines, resumable after Ctrl-C, a crash or ``kill -9``.

Consistency rests on one ordering: a page's lines are written, flushed and fsynced to
the output *before* a checkpoint record naming the output's new size is appended to the
checkpoint file (records go in batches, one fsync per half second). On resume the
output is cut back to the size in the last complete record, so a half-written line, or
a page whose record never made it, disappears and is fetched again; conversations the
checkpoint marks done are skipped, the others resume after their recorded cursor. Every
message ends up in the file exactly once.

The checkpoint's first line records what was asked (the ids, the type filter, the base
URL): a resume that asks for something else is refused rather than mixing two exports
in one file. A torn last record (a crash or a full disk mid-write) is cut off the file
before anything is appended, so every later record stays readable. The output is held
under an exclusive lock for the whole run: two exports never write one file.

This is the export of conversations by id (``ghl-async export ID...``). A whole
location goes to JSON Lines through the export pipeline into
:class:`~ghl_async.export.jsonl.JsonlSink`, which shares this module's line format
(:func:`message_line`), locking and torn-line handling.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import sys
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

import msgspec

from ghl_async import errors
from ghl_async.client import Client
from ghl_async.models import Message, MessagesPage

__all__ = [
    "Checkpoint",
    "ExportOptions",
    "ExportRefused",
    "ExportSummary",
    "OutputError",
    "check_new_output",
    "check_output",
    "export_messages",
]

CHECKPOINT_FORMAT = "ghl-async-export/2"


class ExportRefused(Exception):
    """The export will not start: a resume that does not match, a busy or bad output.

    Nothing was written. The message is one line that says what to do.
    """


class OutputError(Exception):
    """Writing the output or its checkpoint failed (a full disk, an I/O error, a closed pipe).

    Attributes:
        path: the file being written (``-`` for stdout).
        errno: the operating system's error number.
        broken_pipe: the reader of a pipe went away (``--out - | head``).
        resumable: a checkpoint exists, so ``--resume`` continues where this stopped.
    """

    def __init__(self, path: str, error: OSError, *, resumable: bool) -> None:
        self.path = path
        self.errno = error.errno
        self.broken_pipe = isinstance(error, BrokenPipeError)
        self.resumable = resumable
        super().__init__(f"cannot write {path}: {error.strerror or error}")


class ExportOptions(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    """What an export was asked for: the checkpoint's first line.

    Attributes:
        format: the checkpoint format; another value is refused on resume.
        source: which conversations: ``location:ID`` or ``ids:SHA256`` of the id list.
        types: the ``type`` filter sent, or ``None`` for every type.
        base_url: the API root the messages came from.
    """

    format: str
    source: str
    types: str | None
    base_url: str

    def differs_from(self, wanted: ExportOptions) -> str | None:
        """What ``wanted`` asks differently from this recorded run, in CLI terms."""
        if self.format != wanted.format:
            return f"it was written by another version of ghl-async ({self.format})"
        if self.source != wanted.source:
            return f"it was started for {_describe_source(self.source)}"
        if self.types != wanted.types:
            return f"it was started with --types {self.types or '(all types)'}"
        if self.base_url != wanted.base_url:
            return f"it was started with --base-url {self.base_url}"
        return None


def _describe_source(source: str) -> str:
    kind, _, value = source.partition(":")
    if kind == "location":
        return f"--location {value}"
    if kind == "export":
        return f"the location export {value}"
    return "another list of conversation ids"


def ids_source(ids: Sequence[str]) -> str:
    """The ``source`` of an export of these ids: a digest of the list, in order."""
    digest = hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()
    return f"ids:{digest}"


class _Record(msgspec.Struct, array_like=True):
    """One checkpoint line: after this page, the output is ``size`` bytes long."""

    conversation_id: str
    cursor: str | None
    done: bool
    size: int


# A line is either the header (a JSON object) or a record (a JSON array).
_header_decoder = msgspec.json.Decoder(ExportOptions)
_record_decoder = msgspec.json.Decoder(_Record)
_record_encoder = msgspec.json.Encoder()
_line_encoder = msgspec.json.Encoder()


@dataclass
class Checkpoint:
    """What a previous run finished: done conversations and cursors of the others.

    Attributes:
        options: the header, or ``None`` when the file is missing, empty or has none.
        done: conversations written in full.
        cursors: for the others, the id of the last message written.
        size: the output's length after the last complete record.
        valid_bytes: the length of the file's leading run of complete lines; anything
            after it (a torn record) is cut off before appending.
        exists: the checkpoint file exists.
    """

    options: ExportOptions | None = None
    done: set[str] = field(default_factory=set)
    cursors: dict[str, str] = field(default_factory=dict)
    size: int = 0
    valid_bytes: int = 0
    exists: bool = False

    @classmethod
    def load(cls, path: str) -> Checkpoint:
        """Read a checkpoint file up to its first torn or unreadable line."""
        state = cls()
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return state
        state.exists = True
        state.parse(data)
        return state

    def parse(self, data: bytes) -> None:
        """Apply the complete lines of ``data``; stop at the first one that is not."""
        self.valid_bytes = 0
        for line, end in complete_lines(data):
            try:
                if self.valid_bytes == 0:
                    self.options = _header_decoder.decode(line)
                else:
                    self._apply(_record_decoder.decode(line))
            except msgspec.DecodeError:
                # Torn or corrupt, or records with no header (an older format): nothing
                # from here on is trusted.
                break
            self.valid_bytes = end

    def _apply(self, record: _Record) -> None:
        self.size = record.size
        if record.done:
            self.done.add(record.conversation_id)
            self.cursors.pop(record.conversation_id, None)
        elif record.cursor is not None:
            self.cursors[record.conversation_id] = record.cursor


@dataclass
class ExportSummary:
    """What an export did."""

    conversations: int = 0
    skipped: int = 0
    messages: int = 0
    failed: dict[str, errors.GHLError] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def finished(self) -> int:
        """Conversations settled: written in full, skipped as done before, or failed."""
        return self.conversations + self.skipped + len(self.failed)


def message_line(conversation_id: str, message: Message) -> bytes:
    """One JSON line: the message in the wire's camelCase, with ``conversationId``."""
    # The struct encoded as it is, its conversation id set (not through a dict of
    # builtins: half the CPU, the same JSON object).
    with_id = msgspec.structs.replace(message, conversation_id=conversation_id)
    return _line_encoder.encode(with_id) + b"\n"


def page_cursor(page: MessagesPage) -> str | None:
    """Where the next page starts: the server's ``lastMessageId``, else the last id."""
    if page.last_message_id:
        return page.last_message_id
    return page.messages[-1].id if page.messages else None


def complete_lines(data: bytes) -> Iterator[tuple[bytes, int]]:
    """Each newline-ended line of ``data`` (without its newline) and the offset after it.

    A last line with no newline is torn (a crash or a full disk mid-write): left out.
    """
    position = 0
    while True:
        end = data.find(b"\n", position)
        if end < 0:
            return
        yield data[position:end], end + 1
        position = end + 1


def lock_output(fd: int, path: str) -> None:
    """Hold ``path`` (open as ``fd``) for this run alone; the lock goes with the descriptor.

    Raises:
        ExportRefused: another export holds it.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ExportRefused(
                f"another export is writing {path}; wait for it or choose another --out"
            ) from None
        raise  # pragma: no cover - flock fails otherwise only on odd filesystems


def check_new_output(path: str) -> None:
    """Refuse a ``path`` that does not exist and could not be created, creating nothing.

    Its folder must exist and be writable. Used before any request, so that a typo in
    the folder is said before the network is asked anything.

    Raises:
        ExportRefused: the folder is missing or not writable.
    """
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise ExportRefused(f"cannot write {path}: {os.strerror(errno.ENOENT)}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportRefused(f"cannot write {path}: {os.strerror(errno.EACCES)}")


def check_output(out: str, options: ExportOptions, *, resume: bool, force: bool) -> None:
    """What :func:`export_messages` would refuse about ``out``, found changing nothing.

    The same one-line refusals as opening the output (a missing folder, no permission,
    an existing output without ``resume`` or ``force``, a resume that does not match its
    checkpoint), without creating or writing a file: the command line checks them, then
    asks the server once, and only then lets the export create its files. The lock is
    not checked here (another run may take it in between: opening says so then).

    Raises:
        ExportRefused: the export would be refused.
    """
    if out == "-":
        if resume:
            raise ExportRefused("--resume needs an output file, not stdout")
        return
    checkpoint_path = out + ".checkpoint"
    try:
        found = os.stat(out)
    except FileNotFoundError:
        check_new_output(out)
        if resume:
            _Sink.check_resume(out, _load(checkpoint_path), options, 0, existed=False)
        return
    except OSError as exc:
        raise ExportRefused(f"cannot write {out}: {exc.strerror}") from None
    if not os.access(out, os.R_OK | os.W_OK):
        raise ExportRefused(f"cannot write {out}: {os.strerror(errno.EACCES)}")
    if stat.S_ISDIR(found.st_mode):
        raise ExportRefused(f"cannot write {out}: {os.strerror(errno.EISDIR)}")
    if not stat.S_ISREG(found.st_mode):
        if resume:
            raise ExportRefused(f"--resume needs a regular output file; {out} is not one")
        return
    if resume:
        _Sink.check_resume(out, _load(checkpoint_path), options, found.st_size, existed=True)
    elif found.st_size and not force:
        raise ExportRefused(
            f"{out} exists; pass --resume to continue that export or --force to replace it"
        )


def _load(checkpoint_path: str) -> Checkpoint:
    try:
        return Checkpoint.load(checkpoint_path)
    except OSError as exc:
        raise ExportRefused(f"cannot read {checkpoint_path}: {exc.strerror or exc}") from None


def is_regular(fd: int) -> bool:
    """``fd`` is a regular file (else a stream: a pipe, a terminal, a device)."""
    return stat.S_ISREG(os.fstat(fd).st_mode)


class _Sink:
    """The output and checkpoint files, written in the order that makes resume safe.

    Opening does every check that can refuse (a bad path, a lock held by another run, a
    resume that does not match) before a byte is changed. A regular file gets a
    checkpoint; stdout, a pipe or a device (``/dev/full``) is a stream: written in
    order, never truncated, not resumable.
    """

    def __init__(
        self,
        out: str,
        options: ExportOptions,
        *,
        resume: bool,
        force: bool,
        fsync: Callable[[int], None] = os.fsync,
        commit_every: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = out
        self._fsync = fsync
        self._commit_every = commit_every
        self._clock = clock
        self._committed = clock()
        self._pending: list[bytes] = []
        self._checkpoint: IO[bytes] | None = None
        self.state = Checkpoint()
        self._out: IO[bytes]
        if out == "-":
            if resume:
                raise ExportRefused("--resume needs an output file, not stdout")
            self._out = sys.stdout.buffer
            self._owned = False
            self._size = 0
            return
        existed = os.path.exists(out)
        try:
            fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise ExportRefused(f"cannot write {out}: {exc.strerror}") from None
        self._out = os.fdopen(fd, "r+b")
        self._owned = True
        try:
            self._open(out, options, existed=existed, resume=resume, force=force)
        except BaseException:
            self._out.close()
            raise

    def _open(
        self, out: str, options: ExportOptions, *, existed: bool, resume: bool, force: bool
    ) -> None:
        fd = self._out.fileno()
        lock_output(fd, out)
        self._stream = not is_regular(fd)
        self._size = 0
        if self._stream:
            if resume:
                raise ExportRefused(f"--resume needs a regular output file; {out} is not one")
            return
        checkpoint_path = out + ".checkpoint"
        size = os.fstat(fd).st_size
        if resume:
            state = Checkpoint.load(checkpoint_path)
            self.check_resume(out, state, options, size, existed=existed)
        elif existed and size and not force:
            raise ExportRefused(
                f"{out} exists; pass --resume to continue that export or --force to replace it"
            )
        else:
            state = Checkpoint()
        checkpoint: IO[bytes]
        try:
            if state.options is None:
                checkpoint = open(checkpoint_path, "wb")  # noqa: SIM115 - closed in close()
            else:
                checkpoint = open(checkpoint_path, "r+b")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise ExportRefused(f"cannot write {checkpoint_path}: {exc.strerror}") from None
        self._checkpoint = checkpoint
        self.state = state
        if state.options is None:
            # A fresh export: an empty output, then the header naming what it holds.
            self._out.truncate(0)
            self._write_checkpoint(_record_encoder.encode(options) + b"\n")
        else:
            # Cut back what no record covers, and the torn tail of the checkpoint.
            self._out.truncate(state.size)
            self._out.seek(state.size)
            checkpoint.truncate(state.valid_bytes)
            checkpoint.seek(state.valid_bytes)
            self._size = state.size

    @staticmethod
    def check_resume(
        out: str, state: Checkpoint, options: ExportOptions, size: int, *, existed: bool
    ) -> None:
        if state.options is None:
            if not (existed and size):
                return  # nothing was written yet: resuming is starting
            if state.exists and os.path.getsize(out + ".checkpoint"):
                raise ExportRefused(
                    f"cannot resume {out}: its checkpoint is from an older ghl-async or "
                    f"unreadable; start over with --force"
                )
            raise ExportRefused(
                f"cannot resume {out}: it has no checkpoint; start over with --force"
            )
        difference = state.options.differs_from(options)
        if difference is not None:
            raise ExportRefused(
                f"cannot resume {out}: {difference}; repeat that command's options "
                f"with --resume, or start over with --force"
            )
        if not existed or size < state.size:
            found = "is missing" if not existed else f"has {size} bytes"
            raise ExportRefused(
                f"cannot resume {out}: it {found} but its checkpoint records {state.size}; "
                f"start over with --force"
            )

    @property
    def resumable(self) -> bool:
        """A checkpoint is being kept, so a stopped run can be resumed."""
        return self._checkpoint is not None

    def _write_checkpoint(self, data: bytes) -> None:
        assert self._checkpoint is not None
        self._checkpoint.write(data)
        self._checkpoint.flush()

    def page(self, conversation_id: str, page: MessagesPage) -> None:
        """Write a page's lines; its record follows at the next commit."""
        data = b"".join(message_line(conversation_id, m) for m in page.messages)
        self.write(conversation_id, data, page_cursor(page), page.is_last)

    def write(self, key: str, data: bytes, cursor: str | None, done: bool) -> None:
        """Write ``data`` (whole lines) and record ``key``'s ``cursor`` after it.

        ``key`` is a conversation id, or the location export's own key; ``done`` marks
        it finished.
        """
        try:
            self._out.write(data)
            self._out.flush()
        except OSError as exc:
            raise OutputError(self.path, exc, resumable=self.resumable) from exc
        self._size += len(data)
        if self._checkpoint is None:
            return
        record = _Record(key, cursor, done, self._size)
        self._pending.append(_record_encoder.encode(record) + b"\n")
        if self._clock() - self._committed >= self._commit_every:
            self.commit()

    def commit(self) -> None:
        """Make the lines written so far durable, then append the records that cover them.

        One fsync per ``commit_every`` seconds rather than per page: an fsync blocks the
        event loop for milliseconds, and a crash costs only the pages since the last
        commit, fetched again on resume.
        """
        self._committed = self._clock()
        if not self._pending or self._checkpoint is None:
            return
        try:
            # The records must never reach the disk before the lines they cover.
            self._fsync(self._out.fileno())
            self._write_checkpoint(b"".join(self._pending))
        except OSError as exc:
            raise OutputError(self.path, exc, resumable=self.resumable) from exc
        self._pending.clear()

    def close(self) -> None:
        """Commit what was written, then close (the lock goes with the output's descriptor)."""
        try:
            with contextlib.suppress(OutputError):  # the error that matters came first
                self.commit()
        finally:
            for handle in (self._checkpoint, self._out if self._owned else None):
                if handle is None:
                    continue
                with contextlib.suppress(OSError):
                    handle.close()


async def _resumed_pages(
    client: Client,
    ids: Iterable[str] | AsyncIterable[str],
    state: Checkpoint,
    summary: ExportSummary,
    **options: Any,
) -> AsyncGenerator[tuple[str, MessagesPage | errors.GHLError], None]:
    # Conversations with a cursor resume one by one after a fresh fan-out of the rest.
    resumable: list[tuple[str, str]] = []
    listing_error: list[errors.GHLError] = []

    async def pending() -> AsyncIterable[str]:
        try:
            if isinstance(ids, AsyncIterable):
                async for conversation_id in ids:
                    if _keep(conversation_id):
                        yield conversation_id
            else:
                for conversation_id in ids:
                    if _keep(conversation_id):
                        yield conversation_id
        except errors.GHLError as error:
            # Listing a location failed: end the id stream so the fan-out finishes what
            # it has, then raise the error as itself (not wrapped by a task group).
            listing_error.append(error)

    def _keep(conversation_id: str) -> bool:
        if conversation_id in state.done:
            summary.skipped += 1
            return False
        cursor = state.cursors.get(conversation_id)
        if cursor is not None:
            resumable.append((conversation_id, cursor))
            return False
        return True

    fresh = client.fan_out_pages(pending(), return_exceptions=True, **options)
    async with aclosing(fresh):
        async for item in fresh:
            yield item
    if listing_error:
        raise listing_error[0]
    for conversation_id, cursor in resumable:
        try:
            async for page in client.iter_pages(
                conversation_id,
                types=options.get("types"),
                page_size=options.get("page_size", 100),
                last_message_id=cursor,
                since=options.get("since"),
                email_bodies=options.get("email_bodies", False),
            ):
                yield conversation_id, page
        except errors.GHLError as error:
            error.conversation_id = conversation_id
            if error.last_message_id is None:
                error.last_message_id = cursor
            yield conversation_id, error


async def export_messages(
    client: Client,
    ids: Iterable[str] | AsyncIterable[str],
    *,
    out: str,
    resume: bool = False,
    force: bool = False,
    types: str | None = None,
    source: str | None = None,
    page_size: int = 100,
    concurrency: int | None = None,
    on_page: Callable[[str, MessagesPage], None] | None = None,
    on_progress: Callable[[ExportSummary], None] | None = None,
    since: datetime | None = None,
    email_bodies: bool = False,
) -> ExportSummary:
    """Write every message of ``ids`` to ``out`` (JSON Lines), resumably.

    The checkpoint lives beside the output as ``out + ".checkpoint"`` (none for stdout,
    a pipe or a device). ``source`` names the ids in the checkpoint (default: a digest
    of ``ids``, which must then be a list or tuple). ``since`` and ``email_bodies`` are
    :meth:`Client.fan_out`'s.

    Raises:
        ExportRefused: before anything is written, when the output cannot be used.
        OutputError: when writing fails part way.
        errors.GHLError: one whose ``stops_fan_out`` is true (a refused token, a spent
            daily budget) stops a whole export; conversations that fail for good are
            in the summary instead.
    """
    if source is None:
        if not isinstance(ids, (list, tuple)):
            raise TypeError("pass source= when ids is not a list or tuple")
        source = ids_source(ids)
    options = ExportOptions(
        format=CHECKPOINT_FORMAT,
        source=source,
        types=types,
        base_url=client._base_url,
    )
    sink = _Sink(out, options, resume=resume, force=force)
    summary = ExportSummary()
    started = time.monotonic()
    try:
        items = _resumed_pages(
            client,
            ids,
            sink.state,
            summary,
            types=types,
            page_size=page_size,
            concurrency=concurrency,
            since=since,
            email_bodies=email_bodies,
        )
        async with aclosing(items):
            async for conversation_id, item in items:
                if isinstance(item, errors.GHLError):
                    if item.stops_fan_out:
                        raise item
                    summary.failed[conversation_id] = item
                else:
                    sink.page(conversation_id, item)
                    summary.messages += len(item.messages)
                    if item.is_last:
                        summary.conversations += 1
                    if on_page is not None:
                        on_page(conversation_id, item)
                if on_progress is not None:
                    on_progress(summary)
        if on_progress is not None:
            on_progress(summary)  # conversations skipped at the end count too
    finally:
        sink.close()
        summary.elapsed = time.monotonic() - started
    return summary
