"""Scenario 4: load an aggregate of 100 events, no cache, no snapshot (p50 and p99).

Ours: a fresh :class:`~cqrskit.repository.Repository` per load (one unit of work each), so
every load reads the stream and replays it. Reference: ``eventsourcing``'s
``repository.get`` (no cache by default). On PostgreSQL and on SQLite.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable

from bench.harness import Bench, interleave
from bench.report import ScenarioResult, Series
from bench.stats import Target, percentile
from cqrskit.backend import Backend, open_backend
from cqrskit.messages import utc_now
from cqrskit.repository import Repository

__all__ = ["load_aggregate"]

ES = "eventsourcing"
EVENTS = 100
WARMUP = 20


async def _ours(open_: Callable[[], Awaitable[Backend]], gets: int) -> dict[str, float]:
    from bench.domain import REF, Account

    backend = await open_()
    try:
        at = utc_now()
        account_id = str(uuid.uuid4())
        account = Account.open(account_id, "long", at=at)
        for _ in range(EVENTS - 1):
            account.deposit(1, REF, at=at)
        unit = Repository(backend.store)
        unit.add(account)
        await unit.save()
        samples = []
        for i in range(WARMUP + gets):
            started = time.perf_counter()
            loaded = await Repository(backend.store).load(Account, account_id)
            if i >= WARMUP:
                samples.append(time.perf_counter() - started)
        assert loaded.version == EVENTS, loaded.version
        return _latencies(samples)
    finally:
        await backend.close()


def _latencies(samples: list[float]) -> dict[str, float]:
    return {"p50": percentile(samples, 50) * 1e3, "p99": percentile(samples, 99) * 1e3}


def _es(side_factory: Callable[[], object], gets: int) -> dict[str, float]:
    from bench.es_side import EsBench

    side = side_factory()
    assert isinstance(side, EsBench)
    try:
        account_id = side.store_account(EVENTS)
        samples = []
        for i in range(WARMUP + gets):
            started = time.perf_counter()
            version = side.load(account_id)
            if i >= WARMUP:
                samples.append(time.perf_counter() - started)
        assert version == EVENTS, version
        return _latencies(samples)
    finally:
        side.close()


def _results(
    backend_name: str, runs: dict[str, dict[str, list[float]]], gets: int
) -> list[ScenarioResult]:
    out = []
    for metric in ("p50", "p99"):
        out.append(
            ScenarioResult(
                id=f"4 {backend_name} {metric}",
                name=f"load an aggregate of {EVENTS} events, {backend_name}, {metric}",
                unit="ms",
                higher_is_better=False,
                ours=Series("ours", runs["ours"][metric]),
                references=[Series(ES, runs[ES][metric])],
                targets=[Target("<=", 0.5, ES)] if metric == "p50" else [],
                params={"events": EVENTS, "timed_loads_per_rep": gets},
            )
        )
    return out


def load_aggregate(bench: Bench) -> list[ScenarioResult]:
    """Scenario 4 on each available backend."""
    from bench.es_side import EsBench

    gets = bench.sizes.load_gets
    results: list[ScenarioResult] = []
    if bench.postgres_url is not None:
        url = bench.postgres_url

        def ours_pg() -> dict[str, float]:
            bench.run(bench.reset_postgres())
            return bench.run(_ours(lambda: open_backend(url), gets))

        def es_pg() -> dict[str, float]:
            bench.run(bench.reset_postgres())
            return _es(lambda: EsBench(postgres_url=url), gets)

        runs = interleave(bench.sizes.reps, {"ours": ours_pg, ES: es_pg})
        results += _results("PostgreSQL", runs, gets)

    def ours_sqlite() -> dict[str, float]:
        url = f"sqlite:///{bench.sqlite_path('load')}"
        return bench.run(_ours(lambda: open_backend(url), gets))

    def es_sqlite() -> dict[str, float]:
        return _es(lambda: EsBench(sqlite_path=bench.sqlite_path("es-load")), gets)

    runs = interleave(bench.sizes.reps, {"ours": ours_sqlite, ES: es_sqlite})
    results += _results("SQLite", runs, gets)
    return results
