"""Scenario 5: projection catch-up with atomic checkpoints, PostgreSQL and SQLite.

Ours: :class:`~cqrskit.projections.runner.ProjectionRunner` (batch 500, the service default)
reads the log and commits each batch's read-model upserts with its checkpoint. Raw reference:
the same upserts (one per event, precomputed) written with the driver's ``executemany`` in
transactions of 500 rows plus the checkpoint update; it does not read the log, so it is the
write ceiling. ``eventsourcing``: its projection runner (PostgreSQL) or a pull loop (SQLite),
one transaction per event, on a smaller log (its rate does not depend on the log's size).
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from typing import Any

from bench.harness import Bench, interleave
from bench.report import ScenarioResult, Series
from bench.stats import Target
from cqrskit.backend import Backend, open_backend
from cqrskit.messages import utc_now
from cqrskit.projections.runner import ProjectionRunner
from cqrskit.read_models.protocol import Statement, sql
from cqrskit.store.protocol import NO_STREAM, StreamAppend

__all__ = ["projection_catch_up"]

ES = "eventsourcing"
PER_ACCOUNT = 10
BATCH = 500

_RAW_DDL = (
    "CREATE TABLE IF NOT EXISTS raw_account_summary (account_id TEXT PRIMARY KEY,"
    " events INTEGER NOT NULL, balance BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS raw_checkpoint (name TEXT PRIMARY KEY, position BIGINT NOT NULL)",
)
_RAW_UPSERT = sql(
    "INSERT INTO raw_account_summary (account_id, events, balance) VALUES ($1, 1, $2)"
    " ON CONFLICT (account_id) DO UPDATE SET events = raw_account_summary.events + 1,"
    " balance = raw_account_summary.balance + excluded.balance"
)
_RAW_MOVE = sql("UPDATE raw_checkpoint SET position = $1 WHERE name = 'raw' AND position = $2")
_TOTALS = sql("SELECT count(*) AS n, coalesce(sum(events), 0) AS e FROM bench_account_summary")


async def _seed(backend: Backend, n_events: int) -> list[tuple[str, int]]:
    """Append ``n_events`` (1,000 per append); return the summary upserts they imply."""
    from bench.domain import REF, Account

    at = utc_now()
    upserts: list[tuple[str, int]] = []
    appends: list[StreamAppend] = []
    for _ in range(n_events // PER_ACCOUNT):
        account = Account.open(str(uuid.uuid4()), "seed", at=at)
        for _ in range(PER_ACCOUNT - 1):
            account.deposit(1, REF, at=at)
        appends.append(StreamAppend(account.stream_id, NO_STREAM, account.pending_events))
        upserts.append((account.stream_id, 0))
        upserts.extend((account.stream_id, 1) for _ in range(PER_ACCOUNT - 1))
        if len(appends) == 100:
            await backend.store.append(*appends)
            appends = []
    if appends:
        await backend.store.append(*appends)
    return upserts


async def _ours(runner: ProjectionRunner, n_events: int) -> dict[str, float]:
    await runner.read_models.reset(
        runner.name, [Statement(t, ()) for t in runner.projection.truncate]
    )
    started = time.perf_counter()
    await runner.catch_up()
    elapsed = time.perf_counter() - started
    row = await runner.read_models.fetchone(_TOTALS)
    assert row is not None
    assert int(row["e"]) == n_events, (row, n_events)
    return {"rate": n_events / elapsed}


async def _raw_pg(url: str, upserts: list[tuple[str, int]]) -> dict[str, float]:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        for ddl in _RAW_DDL:
            await conn.execute(ddl)
        await conn.execute("TRUNCATE raw_account_summary, raw_checkpoint")
        await conn.execute("INSERT INTO raw_checkpoint VALUES ('raw', 0)")
        started = time.perf_counter()
        for offset in range(0, len(upserts), BATCH):
            async with conn.transaction():
                await conn.executemany(_RAW_UPSERT.postgres, upserts[offset : offset + BATCH])
                moved = await conn.execute(_RAW_MOVE.postgres, offset + BATCH, offset)
                assert moved == "UPDATE 1"
        return {"rate": len(upserts) / (time.perf_counter() - started)}
    finally:
        await conn.close()


def _raw_sqlite(path: str, upserts: list[tuple[str, int]]) -> dict[str, float]:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        for ddl in _RAW_DDL:
            conn.execute(ddl)
        conn.execute("DELETE FROM raw_account_summary")
        conn.execute("INSERT OR REPLACE INTO raw_checkpoint VALUES ('raw', 0)")
        started = time.perf_counter()
        for offset in range(0, len(upserts), BATCH):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_RAW_UPSERT.sqlite, upserts[offset : offset + BATCH])
            moved = conn.execute(_RAW_MOVE.sqlite, (offset + BATCH, offset)).rowcount
            assert moved == 1
            conn.execute("COMMIT")
        return {"rate": len(upserts) / (time.perf_counter() - started)}
    finally:
        conn.close()


def _one_backend(bench: Bench, backend_name: str) -> ScenarioResult:
    from bench.domain import AccountSummary
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
        upserts = bench.run(_seed(backend, n))
        es_last = side.seed(n_es)
        print(f"    seeded {n:,} + {n_es:,} events in {time.perf_counter() - started:.1f}s")
        runner = ProjectionRunner(
            backend.store, backend.read_models, AccountSummary(), batch_size=BATCH
        )
        bench.run(runner.migrate())

        def ours() -> dict[str, float]:
            return bench.run(_ours(runner, n))

        def raw() -> dict[str, float]:
            if backend_name == "PostgreSQL":
                return bench.run(_raw_pg(url, upserts))
            return _raw_sqlite(str(path), upserts)

        def es() -> dict[str, float]:
            side.reset_projection()
            return {"rate": es_last / side.catch_up(es_last, es_last)}

        variants: dict[str, Any] = {"ours": ours, raw_label: raw, ES: es}
        runs = interleave(bench.sizes.proj_reps, variants)
    finally:
        side.close()
        bench.run(backend.close())
    return ScenarioResult(
        id=f"5 {backend_name}",
        name=f"projection catch-up, {n:,} events, atomic checkpoints, {backend_name}",
        unit="events/s",
        ours=Series("ours", runs["ours"]["rate"]),
        references=[Series(raw_label, runs[raw_label]["rate"]), Series(ES, runs[ES]["rate"])],
        targets=[Target(">=", 0.5, raw_label), Target(">=", 25, ES)],
        params={
            "events": n,
            "eventsourcing_events": n_es,
            "batch": BATCH,
            "read_model": "bench account summary (one upsert per event)",
        },
    )


def projection_catch_up(bench: Bench) -> list[ScenarioResult]:
    """Scenario 5 on each available backend."""
    results = []
    if bench.postgres_url is not None:
        results.append(_one_backend(bench, "PostgreSQL"))
    results.append(_one_backend(bench, "SQLite"))
    return results
