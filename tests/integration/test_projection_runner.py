"""The projection runner on a real SQLite file and on the memory backend.

The ``ledger`` projection records every event it applies in a table whose primary key is the
event id, and counts applications per account: applying any event twice fails the batch
(primary key), and a lost event shows up as a missing row.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cqrskit.backend import Backend, open_backend
from cqrskit.errors import ProjectionError
from cqrskit.messages import LOG_START, DomainEvent, LogPosition, utc_now
from cqrskit.projections.projection import Projection, on
from cqrskit.projections.runner import ProjectionRunner, ProjectionState
from cqrskit.read_models.protocol import Statement, sql
from cqrskit.store.protocol import ANY_VERSION, StreamAppend

ROOT = Path(__file__).resolve().parents[2]


class Deposited(DomainEvent):
    event_type = "tests.runner.Deposited"

    amount: int


class Ignored(DomainEvent):
    event_type = "tests.runner.Ignored"


_APPLIED = sql("INSERT INTO ledger_applied (event_id, stream_id, version) VALUES ($1, $2, $3)")
_BALANCE = sql(
    "INSERT INTO ledger_balance (account, balance, events) VALUES ($1, $2, 1)"
    " ON CONFLICT (account) DO UPDATE SET balance = ledger_balance.balance + excluded.balance,"
    " events = ledger_balance.events + 1"
)
APPLIED_ROWS = sql("SELECT event_id, stream_id, version FROM ledger_applied ORDER BY event_id")
BALANCES = sql("SELECT account, balance, events FROM ledger_balance ORDER BY account")
POISON = 13


class Ledger(Projection):
    """Balances per account, plus one row per applied event."""

    name = "ledger"
    schema = (
        sql(
            "CREATE TABLE IF NOT EXISTS ledger_applied ("
            " event_id TEXT PRIMARY KEY, stream_id TEXT NOT NULL, version INTEGER NOT NULL)"
        ),
        sql(
            "CREATE TABLE IF NOT EXISTS ledger_balance ("
            " account TEXT PRIMARY KEY, balance INTEGER NOT NULL, events INTEGER NOT NULL)"
        ),
    )
    truncate = (sql("DELETE FROM ledger_applied"), sql("DELETE FROM ledger_balance"))

    def __init__(self, *, poisoned: bool = False, kill_at: int | None = None) -> None:
        self.poisoned = poisoned
        self.kill_at = kill_at
        self.seen = 0

    @on(Deposited)
    def _deposited(self, event: Deposited) -> Iterator[Statement]:
        self.seen += 1
        if self.kill_at is not None and self.seen == self.kill_at:
            os._exit(9)  # a hard crash in the middle of a batch (crash test only)
        if self.poisoned and event.amount == POISON:
            raise ValueError("poison event")
        yield _APPLIED(str(event.event_id), event.stream_id, event.version)
        yield _BALANCE(event.stream_id, event.amount)


@pytest.fixture(params=["sqlite", "memory"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    url = f"sqlite:///{tmp_path}/runner.db" if request.param == "sqlite" else "memory://"
    opened = await open_backend(url)
    yield opened
    await opened.close()


async def deposit(backend: Backend, *amounts: int, account: str | None = None) -> None:
    for n, amount in enumerate(amounts):
        stream = account or f"acct-{n % 3}"
        event = Deposited(amount=amount, occurred_at=utc_now())
        await backend.store.append(StreamAppend(stream, ANY_VERSION, [event]))


async def snapshot(backend: Backend) -> tuple[list[Any], list[Any]]:
    read = backend.read_models
    return list(await read.fetch(APPLIED_ROWS)), list(await read.fetch(BALANCES))


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll ``check`` until it holds; fail after ``timeout`` seconds."""

    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(0.01)


async def runner_for(backend: Backend, projection: Projection, **options: Any) -> ProjectionRunner:
    runner = ProjectionRunner(backend.store, backend.read_models, projection, **options)
    await runner.migrate()
    return runner


async def assert_applied_exactly_once(backend: Backend) -> None:
    log = await backend.store.read_all(after=LOG_START, limit=100_000)
    deposits = [r.event for r in log if isinstance(r.event, Deposited)]
    applied, balances = await snapshot(backend)
    assert sorted(row["event_id"] for row in applied) == sorted(str(e.event_id) for e in deposits)
    expected: dict[str, list[int]] = {}
    for e in deposits:
        expected.setdefault(e.stream_id, []).append(e.amount)
    assert {row["account"]: (row["balance"], row["events"]) for row in balances} == {
        account: (sum(amounts), len(amounts)) for account, amounts in expected.items()
    }


async def test_catch_up_then_live_following_wakes_on_append(backend: Backend) -> None:
    await deposit(backend, *range(1, 11))
    # The poll interval is far longer than the test: only a wake-up can deliver live events.
    runner = await runner_for(backend, Ledger(), batch_size=4, poll_interval=120.0)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        head = await backend.store.head()
        await wait_until(lambda: _at(backend, head))
        assert runner.status.state is ProjectionState.RUNNING
        await deposit(backend, 100, 200, account="acct-live")
        head = await backend.store.head()
        await wait_until(lambda: _at(backend, head), timeout=5.0)
        await assert_applied_exactly_once(backend)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10.0)
    status = runner.status
    assert status.state is ProjectionState.STOPPED


async def _at(backend: Backend, position: LogPosition) -> bool:
    return await backend.read_models.checkpoint(Ledger.name) == position


