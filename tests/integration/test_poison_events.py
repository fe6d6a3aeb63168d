"""Poison events on SQLite and PostgreSQL: bounded retries with backoff, then stop or park.

The ``tally`` projection records each applied event in a table with a unique event id (an
event applied twice fails the batch) and an increasing sequence number (the order events
were applied in). Its handler fails on chosen events, a given number of times. Sleeping is
injected, so the backoff schedule is asserted without waiting.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from cqrskit.backend import Backend, open_backend
from cqrskit.errors import NotFound
from cqrskit.messages import DomainEvent, LogPosition, utc_now
from cqrskit.projections.deadletters import (
    backoff_delays,
    retry_dead_letters,
    skip_dead_letters,
)
from cqrskit.projections.projection import Projection, on
from cqrskit.projections.runner import PoisonEvent, ProjectionRunner, ProjectionState
from cqrskit.read_models.protocol import Statement, sql
from cqrskit.store.protocol import ANY_VERSION, StreamAppend

SEED = 20261126
BASE = 0.05
CAP = 30.0


class Counted(DomainEvent):
    event_type = "tests.poison.Counted"

    n: int


_APPLY = sql("INSERT INTO tally_applied (event_id, stream_id, version, n) VALUES ($1, $2, $3, $4)")
APPLIED = sql("SELECT stream_id, version, n FROM tally_applied ORDER BY seq")


class Tally(Projection):
    """One row per applied event; fails on the numbers in ``poison`` (``failures`` times)."""

    name = "tally"
    schema = (
        sql(
            "CREATE TABLE IF NOT EXISTS tally_applied (seq bigserial PRIMARY KEY,"
            " event_id text UNIQUE NOT NULL, stream_id text NOT NULL, version integer NOT NULL,"
            " n integer NOT NULL)",
            sqlite="CREATE TABLE IF NOT EXISTS tally_applied ("
            " seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT UNIQUE NOT NULL,"
            " stream_id TEXT NOT NULL, version INTEGER NOT NULL, n INTEGER NOT NULL)",
        ),
    )
    truncate = (sql("DELETE FROM tally_applied"),)

    def __init__(self, poison: set[int] | None = None, failures: int = 1_000_000) -> None:
        self.poison = poison or set()
        self.failures = failures
        self.calls: dict[int, int] = {}

    @on(Counted)
    def _counted(self, event: Counted) -> Iterator[Statement]:
        self.calls[event.n] = self.calls.get(event.n, 0) + 1
        if event.n in self.poison and self.calls[event.n] <= self.failures:
            raise ValueError(f"cannot count {event.n}")
        yield _APPLY(str(event.event_id), event.stream_id, event.version, event.n)


class Sleeps:
    """An injected sleep that records each requested delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


@pytest.fixture
async def backend(database_url: str) -> AsyncIterator[Backend]:
    opened = await open_backend(database_url)
    yield opened
    await opened.close()


async def append(backend: Backend, *events: tuple[str, int]) -> None:
    for stream, n in events:
        event = Counted(n=n, occurred_at=utc_now())
        await backend.store.append(StreamAppend(stream, ANY_VERSION, [event]))


async def runner_for(
    backend: Backend, projection: Tally, sleeps: Sleeps, **options: Any
) -> ProjectionRunner:
    runner = ProjectionRunner(
        backend.store,
        backend.read_models,
        projection,
        batch_size=100,
        max_retries=3,
        retry_delay=BASE,
        max_backoff=CAP,
        sleep=sleeps,
        rng=random.Random(SEED),
        **options,
    )
    await runner.migrate()
    return runner


async def drain(runner: ProjectionRunner, backend: Backend) -> LogPosition:
    """Catch up until the head seen now is applied (PostgreSQL's read fence can lag a moment:
    any transaction in the cluster holds it back)."""
    head = await backend.store.head()
    for _ in range(600):
        checkpoint = await runner.catch_up()
        if checkpoint >= head:
            return checkpoint
        await backend.store.wait_for_events(checkpoint, 0.05)
    raise AssertionError(f"projection did not reach {head.token()}")


async def step_to_head(runner: ProjectionRunner, backend: Backend, at: LogPosition) -> None:
    head = await backend.store.head()
    for _ in range(600):
        at = await runner.step(at)
        if at >= head:
            return
        await backend.store.wait_for_events(at, 0.05)
    raise AssertionError(f"projection did not reach {head.token()}")


