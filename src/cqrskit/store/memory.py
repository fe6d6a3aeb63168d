"""In-memory event store for users' unit tests (not durable; one process)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from uuid import uuid4

from cqrskit.errors import ConcurrencyError
from cqrskit.idempotency import CommandRecord, DuplicateCommand, StoredCommand
from cqrskit.messages import NIL_UUID, DomainEvent, LogPosition, RecordedEvent, utc_now
from cqrskit.store._notify import Notifier
from cqrskit.store.protocol import ANY_VERSION, AppendResult, Backlog, StreamAppend

__all__ = ["MemoryEventStore"]


class MemoryEventStore:
    """Keeps the log in a list; positions start at 1."""

    def __init__(self) -> None:
        self._log: list[RecordedEvent] = []
        self._streams: dict[str, list[DomainEvent]] = {}
        self._records: dict[str, list[RecordedEvent]] = {}
        self._ids: set[object] = set()
        self._commands: dict[tuple[str, str], StoredCommand] = {}
        self._notifier = Notifier()
        self._lock = asyncio.Lock()

    async def append(
        self, *streams: StreamAppend, command: CommandRecord | None = None
    ) -> AppendResult:
        async with self._lock:
            staged: list[DomainEvent] = []
            staged_ids: set[object] = set()
            versions: dict[str, int] = {}
            for stream_id, expected, events in streams:
                current = versions.get(stream_id)
                if current is None:
                    current = len(self._streams.get(stream_id, ()))
                if expected != ANY_VERSION and expected != current:
                    raise ConcurrencyError(stream_id, expected, current)
                for version, event in enumerate(events, start=current + 1):
                    event_id = uuid4() if event.event_id == NIL_UUID else event.event_id
                    if event_id in self._ids or event_id in staged_ids:
                        raise ConcurrencyError(stream_id, expected, current)
                    staged_ids.add(event_id)
                    envelope = {"event_id": event_id, "stream_id": stream_id, "version": version}
                    if (event.event_id, event.stream_id, event.version) != tuple(envelope.values()):
                        event = event.model_copy(update=envelope)
                    staged.append(event)
                versions[stream_id] = current + len(events)
            if command is not None and (command.scope, command.key) in self._commands:
                raise DuplicateCommand(command.scope, command.key)
            now = utc_now()
            recorded = []
            for event in staged:
                position = LogPosition(0, len(self._log) + 1)
                record = RecordedEvent(position, event, now)
                self._log.append(record)
                self._streams.setdefault(event.stream_id, []).append(event)
                self._records.setdefault(event.stream_id, []).append(record)
                self._ids.add(event.event_id)
                recorded.append(record)
            if command is not None:
                self._commands[command.scope, command.key] = StoredCommand(command, recorded)
        if recorded:
            self._notifier.notify()
        return AppendResult(recorded)

    async def read_stream(self, stream_id: str, *, after_version: int = 0) -> list[DomainEvent]:
        return list(self._streams.get(stream_id, ())[after_version:])

    async def read_stream_records(
        self, stream_id: str, *, after_version: int = 0, limit: int
    ) -> list[RecordedEvent]:
        return self._records.get(stream_id, [])[after_version : after_version + limit]

    async def find_command(self, scope: str, key: str) -> StoredCommand | None:
        return self._commands.get((scope, key))

    async def stream_version(self, stream_id: str) -> int:
        return len(self._streams.get(stream_id, ()))

    async def read_all(self, *, after: LogPosition, limit: int) -> list[RecordedEvent]:
        return self._log[after.position : after.position + limit]

    async def head(self) -> LogPosition:
        return LogPosition(0, len(self._log))

    async def count_after(self, after: LogPosition) -> int:
        return max(0, len(self._log) - after.position)

    async def backlog(self, after: LogPosition) -> Backlog:
        # This process's clock stamped recorded_at, so it measures the age.
        pending = self._log[after.position :]
        if not pending:
            return Backlog(0, 0.0)
        oldest = min(r.recorded_at for r in pending)
        return Backlog(len(pending), max(0.0, (utc_now() - oldest).total_seconds()))

    async def now(self) -> datetime:
        return utc_now()

    async def wait_for_events(self, after: LogPosition, timeout: float) -> bool:
        return await self._notifier.wait(lambda: len(self._log) > after.position, timeout)

    async def close(self) -> None:
        return None
