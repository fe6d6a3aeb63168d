"""Scenario 5: projection catch-up with atomic checkpoints, PostgreSQL and SQLite.

Ours: :class:`~cqrskit.projections.runner.ProjectionRunner` (batch 500, the service default)
reads an orders-domain log (:mod:`bench.orders_log`) and commits each batch of the orders
service's ``customer_orders`` read model (one summary row per order) with its checkpoint.
Raw reference: the same statements (one per event, precomputed) written with the driver's
``executemany`` in transactions of 500 events plus the checkpoint update; it does not read the
log, so it is the write ceiling; "read + decode only" reads the same log through the store and
applies nothing, the read ceiling. ``eventsourcing``: its projection runner (PostgreSQL) or a
pull loop (SQLite), one transaction per event, on a smaller log of the benchmark's account
domain with a one-upsert-per-event summary (its rate does not depend on the log's size).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from bench.harness import Bench, interleave
from bench.orders_log import PER_ORDER, RAW_DDL, READ, OrdersLog, raw_sql, read_rate, seed_orders
from bench.report import ScenarioResult, Series
from bench.stats import Target
from cqrskit.backend import open_backend
from cqrskit.projections.runner import ProjectionRunner
from cqrskit.read_models.protocol import Statement, sql
from orders.read_models.customer_orders import CustomerOrdersProjection

_RAW_MOVE = sql("UPDATE raw_checkpoint SET position = $1 WHERE name = 'raw' AND position = $2")

__all__ = ["projection_catch_up"]

ES = "eventsourcing"
BATCH = 500
KINDS = ("customer", "create", "add", "status")  # dependency order within a batch
_TOTALS = sql("SELECT count(*) AS n, coalesce(sum(item_count), 0) AS e FROM customer_orders_orders")


def _batches(log: OrdersLog) -> list[dict[str, list[tuple[Any, ...]]]]:
    """The raw statements cut into batches of ``BATCH`` events, grouped by kind."""
    out = []
    for offset in range(0, len(log.statements), BATCH):
        groups: dict[str, list[tuple[Any, ...]]] = {kind: [] for kind in KINDS}
        for kind, args in log.statements[offset : offset + BATCH]:
            groups[kind].append(args)
        out.append(groups)
    return out


async def _ours(runner: ProjectionRunner, log: OrdersLog) -> dict[str, float]:
    await runner.read_models.reset(
        runner.name, [Statement(t, ()) for t in runner.projection.truncate]
    )
    started = time.perf_counter()
    await runner.catch_up()
    elapsed = time.perf_counter() - started
    row = await runner.read_models.fetchone(_TOTALS)
    assert row is not None
    assert int(row["n"]) == len(log.orders), (row, len(log.orders))
    assert int(row["e"]) == len(log.orders) * (PER_ORDER - 1), row
    return {"rate": log.events / elapsed}


async def _raw_pg(url: str, log: OrdersLog, batches: list[Any]) -> dict[str, float]:
    import asyncpg

    statements = raw_sql("postgres")
    move = _RAW_MOVE.postgres
    conn = await asyncpg.connect(url)
    try:
        for ddl in RAW_DDL:
            await conn.execute(ddl)
        await conn.execute("TRUNCATE raw_co_customers, raw_co_orders, raw_checkpoint")
        await conn.execute("INSERT INTO raw_checkpoint VALUES ('raw', 0)")
        started = time.perf_counter()
        for i, groups in enumerate(batches):
            async with conn.transaction():
                for kind in KINDS:
                    if groups[kind]:
                        await conn.executemany(statements[kind], groups[kind])
                moved = await conn.execute(move, (i + 1) * BATCH, i * BATCH)
                assert moved == "UPDATE 1"
        return {"rate": log.events / (time.perf_counter() - started)}
    finally:
        await conn.close()


def _raw_sqlite(path: str, log: OrdersLog, batches: list[Any]) -> dict[str, float]:
    statements = raw_sql("sqlite")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        for ddl in RAW_DDL:
            conn.execute(ddl)
        conn.execute("DELETE FROM raw_co_customers")
        conn.execute("DELETE FROM raw_co_orders")
        conn.execute("INSERT OR REPLACE INTO raw_checkpoint VALUES ('raw', 0)")
        started = time.perf_counter()
        for i, groups in enumerate(batches):
            conn.execute("BEGIN IMMEDIATE")
            for kind in KINDS:
                if groups[kind]:
                    conn.executemany(statements[kind], groups[kind])
            moved = conn.execute(_RAW_MOVE.sqlite, ((i + 1) * BATCH, i * BATCH)).rowcount
            assert moved == 1
            conn.execute("COMMIT")
        return {"rate": log.events / (time.perf_counter() - started)}
    finally:
        conn.close()


def _one_backend(bench: Bench, backend_name: str) -> ScenarioResult:
    from bench.es_side import EsBench

    n = bench.sizes.proj_events
    n_es = bench.sizes.proj_es_events
    if backend_name == "PostgreSQL":
        bench.run(bench.reset_postgres())
        assert bench.postgres_url is not None
        url = bench.postgres_url
        side = EsBench(postgres_url=url)
        raw_label = "raw asyncpg executemany"
    else:
        path = bench.sqlite_path("projection")
        url = f"sqlite:///{path}"
        side = EsBench(sqlite_path=bench.sqlite_path("es-projection"))
        raw_label = "raw sqlite3 executemany"
    backend = bench.run(open_backend(url))
    try:
        started = time.perf_counter()
        log = bench.run(seed_orders(backend.store, n))
        batches = _batches(log)
        es_last = side.seed(n_es)
        print(f"    seeded {n:,} + {n_es:,} events in {time.perf_counter() - started:.1f}s")
        runner = ProjectionRunner(
            backend.store, backend.read_models, CustomerOrdersProjection(), batch_size=BATCH
        )
        bench.run(runner.migrate())

        def ours() -> dict[str, float]:
            return bench.run(_ours(runner, log))

        def raw() -> dict[str, float]:
            if backend_name == "PostgreSQL":
                return bench.run(_raw_pg(url, log, batches))
            return _raw_sqlite(str(path), log, batches)

        def es() -> dict[str, float]:
            side.reset_projection()
            return {"rate": es_last / side.catch_up(es_last, es_last)}

        def read() -> dict[str, float]:
            return bench.run(read_rate(backend.store, BATCH))

        variants: dict[str, Any] = {"ours": ours, raw_label: raw, ES: es, READ: read}
        runs = interleave(bench.sizes.proj_reps, variants)
    finally:
        side.close()
        bench.run(backend.close())
    return ScenarioResult(
        id=f"5 {backend_name}",
        name=f"projection catch-up, {n:,} events, atomic checkpoints, {backend_name}",
        unit="events/s",
        ours=Series("ours", runs["ours"]["rate"]),
        references=[
            Series(raw_label, runs[raw_label]["rate"]),
            Series(ES, runs[ES]["rate"]),
            Series(READ, runs[READ]["rate"]),
        ],
        targets=[Target(">=", 0.5, raw_label), Target(">=", 25, ES)],
        params={
            "events": n,
            "eventsourcing_events": n_es,
            "batch": BATCH,
            "read_model": "customer_orders (orders service; one statement per event)",
            "eventsourcing_read_model": "account summary (one upsert per event)",
        },
    )


def projection_catch_up(bench: Bench) -> list[ScenarioResult]:
    """Scenario 5 on each available backend."""
    results = []
    if bench.postgres_url is not None:
        results.append(_one_backend(bench, "PostgreSQL"))
    results.append(_one_backend(bench, "SQLite"))
    return results
