"""The NATS JetStream publisher against private nats-server processes.

Each test starts its own ``nats-server -js`` (see :mod:`tests.integration.nats_server`) so it
can kill and restart it. The checks read the JetStream stream back message by message: every
event of the log is there exactly once (by ``Nats-Msg-Id`` and by the body's event id), and
each aggregate stream's versions appear in order 1, 2, 3, ...
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import nats
import pytest

from cqrskit.backend import Backend, open_backend
from cqrskit.command_bus import CommandBus
from cqrskit.config import Settings
from cqrskit.messages import LOG_START, DomainEvent, LogPosition, utc_now
from cqrskit.projections.projection import Projection, on
from cqrskit.projections.runner import ProjectionState
from cqrskit.publish import NatsPublisher, decode_event, event_subject
from cqrskit.query_bus import QueryBus
from cqrskit.read_models.protocol import ReadModelStore, Statement, sql
from cqrskit.service import Runtime, Service
from cqrskit.store.protocol import ANY_VERSION, StreamAppend
from tests.integration.nats_server import NatsServer, free_port, running_nats

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "cqrskit.events"
STREAM = "CQRSKIT_EVENTS"
DEADLINE = 60.0
"""Upper bound for waits on the publisher (a bound, not a timing assertion)."""


class Moved(DomainEvent):
    event_type = "tests.nats.Moved"

    step: int


@dataclass(frozen=True)
class Published:
    sequence: int
    subject: str
    msg_id: str
    event_id: UUID
    stream_id: str
    version: int


@pytest.fixture
def server(tmp_path: Path) -> Iterator[NatsServer]:
    with running_nats(tmp_path) as running:
        yield running


@pytest.fixture
async def backend(database_url: str) -> AsyncIterator[Backend]:
    opened = await open_backend(database_url)
    await opened.read_models.migrate([])
    try:
        yield opened
    finally:
        await opened.close()


async def append_events(backend: Backend, rng: random.Random, count: int, streams: int) -> None:
    """Append ``count`` events to random streams, one to four events per append."""
    written = 0
    while written < count:
        size = min(rng.randint(1, 4), count - written)
        stream_id = f"account-{rng.randrange(streams)}"
        events = [Moved(occurred_at=utc_now(), step=written + i) for i in range(size)]
        await backend.store.append(StreamAppend(stream_id, ANY_VERSION, events))
        written += size


async def all_events(backend: Backend) -> list[DomainEvent]:
    events: list[DomainEvent] = []
    position = LOG_START
    while page := await backend.store.read_all(after=position, limit=1000):
        events.extend(record.event for record in page)
        position = page[-1].position
    return events


async def stream_contents(url: str) -> list[Published]:
    """Every message of the JetStream stream, in stream order."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(STREAM)
        out = []
        for sequence in range(info.state.first_seq, info.state.last_seq + 1):
            message = await js.get_msg(STREAM, sequence)
            assert message.data is not None
            body = decode_event(message.data)
            out.append(
                Published(
                    sequence,
                    message.subject or "",
                    (message.headers or {}).get("Nats-Msg-Id", ""),
                    body.event_id,
                    body.stream_id,
                    body.version,
                )
            )
        return out
    finally:
        await nc.close()


def assert_each_event_once_in_order(events: list[DomainEvent], published: list[Published]) -> None:
    assert [p.msg_id for p in published] == [str(p.event_id) for p in published]
    assert len({p.event_id for p in published}) == len(published), "a duplicate was stored"
    assert sorted(str(p.event_id) for p in published) == sorted(str(e.event_id) for e in events)
    versions: dict[str, list[int]] = {}
    for p in published:
        versions.setdefault(p.stream_id, []).append(p.version)
    for stream_id, seen in versions.items():
        assert seen == list(range(1, len(seen) + 1)), f"{stream_id} out of order: {seen[:20]}"


async def wait_published(backend: Backend, name: str = "publisher:nats") -> LogPosition:
    """Wait until the publisher's checkpoint reaches the head of the log."""
    head = await backend.store.head()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while (checkpoint := await backend.read_models.checkpoint(name)) < head:
        assert loop.time() < deadline, f"publisher stuck at {checkpoint} (head {head})"
        await asyncio.sleep(0.05)
    return checkpoint


