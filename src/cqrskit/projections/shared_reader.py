"""One log read for all the runners of a process: each event is fetched and decoded once.

A :class:`~cqrskit.service.Runtime` runs one runner per projection, and without sharing every
page of the log is queried, deserialised and upcast into pydantic events once per projection
(five times for the orders service). Under a write load the runners' checkpoints drift apart
(each wakes after its own commit), so sharing only reads at the same position is not enough.
A :class:`SharedLogReader` sits between the runners and ``EventStore.read_all`` and keeps a
**tail**: the last ``tail`` events it has read, contiguous, with the position they follow.

- **A read at a position inside the tail** is answered with the cached events after that
  position; when they are fewer than its ``limit``, the rest comes from a store read at the
  tail's end, which every such read shares.
- **Every answer extends the tail** when it starts inside it (or covers it); the tail never
  holds a gap, and its oldest events are dropped beyond ``tail`` (bounded memory).
- **A read outside the tail** (a rewound or rebuilt runner far behind, a runner ahead of it)
  is a plain store read, shared only with an identical read in flight at the same position.
  Its answer replaces the tail when it is newer and does not connect to it.

Why a cached answer is right: below the read fence the log only grows at its end (guarantee
3, docs/ordering.md). An answer of ``read_all(after=p)`` holding ``e1..ek`` therefore means
that ``e1..ek`` are, forever, the first ``k`` events after ``p``, in order: no event can later
appear between ``p`` and ``ek``. Joining two such answers that overlap or touch gives the
same statement for their union, which is how the tail grows without ever holding a gap (a
short answer counts too: its events are final, only "nothing after ``ek``" is not). So for
any ``after`` between the tail's start and its end, the events after ``after`` are the
cached ones after ``after`` followed by what a read at the tail's end returns; cached events
plus a fresh read from the tail's end equal a fresh read at ``after``.

Why a shared read is right: the answer of a query that started earlier is a prefix of what
is readable now, for the same reason, so a runner that checkpoints its last event skips
nothing. It may be *short* of events committed after that query started, and a runner takes
a short page for "drained" and goes to sleep. So a :class:`LogView` (one per runner) only
joins queries that started after its last :meth:`LogView.mark`, which the runner calls when
a catch-up begins, that is after the wake-up that sent it there: the joined query sees every
event the wake-up announced and every append that returned before the catch-up was called,
exactly as the runner's own query would have. An answer served from the tail alone is full
(it has ``limit`` events), so it can never be taken for "drained".

Answers are shared between runners: each caller gets its own list (a slice), and the events
in it are frozen pydantic models that projections only read. The shadow runner of a
blue/green rebuild reads the store directly (it walks the whole log, far behind the live
runners).
"""

from __future__ import annotations

import asyncio
from bisect import bisect_right
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
    """Shares ``read_all`` queries and a tail of decoded events among one process's runners."""

    def __init__(self, store: EventStore, *, tail: int = 4096) -> None:
        if tail < 0:
            raise ValueError("tail must be >= 0")
        self.store = store
        self.tail = tail
        """How many of the latest read events are kept (0: only reads in flight are shared)."""
        self.queries = 0
        """Queries sent to the store."""
        self.requests = 0
        """Reads asked of this reader (``requests - queries`` were served without a query)."""
        self.fetched = 0
        """Events the store's answers held (each one decoded by the store)."""
        self.served = 0
        """Events handed to the readers (``served / fetched``: how often each was shared)."""
        self._started = 0  # number of the last query started
        self._in_flight: dict[LogPosition, _Read] = {}
        # The tail: ``_events`` are the first events after ``_after`` in log order, whatever
        # is appended later (None: no tail yet).
        self._after: LogPosition | None = None
        self._events: list[RecordedEvent] = []

    def view(self) -> LogView:
        """A reader for one runner (it remembers when that runner last began a catch-up)."""
        return LogView(self)

    async def read(
        self, *, after: LogPosition, limit: int, started_after: int
    ) -> list[RecordedEvent]:
        """``store.read_all(after, limit)``, shared with queries started after ``started_after``."""
        self.requests += 1
        if self._after is None or not self._after <= after <= self._end(self._after):
            page = (await self._shared(after, limit, limit, started_after))[:limit]
            self.served += len(page)
            return page
        answer = self._events[bisect_right(self._events, after, key=_position) :]
        end = self._end(after)
        while len(answer) < limit:
            rest = limit - len(answer)
            read = self._in_flight.get(end)
            if read is not None and read.started <= started_after:
                # A query at the end began before this runner's catch-up: its answer may be
                # short of what woke the runner, but all it holds comes next. Take it and
                # read on from its end (queries started meanwhile there can be joined).
                page = await asyncio.shield(read.task)
                answer += page[:rest]
                if page:
                    end = page[-1].position
                    continue
                # Empty: nothing came after the end before this catch-up; ask again.
            # The query asks for the caller's whole limit, so a runner further back can join.
            page = await self._shared(end, limit, rest, started_after)
            answer += page[:rest]
            break
        self.served += len(answer)
        return answer[:limit]

    def _end(self, after: LogPosition) -> LogPosition:
        return self._events[-1].position if self._events else after

    async def _shared(
        self, after: LogPosition, limit: int, need: int, started_after: int
    ) -> list[RecordedEvent]:
        read = self._in_flight.get(after)
        if read is None or read.started <= started_after or read.limit < need:
            read = self._start(after, limit)
        # Shielded: a caller that is cancelled (a discarded read-ahead) leaves the query to
        # the others waiting on it.
        return await asyncio.shield(read.task)

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
        self.fetched += len(page)
        if self.tail:
            self._keep(after, page)

    def _keep(self, after: LogPosition, page: list[RecordedEvent]) -> None:
        """Merge the answer of ``read_all(after)`` into the tail, or let it replace the tail."""
        page_end = page[-1].position if page else after
        if self._after is None:
            self._after, self._events = after, list(page)
        else:
            tail_end = self._end(self._after)
            if after <= tail_end and page_end >= self._after:  # they overlap or touch: one run
                if after >= self._after:
                    self._events.extend(page[bisect_right(page, tail_end, key=_position) :])
                else:  # the page reaches back before the tail: it leads
                    later = self._events[bisect_right(self._events, page_end, key=_position) :]
                    self._after, self._events = after, page + later
            elif page_end > tail_end and (page or not self._events):
                # Newer and disconnected (a runner ahead of the tail): the tail moves there.
                self._after, self._events = after, list(page)
            else:
                return  # older and disconnected (a runner far behind): the tail stays
        excess = len(self._events) - self.tail
        if excess > 0:
            self._after = self._events[excess - 1].position
            del self._events[:excess]

    @property
    def last_started(self) -> int:
        """The number of the last query started: later queries are numbered above it."""
        return self._started

    async def close(self) -> None:
        """Cancel the queries in flight and forget the tail."""
        reads = list(self._in_flight.values())
        for read in reads:
            read.task.cancel()
        await asyncio.gather(*(read.task for read in reads), return_exceptions=True)
        self._in_flight.clear()
        self._after = None
        self._events = []


def _position(event: RecordedEvent) -> LogPosition:
    return event.position


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