async def applied(backend: Backend) -> list[tuple[str, int, int]]:
    rows = await backend.read_models.fetch(APPLIED)
    return [(row["stream_id"], row["version"], row["n"]) for row in rows]


def expected_schedule(retries: int) -> list[float]:
    rng = random.Random(SEED)
    return [min(CAP, BASE * 2**n) * (0.5 + rng.random() / 2) for n in range(retries)]


# a-1, b-1, a-2 (poison), c-1, a-3, b-2: stream a is the one that fails.
LOG = (("a", 1), ("b", 2), ("a", 3), ("c", 4), ("a", 5), ("b", 6))


async def position_of(backend: Backend, n: int) -> LogPosition:
    for record in await backend.store.read_all(after=LogPosition(0, 0), limit=1000):
        if isinstance(record.event, Counted) and record.event.n == n:
            return record.position
    raise AssertionError(n)


def test_backoff_schedule_doubles_within_jitter_and_is_capped() -> None:
    delays = list(backoff_delays(12, base=0.1, cap=5.0, rng=random.Random(1)))
    assert len(delays) == 12
    for n, delay in enumerate(delays):
        nominal = min(5.0, 0.1 * 2**n)
        assert nominal * 0.5 <= delay < nominal
    assert delays == list(backoff_delays(12, base=0.1, cap=5.0, rng=random.Random(1)))
    assert delays != list(backoff_delays(12, base=0.1, cap=5.0, rng=random.Random(2)))


async def test_poison_event_under_stop_keeps_the_projection_at_it(backend: Backend) -> None:
    projection, sleeps = Tally(poison={3}), Sleeps()
    runner = await runner_for(backend, projection, sleeps, on_failure="stop")
    await append(backend, *LOG)
    with pytest.raises(PoisonEvent) as raised:
        await drain(runner, backend)
    assert raised.value.attempts == 4
    # The failing batch, then the event alone: a first attempt and three retries.
    assert projection.calls[3] == 1 + 4
    assert sleeps.delays == expected_schedule(3)
    assert await applied(backend) == [("a", 1, 1), ("b", 1, 2)]  # nothing after the poison
    poison = await position_of(backend, 3)
    assert runner.status.state is ProjectionState.FAILED
    assert runner.status.failing_position == poison
    assert runner.status.last_error is not None
    assert "cannot count 3" in runner.status.last_error
    assert await backend.read_models.checkpoint("tally") < poison
    assert await backend.read_models.dead_letters("tally") == []
    # Stopped means stopped: another pass fails on the same event and applies nothing more.
    with pytest.raises(PoisonEvent):
        await drain(runner, backend)
    assert await applied(backend) == [("a", 1, 1), ("b", 1, 2)]


async def test_poison_event_under_park_parks_its_stream_and_others_go_on(
    backend: Backend,
) -> None:
    projection, sleeps = Tally(poison={3}), Sleeps()
    runner = await runner_for(backend, projection, sleeps, on_failure="park")
    await append(backend, *LOG)
    await drain(runner, backend)
    assert sleeps.delays == expected_schedule(3)
    assert await applied(backend) == [("a", 1, 1), ("b", 1, 2), ("c", 1, 4), ("b", 2, 6)]
    dead = await backend.read_models.dead_letters("tally")
    assert [(d.stream_id, d.version, d.status) for d in dead] == [
        ("a", 2, "parked"),
        ("a", 3, "parked"),
    ]
    culprit, later = dead
    assert culprit.position == await position_of(backend, 3)
    assert culprit.attempts == 4
    assert "cannot count 3" in culprit.error
    assert culprit.event_type == Counted.event_type
    assert culprit.parked_at is not None
    assert later.attempts == 0  # never tried: an earlier event of its stream is parked
    assert projection.calls.get(5) is None
    assert await backend.read_models.parked_streams("tally") == frozenset({"a"})
    # Later events of the parked stream are parked too; other streams keep flowing.
    await append(backend, ("a", 7), ("c", 8))
    await drain(runner, backend)
    assert [d.version for d in await backend.read_models.dead_letters("tally")] == [2, 3, 4]
    assert (await applied(backend))[-1] == ("c", 2, 8)


