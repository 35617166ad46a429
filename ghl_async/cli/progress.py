"""What the command shows while it runs and when it ends: progress and the summary.

A conversation export's progress counts conversations settled (written in full, skipped
as done before, or failed) against the conversations asked for, so it ends at 100% also
after a resume or with failures; a location export's counts the pages and messages
committed so far (its total is not known ahead). With tqdm installed (the ``cli``
extra) it is a bar; without it, a plain line at most once a second, so a bare
``pip install ghl-async`` works as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from typing import Any, TextIO

from ghl_async.client import Client
from ghl_async.export.files import ExportSummary, export_messages
from ghl_async.export.pipeline import ExportResult
from ghl_async.ratelimit import RateLimit

__all__ = [
    "Progress",
    "budget_of",
    "export_with_progress",
    "location_table",
    "summary_table",
]

BAR_HINT = "(pip install 'ghl-async[cli]' for a progress bar)"


class Progress:
    """A tqdm bar, a plain line, or nothing, on ``stream``.

    ``unit="conv"`` counts conversations settled (:meth:`update`), with the messages
    read so far beside; ``unit="page"`` (a location export, whose total is not known
    ahead) counts the messages read, with the requests sent and pages committed beside
    (:meth:`update_pages`). Inside :meth:`ticking` the display is refreshed twice a
    second from the client's live counters, so it moves with the pages in flight and
    not only when a conversation or a commit completes.
    """

    def __init__(
        self,
        enabled: bool,
        total: int | None,
        client: Client,
        stream: TextIO,
        clock: Callable[[], float] = time.monotonic,
        *,
        unit: str = "conv",
    ) -> None:
        self._client = client
        self._total = total
        self._stream = stream
        self._clock = clock
        self._started = clock()
        self._last_line = -1.0
        self._bar: Any = None
        self._plain = False
        self._closed = False
        self._summary = ExportSummary()
        self._unit = unit
        self._pages = 0
        self._written = 0
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            self._plain = True
            print(f"export: starting {BAR_HINT}", file=stream, flush=True)
            return
        self._bar = tqdm(
            total=total,
            unit="conv" if unit == "conv" else "msg",
            file=stream,
            dynamic_ncols=True,
            desc="export",
            mininterval=0.25,
        )

    def _rate(self) -> float:
        return self._client.stats.requests / max(1e-6, self._clock() - self._started)

    def update(self, summary: ExportSummary) -> None:
        """Show the conversations settled so far."""
        self._summary = summary
        self._show()

    def update_pages(self, result: ExportResult) -> None:
        """Show the pages and messages a location export committed so far."""
        self._pages = result.pages
        self._written = result.messages
        self._show()

    @contextlib.asynccontextmanager
    async def ticking(self, every: float = 0.5) -> AsyncIterator[Progress]:
        """Refresh the display every ``every`` seconds while the block runs."""
        if self._bar is None and not self._plain:
            yield self
            return

        async def tick() -> None:
            while True:
                await asyncio.sleep(every)
                self._show(refresh=True)

        task = asyncio.create_task(tick())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _done(self) -> int:
        if self._unit == "page":
            return max(self._client.stats.messages, self._written)
        return self._summary.finished

    def _show(self, *, refresh: bool = False) -> None:
        if self._closed:
            return
        if self._bar is not None:
            stats = self._client.stats
            if self._unit == "page":
                postfix: dict[str, object] = {
                    "requests": stats.requests,
                    "pages": self._pages,
                }
            else:
                postfix = {"messages": max(stats.messages, self._summary.messages)}
            postfix.update(req_s=f"{self._rate():.1f}", throttled=stats.throttled)
            self._bar.set_postfix(postfix, refresh=False)
            self._bar.n = self._done()
            if refresh:
                self._bar.refresh()
            else:
                self._bar.update(0)
        elif self._plain and self._clock() - self._last_line >= 1.0:
            self._line()

    def _line(self) -> None:
        self._last_line = self._clock()
        stats = self._client.stats
        of = f"/{self._total}" if self._total is not None else ""
        if self._unit == "page":
            done = f"{self._pages} pages, {self._done()} messages, {stats.requests} requests"
        else:
            messages = max(stats.messages, self._summary.messages)
            done = f"{self._summary.finished}{of} conversations, {messages} messages"
        print(
            f"export: {done}, {self._rate():.1f} req/s, {stats.throttled} throttled",
            file=self._stream,
            flush=True,
        )

    def close(self) -> None:
        """End the bar or print the last line (once; later calls do nothing)."""
        if self._closed:
            return
        if self._bar is not None:
            self._show(refresh=True)
            self._bar.close()
        elif self._plain:
            self._line()
        self._closed = True


async def export_with_progress(
    client: Client,
    ids: Iterable[str] | AsyncIterable[str],
    *,
    total: int | None,
    show: bool | None,
    **options: Any,
) -> ExportSummary:
    """``export_messages`` with the progress display (on stderr when it is a terminal).

    The conversation export of ``export``, ``demo`` and the ``--location`` fallback.
    """
    enabled = sys.stderr.isatty() if show is None else show
    progress = Progress(enabled, total, client, sys.stderr)
    try:
        async with progress.ticking():
            return await export_messages(client, ids, on_progress=progress.update, **options)
    finally:
        progress.close()


def budget_of(client: Client) -> RateLimit | None:
    """The budget the server announced, if it did."""
    stats = client.stats
    if stats.server_max_requests and stats.server_interval:
        return RateLimit(stats.server_max_requests, stats.server_interval)
    return None


def summary_table(
    summary: ExportSummary, client: Client, budget: RateLimit | None, extra: dict[str, str]
) -> str:
    """The end-of-run table: counts, requests, and how close to the budget it ran."""
    counts = [
        (
            "conversations",
            f"{summary.conversations}"
            + (f" (+{summary.skipped} already done)" if summary.skipped else ""),
        ),
        ("messages", f"{summary.messages}"),
        ("failed conversations", f"{len(summary.failed)}"),
    ]
    return _table(counts, summary.elapsed, client, budget, extra)


def location_table(
    result: ExportResult,
    elapsed: float,
    client: Client,
    budget: RateLimit | None,
    extra: dict[str, str],
) -> str:
    """The end-of-run table of a location export: messages, pages, the path it took."""
    how = "conversation by conversation (fallback)" if result.fallback else "location export"
    counts = [
        ("messages", f"{result.messages}"),
        ("pages", f"{result.pages}"),
        ("read by", how + (", resumed" if result.resumed else "")),
    ]
    if result.emails:
        counts.insert(1, ("email bodies", f"{result.emails}"))
    return _table(counts, elapsed, client, budget, extra)


def _table(
    counts: list[tuple[str, str]],
    elapsed: float,
    client: Client,
    budget: RateLimit | None,
    extra: dict[str, str],
) -> str:
    stats = client.stats
    rate = stats.requests / elapsed if elapsed else 0.0
    rows = [
        *counts,
        ("requests", f"{stats.requests}"),
        ("retries", f"{stats.retries}"),
        ("429s", f"{stats.throttled}"),
        ("elapsed", f"{elapsed:.1f} s"),
    ]
    if budget is not None and stats.requests and elapsed:
        # The fastest a strict window allows: one full window per max_requests sends.
        ideal = ((stats.requests - 1) // budget.max_requests) * budget.interval
        budget_text = f"budget {budget.max_requests} per {budget.interval:g} s"
        if ideal:
            use = f"{100 * min(1.0, ideal / elapsed):.0f}% of ideal ({ideal:.1f} s)"
        else:  # a share of zero seconds says nothing: the budget never held it back
            use = "within one window: the budget did not slow it"
        rows.append(("requests/s", f"{rate:.1f} ({budget_text}; {use})"))
    else:
        rows.append(("requests/s", f"{rate:.1f}"))
    rows.extend(extra.items())
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name.ljust(width)}  {value}" for name, value in rows)
