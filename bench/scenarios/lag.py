"""Scenario 6: append-to-visible lag at half the maximum command rate, PostgreSQL.

Commands (new stream, one event) are sent open-loop at half the rate our 32-way concurrent
run reached (scenario 2, or a short probe when it did not run) while a live
:class:`~cqrskit.projections.runner.ProjectionRunner` follows the log in the same process.
Lag of an event = time from its ``dispatch`` returning to the runner's commit of the batch
that contains it (the read-model store's ``commit`` returning), clamped at 0.
"""

from __future__ import annotations

import asyncio
import bisect
import time
import uuid
from collections.abc import Sequence
from typing import Any

from bench.harness import Bench, interleave
from bench.report import ScenarioResult, Series
from bench.stats import Target, percentile
from cqrskit.command_bus import CommandBus
from cqrskit.messages import LogPosition
from cqrskit.middleware import log_messages, retry_on_conflict
from cqrskit.projections.runner import ProjectionRunner
from cqrskit.read_models.protocol import ReadModelStore, Statement

__all__ = ["append_to_visible_lag"]

CONCURRENCY = 32


class _TimedCommits:
    """A read-model store that remembers when each checkpoint commit returned."""

    def __init__(self, inner: ReadModelStore) -> None:
        self._inner = inner
        self.commits: list[tuple[LogPosition, float]] = []
        self.target: LogPosition | None = None
        self.reached = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def commit(
        self,
        name: str,
        statements: Sequence[Statement],
        *,
        expected: LogPosition,
        position: LogPosition,
    ) -> None:
        await self._inner.commit(name, statements, expected=expected, position=position)
        self.commits.append((position, time.perf_counter()))
        if self.target is not None and position >= self.target:
            self.reached.set()


async def _measure(url: str, rate: float, seconds: float) -> dict[str, float]:
    from bench.domain import AccountSummary, OpenAccount, register
    from cqrskit.store.postgres import open_postgres_backend

    backend = await open_postgres_backend(url, max_size=CONCURRENCY + 2)
    stop = asyncio.Event()
    try:
        bus = CommandBus(backend.store, [log_messages(), retry_on_conflict(5)])
        register(bus)
        timed = _TimedCommits(backend.read_models)
        runner = ProjectionRunner(backend.store, timed, AccountSummary())  # type: ignore[arg-type]
        await runner.migrate()
        follower = asyncio.create_task(runner.run(stop))
        appended: list[tuple[LogPosition, float]] = []
        slots = asyncio.Semaphore(CONCURRENCY)
        missed = 0

        async def one() -> None:
            try:
                result = await bus.dispatch(OpenAccount(account_id=uuid.uuid4(), owner="lag"))
                assert result.position is not None
                appended.append((result.position, time.perf_counter()))
            finally:
                slots.release()

        tasks = []
        total = int(rate * seconds)
        started = time.perf_counter()
        for k in range(total):
            due = started + k / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if slots.locked():
                missed += 1  # the open-loop schedule could not be kept
            await slots.acquire()
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        achieved = total / (time.perf_counter() - started)
        last = max(p for p, _ in appended)
        timed.target = last
        if not timed.commits or timed.commits[-1][0] < last:
            await asyncio.wait_for(timed.reached.wait(), 60)
        stop.set()
        await follower
    finally:
        stop.set()
        await backend.close()
    positions = [p for p, _ in timed.commits]
    lags = []
    for position, returned in appended:
        index = bisect.bisect_left(positions, position)
        if index == len(positions):
            raise AssertionError("the runner never committed an appended event")
        lags.append(max(0.0, timed.commits[index][1] - returned))
    return {
        "p50": percentile(lags, 50) * 1e3,
        "p99": percentile(lags, 99) * 1e3,
        "rate": achieved,
        "late_starts": float(missed),
    }


def append_to_visible_lag(bench: Bench) -> list[ScenarioResult]:
    """Scenario 6."""
    assert bench.postgres_url is not None
    url = bench.postgres_url
    max_rate = bench.facts.get("ours_concurrent_commands_per_s")
    if not isinstance(max_rate, float):
        from bench.scenarios.commands import probe_concurrent_rate

        max_rate = probe_concurrent_rate(bench)
    rate = max_rate / 2
    print(f"    driving {rate:,.0f} commands/s (half of {max_rate:,.0f})", flush=True)

    def ours() -> dict[str, float]:
        bench.run(bench.reset_postgres())
        return bench.run(_measure(url, rate, bench.sizes.lag_seconds))

    runs = interleave(bench.sizes.reps, {"ours": ours})["ours"]
    params = {
        "target_rate": round(rate, 1),
        "achieved_rate": [round(x, 1) for x in runs["rate"]],
        "late_starts": runs["late_starts"],
        "seconds_per_rep": bench.sizes.lag_seconds,
    }
    return [
        ScenarioResult(
            id=f"6 {metric}",
            name=f"append-to-visible lag at half the max command rate, PostgreSQL, {metric}",
            unit="ms",
            higher_is_better=False,
            ours=Series("ours", runs[metric]),
            targets=[Target("<=", 20.0)] if metric == "p99" else [],
            params=params,
        )
        for metric in ("p50", "p99")
    ]