async def test_transient_failure_that_succeeds_on_retry_parks_nothing(backend: Backend) -> None:
    projection, sleeps = Tally(poison={3}, failures=2), Sleeps()
    runner = await runner_for(backend, projection, sleeps, on_failure="park")
    await append(backend, *LOG)
    await drain(runner, backend)
    # Failed in the batch and in the event's first attempt, applied on the first retry.
    assert sleeps.delays == expected_schedule(1)
    assert projection.calls[3] == 3
    assert [row[2] for row in await applied(backend)] == [1, 2, 3, 4, 5, 6]
    assert await backend.read_models.dead_letters() == []
    assert runner.status.failing_position is None


async def test_retry_after_fix_applies_parked_events_once_in_order_then_the_stream_flows(
    backend: Backend,
) -> None:
    projection, sleeps = Tally(poison={3}), Sleeps()
    runner = await runner_for(backend, projection, sleeps, on_failure="park")
    await append(backend, *LOG, ("a", 7))
    await drain(runner, backend)
    assert len(await backend.read_models.dead_letters("tally")) == 3

    # Still broken: nothing is applied, the culprit's attempts grow, everything stays parked.
    again = await retry_dead_letters(backend.store, backend.read_models, [projection], "tally", "a")
    assert (again.applied, again.remaining) == (0, 3)
    assert again.error is not None
    assert "cannot count 3" in again.error
    dead = await backend.read_models.dead_letters("tally")
    assert [d.attempts for d in dead] == [5, 0, 0]

    projection.poison.clear()  # the fix
    done = await retry_dead_letters(backend.store, backend.read_models, [projection], "tally", "a")
    assert (done.applied, done.remaining, done.error) == (3, 0, None)
    rows = await applied(backend)
    assert [row for row in rows if row[0] == "a"] == [
        ("a", 1, 1),
        ("a", 2, 3),
        ("a", 3, 5),
        ("a", 4, 7),
    ]
    assert await backend.read_models.dead_letters("tally") == []
    with pytest.raises(NotFound):  # nothing left to retry: never applied twice
        await retry_dead_letters(backend.store, backend.read_models, [projection], "tally", "a")

    await append(backend, ("a", 9))
    await drain(runner, backend)
    assert (await applied(backend))[-1] == ("a", 5, 9)
    assert len(await applied(backend)) == len({row[2] for row in await applied(backend)}) == 8


async def test_skip_records_the_events_and_lets_the_stream_flow_again(backend: Backend) -> None:
    projection, sleeps = Tally(poison={3}), Sleeps()
    runner = await runner_for(backend, projection, sleeps, on_failure="park")
    await append(backend, *LOG)
    await drain(runner, backend)
    culprit, later = await backend.read_models.dead_letters("tally")
    with pytest.raises(NotFound):
        await skip_dead_letters(backend.read_models, [projection], "tally", "a", [later.id + 999])
    result = await skip_dead_letters(backend.read_models, [projection], "tally", "a", [culprit.id])
    assert (result.skipped, result.remaining) == (1, 1)
    # The later event is still parked: its stream waits for it, in order.
    assert await backend.read_models.parked_streams("tally") == frozenset({"a"})
    done = await retry_dead_letters(backend.store, backend.read_models, [projection], "tally", "a")
    assert done.applied == 1
    statuses = [(d.version, d.status) for d in await backend.read_models.dead_letters("tally")]
    assert statuses == [(2, "skipped")]  # kept as the record, never silently dropped
    assert ("a", 2, 3) not in await applied(backend)
    await append(backend, ("a", 7))
    await drain(runner, backend)
    assert (await applied(backend))[-1] == ("a", 4, 7)
    with pytest.raises(NotFound):
        await skip_dead_letters(backend.read_models, [projection], "nope", "a")


async def test_a_runner_that_missed_a_skip_applies_the_stream_instead_of_parking(
    backend: Backend,
) -> None:
    projection, sleeps = Tally(poison={3}), Sleeps()
    runner = await runner_for(backend, projection, sleeps, on_failure="park")
    await append(backend, *LOG)
    checkpoint = await drain(runner, backend)
    # Another process skips the stream's parked events while this runner still thinks
    # stream a is parked; its next batch must not park a's new event under a missing blocker.
    await skip_dead_letters(backend.read_models, [projection], "tally", "a")
    await append(backend, ("a", 7))
    await step_to_head(runner, backend, checkpoint)
    assert (await applied(backend))[-1] == ("a", 4, 7)
    assert [d.status for d in await backend.read_models.dead_letters("tally")] == ["skipped"] * 2
