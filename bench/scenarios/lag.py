"""Scenario 6: append-to-visible lag at half the maximum command rate, PostgreSQL.

Commands (new stream, one event) are sent open-loop from the benchmark process at half the
rate our 32-way concurrent run reached (scenario 2, or a short probe when it did not run)
while a live :class:`~cqrskit.projections.runner.ProjectionRunner` follows the log.
Lag of an event = time from its ``dispatch`` returning to the runner's commit of the batch
that contains it (the read-model store's ``commit`` returning), clamped at 0.

Two layouts, interleaved:

- ``6 p50`` / ``6 p99`` (the target, p99 <= 20 ms): **the deployed layout**, the runner in
  its own process (:mod:`bench.lag_worker`, leased and on the stdlib loop as
  ``cqrskit worker`` runs it), woken by ``LISTEN/NOTIFY``. Times on both sides are
  ``time.monotonic()``, one clock for the machine.
- ``6 in-process p50`` / ``p99`` (no target): the runner as a task on the benchmark's own
  event loop beside the 32 dispatching tasks (``cqrskit serve`` without a worker), woken by
  the store's in-process event.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from bench.harness import Bench, interleave
from bench.lag_worker import TimedCommits
from bench.report import ScenarioResult, Series
from bench.stats import Target, percentile
from cqrskit.backend import Backend
from cqrskit.command_bus import CommandBus
from cqrskit.messages import LogPosition
from cqrskit.middleware import log_messages, retry_on_conflict
from cqrskit.projections.runner import ProjectionRunner

__all__ = ["append_to_visible_lag"]

CONCURRENCY = 32
ROOT = Path(__file__).resolve().parents[2]
WORKER = "worker"
IN_PROCESS = "in-process"

_Measure = Callable[[str, float, float], Coroutine[Any, Any, dict[str, float]]]


# The log's read fence is cluster-wide: a transaction of another database on the same server
# (a test suite's CREATE DATABASE, a batch left idle in its transaction) holds every
# projection back while it lasts. Sampled during the run so a disturbed repetition shows.
_FOREIGN_XID = (
    "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0)"
    " FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND datname <> current_database()"
)
_SAMPLE_EVERY = 0.01


class _Sent:
    """What the open-loop sender achieved: each event's position and dispatch-return time."""

    def __init__(self) -> None:
        self.appended: list[tuple[LogPosition, float]] = []
        self.rate = 0.0
        self.late_starts = 0
        self.foreign_xid = 0.0  # longest xid held by another database's transaction, seconds

    @property
    def last(self) -> LogPosition:
        return max(p for p, _ in self.appended)


async def _send(url: str, backend: Backend, rate: float, seconds: float) -> _Sent:
    from bench.domain import OpenAccount, register

    bus = CommandBus(backend.store, [log_messages(), retry_on_conflict(5)])
    register(bus)
    sent = _Sent()
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one() -> None:
        try:
            result = await bus.dispatch(OpenAccount(account_id=uuid.uuid4(), owner="lag"))
            assert result.position is not None
            sent.appended.append((result.position, time.monotonic()))
        finally:
            slots.release()

    async def sample(done: asyncio.Event) -> None:
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            while not done.is_set():
                held = float(await conn.fetchval(_FOREIGN_XID))
                sent.foreign_xid = max(sent.foreign_xid, held)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), _SAMPLE_EVERY)
        finally:
            await conn.close()

    done = asyncio.Event()
    sampler = asyncio.create_task(sample(done))
    tasks = []
    total = int(rate * seconds)
    started = time.monotonic()
    for k in range(total):
        due = started + k / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if slots.locked():
            sent.late_starts += 1  # the open-loop schedule could not be kept
        await slots.acquire()
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    sent.rate = total / (time.monotonic() - started)
    done.set()
    await sampler
    return sent


def _lags(sent: _Sent, commits: Sequence[tuple[LogPosition, float]]) -> dict[str, float]:
    positions = [p for p, _ in commits]
    lags = []
    for position, returned in sent.appended:
        index = bisect.bisect_left(positions, position)
        if index == len(positions):
            raise AssertionError("the runner never committed an appended event")
        lags.append(max(0.0, commits[index][1] - returned))
    return {
        "p50": percentile(lags, 50) * 1e3,
        "p99": percentile(lags, 99) * 1e3,
        "rate": sent.rate,
        "late_starts": float(sent.late_starts),
        "batches": float(len(commits)),
        "foreign_xid_ms": sent.foreign_xid * 1e3,
    }


