"""Project integration events from JetStream into another service's read models, exactly once.

A :class:`JetStreamConsumer` pulls from a durable consumer over the whole stream
(``<prefix>.>``), turns each message back into the registered event class and applies it to a
:class:`~cqrskit.projections.projection.Projection`. Its checkpoint is the JetStream stream
sequence of the last applied message, stored in the consumer's own read-model store under
``nats:<durable>``; a batch's statements and that checkpoint commit in one transaction
(fenced, like a projection's), and the messages are acknowledged only afterwards.

A message is applied only when its stream sequence is the checkpoint plus one, so:

1. A redelivered message (a lost ack, a nak, an ack timeout) has a sequence at or below the
   checkpoint; it is acknowledged and changes nothing.
2. A message that arrives while an earlier one is still out for redelivery (after a crash,
   JetStream may hand out newer messages before the ack wait of older ones ends) is
   negatively acknowledged with a short delay and applied in its turn. The stream holds each
   aggregate stream's events in version order, so the projection sees them in that order.
3. Event types the projection does not handle, or that this process has no class for, only
   advance the checkpoint. A handler that raises stops the batch; the whole batch is
   redelivered after a backoff (it is never skipped).

The stream must keep every message (no ``max_age`` or purge below a consumer's checkpoint);
when messages the consumer has not applied are gone, it stops with an error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from cqrskit.errors import CqrskitError, ProjectionError
from cqrskit.messages import LogPosition
from cqrskit.projections.projection import Projection
from cqrskit.projections.runner import ProjectionState, RunnerStatus
from cqrskit.publish._jetstream import Connection, check_cancelled, pause
from cqrskit.publish.message import check_subject_prefix, decode_event
from cqrskit.read_models.protocol import ReadModelStore, Statement

__all__ = ["JetStreamConsumer"]

_log = logging.getLogger("cqrskit.publish")


class JetStreamConsumer:
    """Applies a JetStream stream of integration events to one projection."""

    def __init__(
        self,
        read_models: ReadModelStore,
        projection: Projection,
        *,
        url: str,
        durable: str,
        stream: str = "CQRSKIT_EVENTS",
        subject_prefix: str = "cqrskit.events",
        batch_size: int = 200,
        ack_wait: float = 30.0,
        max_ack_pending: int = 1000,
        gap_delay: float = 0.5,
        fetch_timeout: float = 1.0,
        connect_timeout: float = 2.0,
        max_backoff: float = 30.0,
    ) -> None:
        self.read_models = read_models
        self.projection = projection
        self.url = url
        self.durable = durable
        self.stream = stream
        self.subject = f"{check_subject_prefix(subject_prefix)}.>"
        self.name = f"nats:{durable}"
        self.batch_size = batch_size
        self.ack_wait = ack_wait
        self.max_ack_pending = max_ack_pending
        self.gap_delay = gap_delay
        self.fetch_timeout = fetch_timeout
        self.connect_timeout = connect_timeout
        self.max_backoff = max_backoff
        self.status = RunnerStatus()
        self._connection: Connection | None = None
        self._subscription: JetStreamContext.PullSubscription | None = None

    async def migrate(self) -> None:
        """Create the projection's tables and the checkpoint table (idempotent)."""
        await self.read_models.migrate(self.projection.schema)

    async def connect(self) -> JetStreamContext.PullSubscription:
        """Connect and bind to the durable consumer, creating it when missing."""
        if (
            self._connection is not None
            and self._subscription is not None
            and not self._connection.lost.is_set()
        ):
            return self._subscription
        await self.disconnect()
        connection = await Connection.open(self.url, name=self.name, timeout=self.connect_timeout)
        try:
            info = await connection.js.stream_info(self.stream)
            checkpoint = (await self.read_models.checkpoint(self.name)).position
            if info.state.first_seq > checkpoint + 1 and info.state.messages:
                raise ProjectionError(
                    f"{self.name}: stream {self.stream} starts at {info.state.first_seq} but"
                    f" this consumer has applied up to {checkpoint}; messages are missing"
                )
            subscription = await connection.js.pull_subscribe(
                self.subject,
                durable=self.durable,
                stream=self.stream,
                config=ConsumerConfig(
                    ack_policy=AckPolicy.EXPLICIT,
                    deliver_policy=DeliverPolicy.ALL,
                    ack_wait=self.ack_wait,
                    max_deliver=-1,
                    max_ack_pending=max(self.max_ack_pending, self.batch_size),
                ),
            )
        except BaseException:
            await connection.close()
            raise
        self._connection, self._subscription = connection, subscription
        return subscription

    async def disconnect(self) -> None:
        """Close the connection, if any."""
        connection, self._connection, self._subscription = self._connection, None, None
        if connection is not None:
            await connection.close()

    async def consume(self, timeout: float | None = None) -> int:
        """Fetch one batch and apply it; return how many events it applied."""
        subscription = await self.connect()
        try:
            messages = await subscription.fetch(
                self.batch_size, timeout=timeout or self.fetch_timeout
            )
        except (NatsTimeoutError, TimeoutError):
            return 0
        return await self.handle(messages)

    async def handle(self, messages: Sequence[Msg]) -> int:
        """Apply a fetched batch in stream order, commit it with the checkpoint, then ack.

        Messages after a gap or after a failing one are negatively acknowledged and come
        back later; the applied prefix is committed either way. A handler's error is raised
        after that.
        """
        expected = await self.read_models.checkpoint(self.name)
        last = expected.position
        statements: list[Statement] = []
        done: list[Msg] = []
        later: list[Msg] = []
        failure: ProjectionError | None = None
        for message in messages:
            sequence = message.metadata.sequence.stream
            if sequence <= last:
                done.append(message)
                continue
            if sequence == last + 1 and not later:
                try:
                    statements.extend(self._statements(message))
                except ProjectionError as exc:
                    failure = exc
                else:
                    last = sequence
                    done.append(message)
                    continue
            later.append(message)
        moved = last - expected.position
        if moved:
            try:
                await self.read_models.commit(
                    self.name, statements, expected=expected, position=LogPosition(0, last)
                )
            except BaseException:
                for message in messages:
                    await self._nak(message, None)
                raise
        for message in done:
            await self._ack(message)
        for message in later:
            await self._nak(message, self.gap_delay)
        self.status.checkpoint = LogPosition(0, last)
        self.status.events_applied += moved
        if failure is not None:
            raise failure
        return moved

    def _statements(self, message: Msg) -> list[Statement]:
        try:
            envelope = decode_event(message.data)
            if envelope.event_type not in self.projection.handled_types:
                return []
            return list(self.projection.apply(envelope.to_domain_event()))
        except Exception as exc:
            raise ProjectionError(
                f"{self.name} failed on stream sequence {message.metadata.sequence.stream}:"
                f" {type(exc).__name__}: {exc}"
            ) from exc

    async def _ack(self, message: Msg) -> None:
        await message.ack()

    async def _nak(self, message: Msg, delay: float | None) -> None:
        try:
            await message.nak(delay)
        except Exception as exc:  # the connection is gone: the ack wait redelivers it
            _log.debug("%s: nak failed: %s", self.name, exc)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, reconnecting and retrying with backoff."""
        backoff = 0.05
        self.status.state = ProjectionState.RUNNING
        try:
            while not stop.is_set():
                try:
                    check_cancelled()
                    await self.consume()
                    check_cancelled()
                    self.status.state = ProjectionState.RUNNING
                    self.status.last_error = None
                    backoff = 0.05
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
                    if not isinstance(exc, ProjectionError):
                        await self.disconnect()  # a handler's failure keeps the connection
                    await pause(stop, backoff)
                    backoff = min(backoff * 2, self.max_backoff)
        finally:
            await self.disconnect()
            self.status.state = ProjectionState.STOPPED
