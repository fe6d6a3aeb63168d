"""Read-your-writes: know how far each projection has got, and wait for a position.

:class:`CheckpointWatch` is the query bus's
:class:`~cqrskit.query_bus.CheckpointWaiter` and a
:class:`~cqrskit.projections.listeners.CommitListener` of every runner in this process.

Guarantees:

1. ``wait`` returns ``True`` only when every named projection has *committed* a checkpoint
   at or after the position (positions compare as the log is read), so a query answered
   afterwards sees that position's events.
2. It returns ``False`` once ``timeout`` seconds have passed; it never waits longer (beyond
   one checkpoint read).
3. No polling per request. Runners in this process report each commit and wake waiters at
   once. Projections run elsewhere (``cqrskit worker``) are read from the checkpoint table
   by one shared poller per process, every ``poll_interval`` seconds, and only while some
   request is waiting for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence

from cqrskit.messages import LOG_START, LogPosition, RecordedEvent
from cqrskit.projections.projection import Projection
from cqrskit.read_models.protocol import CheckpointRow
from cqrskit.store._notify import Notifier

__all__ = ["CheckpointWatch"]

_log = logging.getLogger("cqrskit.consistency")


class CheckpointWatch:
    """Tracks committed checkpoints of ``names``; queries wait on it."""

    def __init__(
        self,
        read_checkpoints: Callable[[], Awaitable[Sequence[CheckpointRow]]],
        names: Iterable[str],
        *,
        poll_interval: float = 0.05,
    ) -> None:
        self._read = read_checkpoints
        self.names = tuple(names)
        self.poll_interval = poll_interval
        self._known: dict[str, LogPosition] = {}
        self._local: set[str] = set()
        self._notifier = Notifier()
        self._polled_waiters = 0
        self._poller: asyncio.Task[None] | None = None

    def attach(self, names: Iterable[str]) -> None:
        """Runners of ``names`` run in this process and report their commits."""
        self._local.update(names)

    def detach(self, names: Iterable[str]) -> None:
        """Runners of ``names`` stopped here; read their checkpoints from the table again."""
        self._local.difference_update(names)

    def position(self, name: str) -> LogPosition | None:
        """The last checkpoint known for ``name`` (``None`` before the first report or read)."""
        return self._known.get(name)

    async def committed(
        self, projection: Projection, position: LogPosition, page: Sequence[RecordedEvent]
    ) -> None:
        """A runner committed its checkpoint ``position``: wake waiters."""
        self._known[projection.name] = position
        self._notifier.notify()

    async def rewound(self, projection: Projection) -> None:
        """A rebuild rewound the projection to the start."""
        self._known[projection.name] = LOG_START
        self._notifier.notify()

    async def wait(self, names: Collection[str], position: LogPosition, timeout: float) -> bool:
        """Wait until every named projection (all known ones when empty) is at ``position``."""
        wanted = tuple(names) or self.names
        if self._reached(wanted, position):
            return True
        if any(name not in self._known for name in wanted):
            await self.refresh()
        polled = any(name not in self._local for name in wanted)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if polled:
            self._polled_waiters += 1
            self._ensure_poller()
        try:
            while not self._reached(wanted, position):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                await self._notifier.wait(lambda: self._reached(wanted, position), remaining)
            return True
        finally:
            if polled:
                self._polled_waiters -= 1

    async def refresh(self) -> None:
        """Read the checkpoint table; update every projection not reporting from here."""
        for row in await self._read():
            if row.name not in self._local or row.name not in self._known:
                self._known[row.name] = row.position
        self._notifier.notify()

    async def close(self) -> None:
        """Stop the poller."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None

    def _reached(self, names: Iterable[str], position: LogPosition) -> bool:
        known = self._known
        return all(name in known and known[name] >= position for name in names)

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="cqrskit-checkpoint-poller")

    async def _poll(self) -> None:
        while self._polled_waiters > 0:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.refresh()
            except Exception as exc:
                # The waiting request runs its own query next and reports database errors.
                _log.debug("reading checkpoints failed: %s", exc)
