"""The JetStream consumer helper: exactly-once application into another service's read model.

A producer (SQLite event store + :class:`NatsPublisher`) fills a private nats-server. The
consumer applies the messages to the ``tally`` projection in its own database (SQLite and
PostgreSQL): one row per event counting how often it was applied, and one row per aggregate
stream counting versions that arrived out of order. Lost acks (ack-timeout redelivery),
failing handlers (nak) and consumers killed mid-batch must leave every count at exactly one
and no stream out of order.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from cqrskit.backend import Backend, open_backend
from cqrskit.messages import LogPosition
from cqrskit.projections.projection import Projection, on
from cqrskit.publish import JetStreamConsumer, NatsPublisher
from cqrskit.read_models.protocol import Statement, sql
from tests.integration.nats_server import NatsServer, running_nats
from tests.integration.test_nats_publisher import (
    STREAM,
    Moved,
    all_events,
    append_events,
)

DEADLINE = 90.0
"""Upper bound for waits on the consumer (a bound, not a timing assertion)."""

_APPLIED = sql(
    "INSERT INTO tally_events (event_id, applied) VALUES ($1, 1)"
    " ON CONFLICT (event_id) DO UPDATE SET applied = tally_events.applied + 1"
)
_ORDER = sql(
    "INSERT INTO tally_streams (stream_id, version, disorder)"
    " VALUES ($1, $2, CASE WHEN $2 = 1 THEN 0 ELSE 1 END)"
    " ON CONFLICT (stream_id) DO UPDATE SET"
    " disorder = tally_streams.disorder"
    " + CASE WHEN excluded.version = tally_streams.version + 1 THEN 0 ELSE 1 END,"
    " version = excluded.version"
)
EVENTS = sql("SELECT event_id, applied FROM tally_events")
STREAMS = sql("SELECT stream_id, version, disorder FROM tally_streams")


class Tally(Projection):
    """Counts applications per event and out-of-order versions per aggregate stream."""

    name = "tally"
    schema = (
        sql(
            "CREATE TABLE IF NOT EXISTS tally_events ("
            " event_id TEXT PRIMARY KEY, applied INTEGER NOT NULL)"
        ),
        sql(
            "CREATE TABLE IF NOT EXISTS tally_streams ("
            " stream_id TEXT PRIMARY KEY, version INTEGER NOT NULL, disorder INTEGER NOT NULL)"
        ),
    )
    truncate = (sql("DELETE FROM tally_events"), sql("DELETE FROM tally_streams"))

    def __init__(self, *, fail_every: int = 0) -> None:
        self.fail_every = fail_every
        self.failed: set[int] = set()

    @on(Moved)
    def _moved(self, event: Moved) -> Iterator[Statement]:
        # A transient failure: every fail_every-th event fails the first time this instance
        # meets it, so its batch is redelivered.
        if self.fail_every and event.step % self.fail_every == 0 and event.step not in self.failed:
            self.failed.add(event.step)
            raise RuntimeError("transient failure")
        yield _APPLIED(str(event.event_id))
        yield _ORDER(event.stream_id, event.version)


class LossyConsumer(JetStreamConsumer):
    """Drops some acks after the commit, as a lost packet or a crash right after it would."""

    def __init__(self, *args: object, rng: random.Random, loss: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.rng = rng
        self.loss = loss
        self.dropped = 0

    async def _ack(self, message: Msg) -> None:
        if self.rng.random() < self.loss:
            self.dropped += 1
            return
        await super()._ack(message)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    with running_nats(tmp_path) as running:
        yield running


@pytest.fixture
async def producer(sqlite_url: str, server: NatsServer) -> AsyncIterator[Backend]:
    """An event store whose events are all published to ``server``."""
    backend = await open_backend(sqlite_url)
    await backend.read_models.migrate([])
    await append_events(backend, random.Random(4), 1500, streams=30)
    publisher = NatsPublisher(backend.store, backend.read_models, url=server.url)
    try:
        await publisher.publish_pending()
    finally:
        await publisher.disconnect()
    try:
        yield backend
    finally:
        await backend.close()


@pytest.fixture
async def consumer_db(database_url: str) -> AsyncIterator[Backend]:
    """The consuming service's own database."""
    backend = await open_backend(database_url)
    try:
        yield backend
    finally:
        await backend.close()


