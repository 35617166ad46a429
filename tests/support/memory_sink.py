"""A sink in memory, for the pipeline's tests: the Sink contract kept in dicts.

It keeps what a database sink keeps (rows by id, the newer ``date_updated`` winning; the
state with them) and counts every write, so a test can see a message written twice.
It commits a batch whole or not at all, like a transaction: ``fail_after`` makes the
commit after that many succeed raise ``SinkError`` with nothing of it kept.
"""

from __future__ import annotations

from collections import Counter
from types import TracebackType

from ghl_async import errors
from ghl_async.export.sink import Batch, ExportState
from ghl_async.models import EmailMessage, Message


class MemorySink:
    """Rows by id, states by location, every write counted."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.messages: dict[str, Message] = {}
        self.conversation_of: dict[str, str | None] = {}
        self.emails: dict[str, EmailMessage] = {}
        self.states: dict[str, ExportState] = {}
        self.writes: Counter[str] = Counter()
        self.commits = 0
        self.fail_after = fail_after
        self.open = False

    async def __aenter__(self) -> MemorySink:
        self.open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.open = False

    async def load(self, location_id: str) -> ExportState | None:
        assert self.open, "load on a closed sink"
        return self.states.get(location_id)

    async def commit(self, batch: Batch) -> None:
        assert self.open, "commit on a closed sink"
        if self.fail_after is not None and self.commits >= self.fail_after:
            raise errors.SinkError("the disk is full (a test's sink)")
        ids = batch.conversation_ids or [None] * len(batch.messages)
        for message, conversation_id in zip(batch.messages, ids, strict=True):
            old = self.messages.get(message.id)
            newer = (
                old is None
                or old.date_updated is None
                or message.date_updated is None
                or message.date_updated >= old.date_updated
            )
            if newer:
                self.messages[message.id] = message
                self.conversation_of[message.id] = conversation_id
            self.writes[message.id] += 1
        for _, email in batch.emails:
            self.emails[email.id] = email
        self.states[batch.state.location_id] = batch.state
        self.commits += 1
