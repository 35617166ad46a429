"""Exporting messages to JSON Lines, resumable after Ctrl-C, a crash or ``kill -9``.

Consistency rests on one ordering: a page's lines are written and flushed to the output
*before* a checkpoint record naming the output's new size is appended to the checkpoint
file. On resume the output is cut back to the size in the last complete record, so a
half-written line, or a page whose record never made it, disappears and is fetched
again; conversations the checkpoint marks done are skipped, the others resume after
their recorded cursor. Every message ends up in the file exactly once.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import IO, Any

import msgspec

from . import errors
from .client import Client
from .models import Message, MessagesPage

__all__ = ["Checkpoint", "ExportSummary", "export_messages"]


class _Record(msgspec.Struct, array_like=True):
    """One checkpoint line: after this page, the output is ``size`` bytes long."""

    conversation_id: str
    cursor: str | None
    done: bool
    size: int


_record_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(_Record)
_line_encoder = msgspec.json.Encoder()


@dataclass
class Checkpoint:
    """What a previous run finished: done conversations and cursors of the others."""

    done: set[str] = field(default_factory=set)
    cursors: dict[str, str] = field(default_factory=dict)
    size: int = 0

    @classmethod
    def load(cls, path: str) -> Checkpoint:
        """Read a checkpoint file, ignoring a torn last line."""
        state = cls()
        try:
            with open(path, "rb") as handle:
                lines = handle.read().split(b"\n")
        except FileNotFoundError:
            return state
        for line in lines:
            if not line:
                continue
            try:
                record = _record_decoder.decode(line)
            except msgspec.DecodeError:
                break  # torn by a kill: everything after it is untrusted
            state.size = record.size
            if record.done:
                state.done.add(record.conversation_id)
                state.cursors.pop(record.conversation_id, None)
            elif record.cursor is not None:
                state.cursors[record.conversation_id] = record.cursor
        return state


@dataclass
class ExportSummary:
    """What an export did."""

    conversations: int = 0
    skipped: int = 0
    messages: int = 0
    failed: dict[str, errors.GHLError] = field(default_factory=dict)
    elapsed: float = 0.0


def message_line(conversation_id: str, message: Message) -> bytes:
    """One JSON line: the message in the wire's camelCase, with ``conversationId``."""
    row: dict[str, Any] = msgspec.to_builtins(message)
    row["conversationId"] = conversation_id
    return _line_encoder.encode(row) + b"\n"


class _Sink:
    """The output and checkpoint files, written in the order that makes resume safe."""

    def __init__(self, out: str, checkpoint: str | None, resume: Checkpoint | None) -> None:
        self._stdout = out == "-"
        self._out: IO[bytes]
        if self._stdout:
            self._out = sys.stdout.buffer
        else:
            mode = "r+b" if resume is not None and os.path.exists(out) else "wb"
            self._out = open(out, mode)  # noqa: SIM115 - closed in close()
            if resume is not None:
                self._out.truncate(resume.size)
                self._out.seek(resume.size)
        self._size = resume.size if resume is not None else 0
        self._checkpoint: IO[bytes] | None = None
        if checkpoint is not None:
            self._checkpoint = open(checkpoint, "ab" if resume is not None else "wb")  # noqa: SIM115

    def page(self, conversation_id: str, page: MessagesPage) -> None:
        data = b"".join(message_line(conversation_id, m) for m in page.messages)
        self._out.write(data)
        self._out.flush()
        self._size += len(data)
        if self._checkpoint is not None:
            record = _Record(conversation_id, page.last_message_id, page.is_last, self._size)
            self._checkpoint.write(_record_encoder.encode(record) + b"\n")
            self._checkpoint.flush()

    def close(self) -> None:
        if not self._stdout:
            self._out.close()
        if self._checkpoint is not None:
            self._checkpoint.close()


async def _resumed_pages(
    client: Client,
    ids: Iterable[str] | AsyncIterable[str],
    state: Checkpoint,
    summary: ExportSummary,
    **options: Any,
) -> AsyncGenerator[tuple[str, MessagesPage | errors.GHLError], None]:
    # Conversations with a cursor resume one by one after a fresh fan-out of the rest.
    resumable: list[tuple[str, str]] = []

    async def pending() -> AsyncIterable[str]:
        if isinstance(ids, AsyncIterable):
            async for conversation_id in ids:
                if _keep(conversation_id):
                    yield conversation_id
        else:
            for conversation_id in ids:
                if _keep(conversation_id):
                    yield conversation_id

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
    for conversation_id, cursor in resumable:
        try:
            async for page in client.iter_pages(
                conversation_id,
                types=options.get("types"),
                page_size=options.get("page_size", 100),
                last_message_id=cursor,
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
    types: str | None = None,
    page_size: int = 100,
    concurrency: int | None = None,
    on_page: Callable[[str, MessagesPage], None] | None = None,
) -> ExportSummary:
    """Write every message of ``ids`` to ``out`` (JSON Lines), resumably.

    The checkpoint lives beside the output as ``out + ".checkpoint"`` (none for stdout).
    Raises the errors that stop a whole export (a bad token, a spent daily budget);
    conversations that fail for good are collected in the summary instead.
    """
    if out == "-" and resume:
        raise ValueError("--resume needs an output file, not stdout")
    checkpoint_path = None if out == "-" else out + ".checkpoint"
    state = Checkpoint.load(checkpoint_path) if resume and checkpoint_path else Checkpoint()
    sink = _Sink(out, checkpoint_path, state if resume else None)
    summary = ExportSummary()
    started = time.monotonic()
    try:
        items = _resumed_pages(
            client,
            ids,
            state,
            summary,
            types=types,
            page_size=page_size,
            concurrency=concurrency,
        )
        async with aclosing(items):
            async for conversation_id, item in items:
                if isinstance(item, errors.GHLError):
                    if isinstance(item, (errors.AuthenticationError, errors.DailyLimitExceeded)):
                        raise item
                    summary.failed[conversation_id] = item
                    continue
                sink.page(conversation_id, item)
                summary.messages += len(item.messages)
                if item.is_last:
                    summary.conversations += 1
                if on_page is not None:
                    on_page(conversation_id, item)
    finally:
        sink.close()
        summary.elapsed = time.monotonic() - started
    return summary
