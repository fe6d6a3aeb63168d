"""PostgreSQL crashes under command load: nothing acknowledged is lost, nothing is doubled.

The orders API (``cqrskit serve --no-projections``) and a projection worker run as real
processes against a private PostgreSQL cluster (the shared server is never touched), while
concurrent HTTP clients send commands, each under its own ``Idempotency-Key``. On a seeded
schedule (the seed is printed; ``CQRSKIT_FAULT_SEED`` replays it) the database is crashed
(``pg_ctl stop -m immediate``, SIGKILL of every server process, or SIGKILL of the postmaster
alone, its backends left to notice), kept down for a moment
and started again, which runs WAL crash recovery. Proved, DESIGN.md guarantees 1, 2 and 5:

- while the database is down a command is answered 503 problem+json with ``Retry-After``,
  and no other 5xx is ever answered;
- after the restart the same API process (never restarted) acknowledges commands again;
- every unknown outcome, retried with its key, resolves to exactly one outcome;
- every acknowledged command is in the log exactly once, no refused command left anything,
  no event is doubled, every stream's versions run 1..n (``check_history``);
- the worker, which lived through the crashes, converges to a rebuild from scratch.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from cqrskit.config import Settings
from cqrskit.service import Runtime
from orders.service import service as orders_service
from tests.reliability.history import Outcome, assert_converged, check_history, wait_caught_up
from tests.reliability.orders_load import OrdersLoad
from tests.reliability.pgcluster import CrashMode, PgCluster
from tests.reliability.report import record
from tests.reliability.supervisor import Fault, Supervisor
from tests.reliability.tier import TIER

pytestmark = pytest.mark.faults

CLIENTS = TIER.pick(fast=4, full=8, soak=8)
CRASHES = TIER.pick(fast=2, full=6, soak=40)
SPACING = TIER.pick(fast=3.0, full=4.0, soak=6.0)
"""Mean seconds of load between two crashes."""
RECOVERY_TIMEOUT = 60.0
"""Longest the API may take to acknowledge a command after the database is back (a bound)."""
UNAVAILABLE = "urn:cqrskit:problem:unavailable"
MODES: dict[str, CrashMode] = {
    "immediate": "immediate",
    "sigkill": "sigkill",
    "postmaster": "postmaster",
}


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    with Supervisor(tmp_path) as supervisor:
        yield supervisor


@pytest.fixture
async def runtime(cluster: PgCluster) -> AsyncIterator[Runtime]:
    """The test's own view of the database: the log and the read models (no runners run)."""
    rt = await Runtime.open(
        orders_service, Settings(database_url=cluster.url(), run_projections=False)
    )
    try:
        yield rt
    finally:
        await rt.close()


class Crasher:
    """Crashes the database and brings it back; checks the API's answers around that."""

    def __init__(self, cluster: PgCluster, load: OrdersLoad, rng: random.Random) -> None:
        self.cluster = cluster
        self.load = load
        self.rng = rng
        self.outages: list[str] = []

    async def crash(self, fault: Fault) -> None:
        await asyncio.to_thread(self.cluster.crash, MODES[fault.action])
        # While it is down: a command is refused as unavailable, with Retry-After.
        probe = self.load.customer(self.rng)
        answer = await self.load.attempt(probe)
        self.outages.append(f"{answer.status} {answer.kind} Retry-After={answer.retry_after}")
        assert (answer.status, answer.kind) == (503, UNAVAILABLE), self.outages
        assert answer.retry_after is not None
        assert int(answer.retry_after) > 0
        await asyncio.sleep(fault.duration)  # the outage itself lasts this long
        await asyncio.to_thread(self.cluster.start)
        await self.recovered()

    async def recovered(self) -> None:
        """Wait (bounded) until the API, not restarted, acknowledges a command again."""
        deadline = time.monotonic() + RECOVERY_TIMEOUT
        while True:
            attempt = await self.load.attempt(self.load.customer(self.rng))
            if 200 <= (attempt.status or 0) < 300:
                return
            assert time.monotonic() < deadline, f"the API did not recover: {attempt}"
            await asyncio.sleep(0.1)


async def test_pg_crash_under_command_load_loses_and_duplicates_nothing(
    cluster: PgCluster, supervisor: Supervisor, runtime: Runtime
) -> None:
    url = cluster.url()
    api = supervisor.api(url)
    worker = supervisor.worker(url)
    await supervisor.start(api, worker)
    assert api.url is not None

    faults = supervisor.plan(
        count=CRASHES,
        window=CRASHES * SPACING,
        targets=["postgres"],
        actions=list(MODES),
        duration=(0.3, 2.0),
    )
    async with httpx.AsyncClient(base_url=api.url, timeout=15.0) as client:
        load = OrdersLoad(client, supervisor.seed)
        crasher = Crasher(cluster, load, random.Random(supervisor.seed))
        stop = asyncio.Event()
        clients = [asyncio.create_task(load.client_loop(n, stop)) for n in range(CLIENTS)]
        try:
            done = await supervisor.run(faults, dict.fromkeys(MODES, crasher.crash))
            # A last stretch of load on the recovered database.
            await asyncio.sleep(SPACING / 2)
        finally:
            stop.set()
            await asyncio.gather(*clients)
        unknown_resolved = await load.resolve()

    assert len(done) == CRASHES == cluster.crashes
    # The API and the worker lived through it all: never restarted, still running.
    assert (api.running, api.starts) == (True, 1), api.tail()
    assert (worker.running, worker.starts) == (True, 1), worker.tail()

    bad = {k: n for k, n in load.kinds.items() if (k[0] or 0) >= 500 and k[1] != UNAVAILABLE}
    assert not bad, f"5xx other than 503 unavailable: {bad}"
    unavailable = sum(n for (status, kind), n in load.kinds.items() if kind == UNAVAILABLE)
    assert unavailable >= CRASHES  # at least each outage's probe
    refused = {k: n for k, n in load.kinds.items() if k[0] in (404, 412, 422)}
    assert not refused, f"a client of acknowledged entities was refused: {refused}"

    history, problems = await load.history(runtime.backend.store)
    assert not problems, problems
    result = await check_history(history, runtime.backend.store)
    result.assert_clean()
    await wait_caught_up(runtime, drive=False)  # the worker applies everything by itself
    await assert_converged(runtime, drive=False)

    summary = history.summary()
    acknowledged = sum(r.outcome is Outcome.OK for r in load.requests)
    uncertain = [r for r in load.requests if any(a.outcome is Outcome.UNKNOWN for a in r.attempts)]
    assert len(uncertain) == unknown_resolved
    print(f"outages: {crasher.outages}; kinds: {dict(load.kinds)}; summary {summary}")
    record(
        "pg_crash",
        seed=supervisor.seed,
        operations=len(load.requests),
        attempts=summary["operations"],
        crashes=len(done),
        acknowledged=acknowledged,
        refused=sum(r.outcome is Outcome.FAILED for r in load.requests),
        unavailable_503=unavailable,
        unknown_resolved=unknown_resolved,
        replayed=sum(a.replayed for r in load.requests for a in r.attempts),
        unknown_then_ok=sum(r.outcome is Outcome.OK for r in uncertain),
        unknown_then_refused=sum(r.outcome is Outcome.FAILED for r in uncertain),
        events=result.events,
        lost=len(result.lost),
        duplicated=len(result.duplicated),
    )
    assert acknowledged > CRASHES * 10, "too little load got through to prove anything"
