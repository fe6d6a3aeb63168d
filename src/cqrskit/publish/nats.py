"""Publish every event of the log to NATS JetStream, resuming from a checkpoint.

The publisher reads the global log after its own checkpoint (a row named ``publisher:nats``
in the read-model store's checkpoint table), publishes each event to
``<prefix>.<event type>`` with ``Nats-Msg-Id`` set to the event id, and moves the checkpoint
only after JetStream acknowledged every event of the page. A crash between the publish and
the checkpoint republishes those events; JetStream drops a message whose id it saw within the
stream's duplicate window, and consumers deduplicate anyway.

Order: the messages of a page go out back to back on one connection, each with
``Nats-Expected-Last-Sequence`` set to the sequence its predecessor must have received. If
one is not stored (a rejection, a lost connection, a duplicate) none after it can be, so the
stream always holds the log's events in log order. The rest of such a page is then published
one at a time, each after the previous one's acknowledgement.

Failures (NATS down, stream unavailable, ack timeouts) are retried with exponential backoff
from the checkpoint; an event is never skipped and the checkpoint never moves without an
acknowledgement. Projection rebuilds never touch this checkpoint: ``reset`` is only ever
called with a projection's own name.
"""

from __future__ import annotations

import asyncio
import logging

from nats.js.api import Header, PubAck

from cqrskit.errors import CqrskitError
from cqrskit.messages import LogPosition, RecordedEvent
from cqrskit.projections.runner import ProjectionState, RunnerStatus
from cqrskit.publish._jetstream import (
    Connection,
    check_cancelled,
    ensure_stream,
    pause,
    stream_config,
    wait_for_wake,
)
from cqrskit.publish.message import (
    MSG_ID_HEADER,
    check_subject_prefix,
    encode_event,
    event_subject,
)
from cqrskit.read_models.protocol import ReadModelStore
from cqrskit.store.protocol import EventStore

__all__ = ["DEFAULT_DUPLICATE_WINDOW", "NatsPublisher", "PublishError"]

_log = logging.getLogger("cqrskit.publish")

DEFAULT_DUPLICATE_WINDOW = 120.0
"""Seconds JetStream remembers message ids (the stream's ``duplicate_window``)."""


class PublishError(CqrskitError):
    """JetStream did not acknowledge an event; the page is retried from the checkpoint."""


class NatsPublisher:
    """Feeds the event log into one JetStream stream, checkpointed in the read-model store."""

    def __init__(
        self,
        store: EventStore,
        read_models: ReadModelStore,
        *,
        url: str,
        stream: str = "CQRSKIT_EVENTS",
        subject_prefix: str = "cqrskit.events",
        duplicate_window: float = DEFAULT_DUPLICATE_WINDOW,
        name: str = "publisher:nats",
        batch_size: int = 500,
        poll_interval: float = 1.0,
        ack_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        max_backoff: float = 30.0,
    ) -> None:
        self.store = store
        self.read_models = read_models
        self.url = url
        self.stream = stream
        self.config = stream_config(stream, check_subject_prefix(subject_prefix), duplicate_window)
        self.subject_prefix = subject_prefix
        self.name = name
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        self.max_backoff = max_backoff
        self.status = RunnerStatus()
        self.events_published = 0
        self.duplicates = 0
        """Events JetStream dropped as already stored (republished after a crash)."""
        self._connection: Connection | None = None
        self._last_seq: int | None = None

    async def connect(self) -> Connection:
        """Connect and create or update the stream; raise when NATS is unreachable."""
        if self._connection is not None and not self._connection.lost.is_set():
            return self._connection
        await self.disconnect()
        connection = await Connection.open(self.url, name=self.name, timeout=self.connect_timeout)
        try:
            info = await ensure_stream(connection.js, self.stream, self.config)
        except BaseException:
            await connection.close()
            raise
        self._connection = connection
        self._last_seq = info.state.last_seq
        return connection

    async def disconnect(self) -> None:
        """Close the connection, if any."""
        connection, self._connection, self._last_seq = self._connection, None, None
        if connection is not None:
            await connection.close()

    async def publish_pending(self, *, limit: int | None = None) -> LogPosition:
        """Publish every readable event after the checkpoint; return the new checkpoint."""
        connection = await self.connect()
        checkpoint = await self.read_models.checkpoint(self.name)
        self.status.checkpoint = checkpoint
        while page := await self.store.read_all(after=checkpoint, limit=limit or self.batch_size):
            await self._publish_page(connection, page)
            position = page[-1].position
            await self.read_models.commit(self.name, (), expected=checkpoint, position=position)
            checkpoint = position
            self.status.checkpoint = position
            self.status.events_applied += len(page)
        return checkpoint

    async def _publish_page(self, connection: Connection, page: list[RecordedEvent]) -> None:
        stored = 0
        if self._last_seq is not None:
            futures = []
            for offset, record in enumerate(page):
                headers = {Header.EXPECTED_LAST_SEQUENCE.value: str(self._last_seq + offset)}
                futures.append(await self._send(connection, record, headers))
            await connection.settle(futures, self.ack_timeout)
            for future in futures:
                if future.cancelled() or future.exception() is not None:
                    break
                self._acked(future.result())
                stored += 1
        for record in page[stored:]:
            # One at a time: each is sent only once its predecessor is stored.
            future = await self._send(connection, record, {})
            await connection.settle([future], self.ack_timeout)
            if future.cancelled() or (error := future.exception()) is not None:
                reason = "no acknowledgement" if future.cancelled() else repr(error)
                raise PublishError(
                    f"{self.name}: {record.event.event_type} {record.event.event_id}: {reason}"
                )
            self._acked(future.result())
        self.events_published += len(page)

    async def _send(
        self, connection: Connection, record: RecordedEvent, headers: dict[str, str]
    ) -> asyncio.Future[PubAck]:
        event = record.event
        headers[MSG_ID_HEADER] = str(event.event_id)
        return await connection.js.publish_async(
            event_subject(self.subject_prefix, event.event_type),
            encode_event(event),
            headers=headers,
        )

    def _acked(self, ack: PubAck) -> None:
        # A duplicate's ack carries the original's (older) sequence.
        self._last_seq = max(self._last_seq or 0, ack.seq)
        if ack.duplicate:
            self.duplicates += 1

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the log until ``stop`` is set, reconnecting and retrying with backoff."""
        backoff = 0.05
        self.status.state = ProjectionState.CATCHING_UP
        try:
            while not stop.is_set():
                try:
                    check_cancelled()
                    checkpoint = await self.publish_pending()
                    check_cancelled()
                    self.status.state = ProjectionState.RUNNING
                    self.status.last_error = None
                    backoff = 0.05
                    await wait_for_wake(self.store, checkpoint, self.poll_interval, stop)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.status.state = ProjectionState.FAILED
                    self.status.failures += 1
                    self.status.last_error = (
                        str(exc)
                        if isinstance(exc, CqrskitError)
                        else f"{type(exc).__name__}: {exc}"
                    )
                    _log.warning(
                        "%s: %s (retry in %.2fs)", self.name, self.status.last_error, backoff
                    )
                    await self.disconnect()
                    await pause(stop, backoff)
                    backoff = min(backoff * 2, self.max_backoff)
        finally:
            await self.disconnect()
            self.status.state = ProjectionState.STOPPED