async def _in_process(url: str, rate: float, seconds: float) -> dict[str, float]:
    from bench.domain import AccountSummary
    from cqrskit.store.postgres import open_postgres_backend

    backend = await open_postgres_backend(url, max_size=CONCURRENCY + 2)
    stop = asyncio.Event()
    try:
        timed = TimedCommits(backend.read_models)
        runner = ProjectionRunner(backend.store, timed, AccountSummary())
        await runner.migrate()
        follower = asyncio.create_task(runner.run(stop))
        sent = await _send(url, backend, rate, seconds)
        await timed.until(sent.last, 60)
        stop.set()
        await follower
    finally:
        stop.set()
        await backend.close()
    return _lags(sent, timed.commits)


async def _in_worker(url: str, rate: float, seconds: float) -> dict[str, float]:
    from cqrskit.store.postgres import open_postgres_backend

    backend = await open_postgres_backend(url, max_size=CONCURRENCY + 2)
    worker: asyncio.subprocess.Process | None = None
    try:
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.lag_worker", url,
            cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert worker.stdin is not None
        assert worker.stdout is not None
        line = await asyncio.wait_for(worker.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"lag worker did not start: {line!r}")
        sent = await _send(url, backend, rate, seconds)
        last = sent.last
        worker.stdin.write(f"{last.transaction_id} {last.position}\n".encode())
        await worker.stdin.drain()
        out, _ = await asyncio.wait_for(worker.communicate(), 90)
        if worker.returncode != 0:
            raise RuntimeError(f"lag worker failed with exit code {worker.returncode}")
        worker = None
    finally:
        if worker is not None and worker.returncode is None:
            worker.kill()
            await worker.wait()
        await backend.close()
    rows = json.loads(out.decode().strip().splitlines()[-1])["commits"]
    return _lags(sent, [(LogPosition(int(x), int(p)), float(t)) for x, p, t in rows])


def append_to_visible_lag(bench: Bench) -> list[ScenarioResult]:
    """Scenario 6: the deployed layout (target) and the in-process one, interleaved."""
    assert bench.postgres_url is not None
    url = bench.postgres_url
    max_rate = bench.facts.get("ours_concurrent_commands_per_s")
    if not isinstance(max_rate, float):
        from bench.scenarios.commands import probe_concurrent_rate

        max_rate = probe_concurrent_rate(bench)
    rate = max_rate / 2
    print(f"    driving {rate:,.0f} commands/s (half of {max_rate:,.0f})", flush=True)

    def layout(measure: _Measure) -> Callable[[], dict[str, float]]:
        def once() -> dict[str, float]:
            bench.run(bench.reset_postgres())
            return bench.run(measure(url, rate, bench.sizes.lag_seconds))

        return once

    runs = interleave(
        bench.sizes.reps, {WORKER: layout(_in_worker), IN_PROCESS: layout(_in_process)}
    )
    results: list[ScenarioResult] = []
    for variant, prefix, where in (
        (WORKER, "6", "runner in its own process (as deployed)"),
        (IN_PROCESS, "6 in-process", "runner on the sender's event loop"),
    ):
        metrics = runs[variant]
        params = {
            "layout": where,
            "target_rate": round(rate, 1),
            "achieved_rate": [round(x, 1) for x in metrics["rate"]],
            "late_starts": metrics["late_starts"],
            "batches": metrics["batches"],
            "foreign_xid_ms": [round(x, 1) for x in metrics["foreign_xid_ms"]],
            "seconds_per_rep": bench.sizes.lag_seconds,
        }
        results.extend(
            ScenarioResult(
                id=f"{prefix} {metric}",
                name=f"append-to-visible lag at half the max command rate, PostgreSQL, {where},"
                f" {metric}",
                unit="ms",
                higher_is_better=False,
                ours=Series("ours", metrics[metric]),
                targets=[Target("<=", 20.0)] if variant == WORKER and metric == "p99" else [],
                params=params,
            )
            for metric in ("p50", "p99")
        )
    return results