async def test_events_a_projection_ignores_still_move_its_checkpoint(backend: Backend) -> None:
    await deposit(backend, 1)
    ignored = Ignored(occurred_at=utc_now())
    await backend.store.append(StreamAppend("other-1", ANY_VERSION, [ignored]))
    runner = await runner_for(backend, Ledger())
    assert await runner.catch_up() == await backend.store.head()
    await assert_applied_exactly_once(backend)


async def test_failing_batch_commits_the_events_before_the_poison_event_and_stops_at_it(
    backend: Backend,
) -> None:
    projection = Ledger(poisoned=True)
    runner = await runner_for(backend, projection, batch_size=3)
    await deposit(backend, 1, 2, 3)
    first = await runner.catch_up()
    before, _ = await snapshot(backend)
    await deposit(backend, 4, POISON, 6)
    with pytest.raises(ProjectionError, match="poison event"):
        await runner.catch_up()
    # The failed batch is applied event by event: 4 commits, the poison event stops it.
    after, _ = await snapshot(backend)
    assert len(after) == len(before) + 1
    stopped_at = await backend.read_models.checkpoint(Ledger.name)
    assert stopped_at > first
    assert runner.status.failing_position is not None
    assert runner.status.failing_position > stopped_at
    projection.poisoned = False
    await runner.catch_up()
    await assert_applied_exactly_once(backend)


async def test_runner_reports_failed_then_recovers_when_the_handler_is_fixed(
    backend: Backend,
) -> None:
    projection = Ledger(poisoned=True)
    runner = await runner_for(backend, projection, batch_size=2, max_backoff=0.1)
    await deposit(backend, 1, 2, POISON, 4)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        await wait_until(lambda: _failed_twice(runner))
        assert runner.status.state is ProjectionState.FAILED
        assert runner.status.last_error is not None
        assert "poison event" in runner.status.last_error
        applied, _ = await snapshot(backend)
        assert len(applied) == 2  # the batch before the poison event committed
        projection.poisoned = False
        head = await backend.store.head()
        await wait_until(lambda: _at(backend, head))
        await wait_until(lambda: _running(runner))
        assert runner.status.last_error is None
        await assert_applied_exactly_once(backend)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10.0)


async def _failed_twice(runner: ProjectionRunner) -> bool:
    return runner.status.failures >= 2


async def _running(runner: ProjectionRunner) -> bool:
    return runner.status.state is ProjectionState.RUNNING


async def test_fenced_checkpoint_rejects_a_second_runner(backend: Backend) -> None:
    first = await runner_for(backend, Ledger(), batch_size=3)
    zombie = await runner_for(backend, Ledger(), batch_size=3)
    await deposit(backend, 1, 2, 3, 4, 5)
    seen_by_zombie = await backend.read_models.checkpoint(Ledger.name)
    moved = await first.step(seen_by_zombie)
    assert moved != seen_by_zombie
    with pytest.raises(ProjectionError):
        await zombie.step(seen_by_zombie)  # it still believes the old checkpoint
    assert await backend.read_models.checkpoint(Ledger.name) == moved
    await zombie.catch_up()  # re-reading the checkpoint, it continues where `first` stopped
    await assert_applied_exactly_once(backend)


async def test_replay_after_a_crash_between_batches_applies_nothing_twice(
    backend: Backend,
) -> None:
    runner = await runner_for(backend, Ledger(), batch_size=3)
    await deposit(backend, *range(1, 12))
    checkpoint = await runner.read_models.checkpoint(Ledger.name)
    for _ in range(2):
        checkpoint = await runner.step(checkpoint)
    del runner  # crashed: its in-memory state is gone, the database keeps what it committed
    successor = await runner_for(backend, Ledger(), batch_size=3)
    assert await successor.catch_up() == await backend.store.head()
    await assert_applied_exactly_once(backend)


async def test_rebuild_equals_live(backend: Backend) -> None:
    runner = await runner_for(backend, Ledger(), batch_size=5)
    for amounts in ((1, 2, 3), (4, 5), (6, 7, 8, 9)):
        await deposit(backend, *amounts)
        await runner.catch_up()
    live = await snapshot(backend)
    progress: list[LogPosition] = []
    rebuilt_to = await runner.rebuild(batch_size=4, progress=lambda p, _: progress.append(p))
    assert rebuilt_to == await backend.store.head()
    assert await snapshot(backend) == live
    assert len(progress) == 3  # 9 events in pages of 4
    assert runner.status.state is ProjectionState.IDLE
    await assert_applied_exactly_once(backend)


_CRASHING_RUNNER = textwrap.dedent(
    """
    import asyncio, sys
    from cqrskit.backend import open_backend
    from cqrskit.projections.runner import ProjectionRunner
    from tests.integration.test_projection_runner import Ledger

    async def main() -> None:
        backend = await open_backend(sys.argv[1])
        runner = ProjectionRunner(
            backend.store, backend.read_models, Ledger(kill_at=int(sys.argv[2])), batch_size=4
        )
        await runner.migrate()
        await runner.catch_up()

    asyncio.run(main())
    """
)


async def test_hard_kill_mid_batch_then_a_new_runner_applies_nothing_twice(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/crash.db"
    backend = await open_backend(url)
    try:
        await deposit(backend, *range(1, 15))
    finally:
        await backend.close()
    # Killed while computing its third batch (events 9-12): two batches are committed.
    crashed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", _CRASHING_RUNNER, url, "10"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert crashed.returncode == 9, crashed.stderr.decode()
    backend = await open_backend(url)
    try:
        assert await backend.read_models.checkpoint(Ledger.name) == LogPosition(0, 8)
        successor = await runner_for(backend, Ledger(), batch_size=4)
        await successor.catch_up()
        await assert_applied_exactly_once(backend)
    finally:
        await backend.close()
