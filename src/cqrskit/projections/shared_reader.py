"""One log read for all the runners of a process: each event is fetched and decoded once.

A :class:`~cqrskit.service.Runtime` runs one runner per projection, and runners at the head
wake together on the same append, so without sharing every page of the log is queried,
deserialised and upcast into pydantic events once per projection (five times for the orders
service). A :class:`SharedLogReader` sits between the runners and ``EventStore.read_all``:

- **Identical reads in flight are coalesced**: a read at ``after`` joins a query already
  running at the same ``after`` (with at least its ``limit``) and takes its answer.
- **Full pages are kept** (the last ``pages`` of them): a page that came back with as many
  events as asked is final - the log below the read fence only grows at its end (guarantee 3,
  docs/ordering.md), so the first ``limit`` readable events after a position never change.

Why a joined answer is safe: the answer of a query that started earlier is a prefix of what is
readable now, for the same reason, so a runner that checkpoints its last event skips nothing.
It may be *short* of events committed after that query started, and a runner takes a short
page for "drained" and goes to sleep. So a :class:`LogView` (one per runner) only joins
queries that started after its last :meth:`LogView.mark`, which the runner calls when a
catch-up begins, that is after the wake-up that sent it there: the joined query sees every
event the wake-up announced and every append that returned before the catch-up was called,
exactly as the runner's own query would have. Short pages are therefore never cached, only
shared while in flight.

Pages are shared between runners: each caller gets its own list (a slice), and the events in
it are frozen pydantic models that projections only read. The shadow runner of a blue/green
rebuild reads the store directly (it walks the whole log, far behind the live runners).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass

from cqrskit.messages import LogPosition, RecordedEvent
from cqrskit.store.protocol import EventStore

__all__ = ["LogView", "SharedLogReader"]


@dataclass
class _Read:
    """A query of the log in flight: its start number, its limit and its outcome."""

    started: int
    limit: int
    task: asyncio.Future[list[RecordedEvent]]


class SharedLogReader:
    """Shares ``read_all`` queries and their decoded pages among the runners of one process."""

    def __init__(self, store: EventStore, *, pages: int = 8) -> None:
        if pages < 0:
            raise ValueError("pages must be >= 0")
        self.store = store
        self.pages = pages
        """How many full pages are kept (memory: at most ``pages`` x the batch size events)."""
        self.queries = 0
        """Queries sent to the store."""
        self.requests = 0
        """Reads asked of this reader (``requests - queries`` were served without a query)."""
        self._started = 0  # number of the last query started
        self._in_flight: dict[LogPosition, _Read] = {}
        self._full: OrderedDict[LogPosition, list[RecordedEvent]] = OrderedDict()

    def view(self) -> LogView:
        """A reader for one runner (it remembers when that runner last began a catch-up)."""
        return LogView(self)

    async def read(
        self, *, after: LogPosition, limit: int, started_after: int
    ) -> list[RecordedEvent]:
        """``store.read_all(after, limit)``, shared with queries started after ``started_after``."""
        self.requests += 1
        page = self._full.get(after)
        if page is not None and len(page) >= limit:
            self._full.move_to_end(after)
            return page[:limit]
        read = self._in_flight.get(after)
        if read is None or read.started <= started_after or read.limit < limit:
            read = self._start(after, limit)
        # Shielded: a caller that is cancelled (a discarded read-ahead) leaves the query to
        # the others waiting on it.
        page = await asyncio.shield(read.task)
        return page[:limit]

    def _start(self, after: LogPosition, limit: int) -> _Read:
        self._started += 1
        self.queries += 1
        read = _Read(
            self._started,
            limit,
            asyncio.ensure_future(self.store.read_all(after=after, limit=limit)),
        )
        self._in_flight[after] = read  # the newest query at a position is the one to join
        read.task.add_done_callback(lambda _: self._finished(after, read))
        return read

    def _finished(self, after: LogPosition, read: _Read) -> None:
        if self._in_flight.get(after) is read:
            del self._in_flight[after]
        # Retrieve a failure here (the waiters re-raise it), so none is reported unretrieved.
        if read.task.cancelled() or read.task.exception() is not None:
            return
        page = read.task.result()
        if self.pages and len(page) >= read.limit:
            self._full[after] = page
            self._full.move_to_end(after)
            while len(self._full) > self.pages:
                self._full.popitem(last=False)

    @property
    def last_started(self) -> int:
        """The number of the last query started: later queries are numbered above it."""
        return self._started

    async def close(self) -> None:
        """Cancel the queries in flight and forget the kept pages."""
        reads = list(self._in_flight.values())
        for read in reads:
            read.task.cancel()
        await asyncio.gather(*(read.task for read in reads), return_exceptions=True)
        self._in_flight.clear()
        self._full.clear()


class LogView:
    """One runner's access to a :class:`SharedLogReader`."""

    def __init__(self, reader: SharedLogReader) -> None:
        self.reader = reader
        self._since = reader.last_started

    def mark(self) -> None:
        """Reads from now on see everything readable now (a catch-up is beginning)."""
        self._since = self.reader.last_started

    async def read_all(self, *, after: LogPosition, limit: int) -> list[RecordedEvent]:
        """Up to ``limit`` events after ``after``, as ``EventStore.read_all`` returns them."""
        return await self.reader.read(after=after, limit=limit, started_after=self._since)