async def last_sequence(url: str) -> int:
    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().stream_info(STREAM)).state.last_seq
    finally:
        await nc.close()


async def wait_consumed(consumer_db: Backend, name: str, last: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while (checkpoint := await consumer_db.read_models.checkpoint(name)) < LogPosition(0, last):
        assert loop.time() < deadline, f"consumer stuck at {checkpoint} of {last}"
        await asyncio.sleep(0.05)


async def assert_applied_once_in_order(producer: Backend, consumer_db: Backend) -> None:
    events = await all_events(producer)
    rows = await consumer_db.read_models.fetch(EVENTS)
    assert sorted(row["event_id"] for row in rows) == sorted(str(e.event_id) for e in events)
    assert {row["applied"] for row in rows} == {1}, "an event was applied twice"
    streams = await consumer_db.read_models.fetch(STREAMS)
    assert sum(row["disorder"] for row in streams) == 0, "versions arrived out of order"
    last = {e.stream_id: e.version for e in events}
    assert {row["stream_id"]: row["version"] for row in streams} == last


async def test_consumer_applies_each_event_once_despite_lost_acks_failures_and_kills(
    producer: Backend, consumer_db: Backend, server: NatsServer
) -> None:
    rng = random.Random(11)
    last = await last_sequence(server.url)
    dropped = failures = 0
    for round_ in range(6):
        projection = Tally(fail_every=97)
        consumer = LossyConsumer(
            consumer_db.read_models,
            projection,
            url=server.url,
            durable="tally",
            rng=rng,
            loss=0.1,
            batch_size=rng.choice([1, 25, 200]),
            ack_wait=1.0,
            gap_delay=0.1,
            fetch_timeout=0.2,
            max_backoff=0.1,
        )
        await consumer.migrate()
        stop = asyncio.Event()
        task = asyncio.create_task(consumer.run(stop))
        if round_ < 5:
            await asyncio.sleep(rng.uniform(0.05, 0.5))
            task.cancel()  # the consuming process dies mid-batch
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            try:
                await wait_consumed(consumer_db, consumer.name, last)
            finally:
                stop.set()
                await task
        dropped += consumer.dropped
        failures += len(projection.failed)
    assert dropped > 0
    assert failures > 0
    await assert_applied_once_in_order(producer, consumer_db)


async def test_messages_handed_out_after_a_crash_wait_for_the_earlier_ones(
    producer: Backend, consumer_db: Backend, server: NatsServer
) -> None:
    # A first consumer fetches the first 50 messages and dies without applying them: until
    # their ack wait ends, JetStream hands the next ones to the new consumer, which must
    # hold them back rather than apply them ahead of the missing ones.
    first = JetStreamConsumer(
        consumer_db.read_models, Tally(), url=server.url, durable="tally", ack_wait=1.0
    )
    await first.migrate()
    subscription = await first.connect()
    taken = await subscription.fetch(50, timeout=5)
    assert len(taken) == 50
    await first.disconnect()

    second = JetStreamConsumer(
        consumer_db.read_models,
        Tally(),
        url=server.url,
        durable="tally",
        ack_wait=1.0,
        gap_delay=0.1,
        fetch_timeout=0.2,
    )
    held_back = 0
    original = second.handle

    async def handle(messages: Sequence[Msg]) -> int:
        nonlocal held_back
        checkpoint = (await consumer_db.read_models.checkpoint(second.name)).position
        held_back += sum(m.metadata.sequence.stream > checkpoint + 1 for m in messages[:1])
        return await original(messages)

    second.handle = handle  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(second.run(stop))
    try:
        await wait_consumed(consumer_db, second.name, await last_sequence(server.url))
    finally:
        stop.set()
        await task
    assert held_back > 0
    await assert_applied_once_in_order(producer, consumer_db)