async def test_publish_sends_each_event_once_with_its_id_and_json_body(
    backend: Backend, server: NatsServer
) -> None:
    await append_events(backend, random.Random(1), 300, streams=7)
    publisher = NatsPublisher(backend.store, backend.read_models, url=server.url, batch_size=64)
    try:
        checkpoint = await publisher.publish_pending()
    finally:
        await publisher.disconnect()

    events = await all_events(backend)
    assert checkpoint == await backend.store.head()
    assert await backend.read_models.checkpoint("publisher:nats") == checkpoint
    published = await stream_contents(server.url)
    assert_each_event_once_in_order(events, published)
    assert {p.subject for p in published} == {event_subject(PREFIX, Moved.event_type)}
    assert event_subject(PREFIX, Moved.event_type) == "cqrskit.events.tests.nats.Moved"

    nc = await nats.connect(server.url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(STREAM)
        raw = await js.get_msg(STREAM, 1)
    finally:
        await nc.close()
    assert info.config.duplicate_window == 120.0
    assert info.config.subjects == [f"{PREFIX}.>"]
    assert str(info.config.storage) in ("file", "StorageType.FILE")
    assert raw.data is not None
    body = json.loads(raw.data)
    first = events[0]
    assert isinstance(first, Moved)
    assert body == {
        "event_id": str(first.event_id),
        "event_type": "tests.nats.Moved",
        "schema_version": 1,
        "stream_id": first.stream_id,
        "version": first.version,
        "occurred_at": first.occurred_at.isoformat(),
        "metadata": {},
        "data": {"step": first.step},
    }


async def test_republishing_from_an_old_checkpoint_stores_nothing_twice(
    backend: Backend, server: NatsServer
) -> None:
    await append_events(backend, random.Random(2), 200, streams=5)
    first = NatsPublisher(backend.store, backend.read_models, url=server.url)
    # A second checkpoint name stands for a publisher that crashed before moving its
    # checkpoint: it publishes the whole log again.
    again = NatsPublisher(
        backend.store, backend.read_models, url=server.url, name="publisher:again", batch_size=50
    )
    try:
        await first.publish_pending()
        await again.publish_pending()
    finally:
        await first.disconnect()
        await again.disconnect()
    assert again.duplicates == 200
    assert first.duplicates == 0
    assert_each_event_once_in_order(await all_events(backend), await stream_contents(server.url))


async def test_killing_the_publisher_and_restarting_nats_loses_and_duplicates_nothing(
    backend: Backend, server: NatsServer
) -> None:
    rng = random.Random(6)
    writer = asyncio.create_task(_write_slowly(backend, rng, total=3000))
    restarted = False
    for kill in range(16):
        stop = asyncio.Event()
        publisher = NatsPublisher(
            backend.store,
            backend.read_models,
            url=server.url,
            batch_size=rng.choice([10, 100, 500]),
            poll_interval=0.05,
            max_backoff=0.2,
        )
        task = asyncio.create_task(publisher.run(stop))
        await asyncio.sleep(rng.uniform(0.01, 0.4))
        if kill == 7:
            await asyncio.to_thread(
                server.restart, kill=True
            )  # NATS goes away mid-publish and comes back
            restarted = True
            await asyncio.sleep(rng.uniform(0.05, 0.3))
        task.cancel()  # the publisher dies at a random point
        with pytest.raises(asyncio.CancelledError):
            await task
    await writer
    assert restarted

    stop = asyncio.Event()
    publisher = NatsPublisher(backend.store, backend.read_models, url=server.url, max_backoff=0.2)
    task = asyncio.create_task(publisher.run(stop))
    try:
        await wait_published(backend)
    finally:
        stop.set()
        await task
    assert publisher.status.state is ProjectionState.STOPPED
    events = await all_events(backend)
    assert len(events) == 3000
    assert_each_event_once_in_order(events, await stream_contents(server.url))


async def _write_slowly(backend: Backend, rng: random.Random, *, total: int) -> None:
    for _ in range(30):
        await append_events(backend, rng, total // 30, streams=40)
        await asyncio.sleep(rng.uniform(0.0, 0.1))


_PUBLISHER_PROCESS = textwrap.dedent(
    """
    import asyncio, sys
    from cqrskit.backend import open_backend
    from cqrskit.publish import NatsPublisher

    async def main() -> None:
        backend = await open_backend(sys.argv[1])
        publisher = NatsPublisher(
            backend.store, backend.read_models, url=sys.argv[2], batch_size=int(sys.argv[3]),
            poll_interval=0.05, max_backoff=0.2,
        )
        await publisher.run(asyncio.Event())

    asyncio.run(main())
    """
)


async def test_sigkilled_publisher_processes_resume_without_loss_or_duplicates(
    sqlite_url: str, server: NatsServer
) -> None:
    backend = await open_backend(sqlite_url)
    await backend.read_models.migrate([])
    rng = random.Random(9)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    try:
        writer = asyncio.create_task(_write_slowly(backend, rng, total=2400))
        for _ in range(8):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _PUBLISHER_PROCESS,
                sqlite_url,
                server.url,
                str(rng.choice([20, 200])),
                env=env,
                cwd=ROOT,
            )
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            process.send_signal(signal.SIGKILL)
            await process.wait()
        await writer
        publisher = NatsPublisher(backend.store, backend.read_models, url=server.url)
        try:
            await publisher.publish_pending()
        finally:
            await publisher.disconnect()
        events = await all_events(backend)
        assert len(events) == 2400
        assert_each_event_once_in_order(events, await stream_contents(server.url))
    finally:
        await backend.close()


async def test_unreachable_nats_at_start_is_retried_without_moving_the_checkpoint(
    backend: Backend, tmp_path: Path
) -> None:
    await append_events(backend, random.Random(3), 50, streams=3)
    with running_nats(tmp_path, start=False) as server:
        server.port = free_port()
        stop = asyncio.Event()
        publisher = NatsPublisher(
            backend.store,
            backend.read_models,
            url=server.url,
            connect_timeout=1,
            max_backoff=0.2,
        )
        task = asyncio.create_task(publisher.run(stop))
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + DEADLINE
            while publisher.status.failures < 3:
                assert loop.time() < deadline
                assert not task.done()
                await asyncio.sleep(0.05)
            assert publisher.status.state is ProjectionState.FAILED
            assert publisher.status.last_error
            assert await backend.read_models.checkpoint("publisher:nats") == LOG_START

            await asyncio.to_thread(server.start)
            await wait_published(backend)
        finally:
            stop.set()
            await task
        assert publisher.status.last_error is None
        assert_each_event_once_in_order(
            await all_events(backend), await stream_contents(server.url)
        )


class Steps(Projection):
    """Counts events per aggregate stream (for the runtime test)."""

    name = "tests_nats_steps"
    schema = (
        sql(
            "CREATE TABLE IF NOT EXISTS tests_nats_steps ("
            " stream_id TEXT PRIMARY KEY, events INTEGER NOT NULL)"
        ),
    )
    truncate = (sql("DELETE FROM tests_nats_steps"),)

    @on(Moved)
    def _moved(self, event: Moved) -> Iterator[Statement]:
        yield _STEP(event.stream_id)


_STEP = sql(
    "INSERT INTO tests_nats_steps (stream_id, events) VALUES ($1, 1)"
    " ON CONFLICT (stream_id) DO UPDATE SET events = tests_nats_steps.events + 1"
)


async def test_runtime_publishes_when_nats_url_is_set_and_rebuilds_never_republish(
    database_url: str, server: NatsServer
) -> None:
    service = Service(title="nats test", projections=lambda: [Steps()], register=_no_handlers)
    settings = Settings(
        database_url=database_url, nats_url=server.url, projection_poll_interval=0.05
    )
    runtime = await Runtime.open(service, settings)
    try:
        assert runtime.publisher is not None
        await append_events(runtime.backend, random.Random(5), 120, streams=4)
        runtime.start_projections()
        published = await wait_published(runtime.backend)
        lags = {lag.name: lag for lag in await runtime.lag()}
        assert lags["publisher:nats"].position == published
        assert lags["publisher:nats"].lag_events == 0

        await runtime.runners["tests_nats_steps"].rebuild()
        assert await runtime.backend.read_models.checkpoint("publisher:nats") == published
        await append_events(runtime.backend, random.Random(6), 30, streams=4)
        await wait_published(runtime.backend)
        events = await all_events(runtime.backend)
    finally:
        await runtime.close()
    assert len(events) == 150
    assert_each_event_once_in_order(events, await stream_contents(server.url))


def _no_handlers(commands: CommandBus, queries: QueryBus, read_models: ReadModelStore) -> None:
    return None
