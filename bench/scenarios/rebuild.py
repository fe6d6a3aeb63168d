"""Scenarios 8 and 9 on one seeded PostgreSQL log of orders events (1M; quick 100k).

The log (:mod:`bench.orders_log`) goes into a fresh schema of the scratch database: customers
through the event store, orders by COPY of rows the store's mapper serialised
(:func:`bench.orders_log.copy_orders`).

- 9, memory: a subprocess (:mod:`bench.memory_probe`) catches the live ``customer_orders``
  generation up over the whole log; its growth is the peak RSS (``VmHWM``) minus the RSS
  before the catch-up.
- 8, blue/green rebuild: with that live generation in place, a live runner following the log
  and a query client in its own process (:mod:`bench.query_client`: ``GetOrdersByCustomer``
  back to back through its handler on the live-generation read models, as the service wires
  them; two SELECTs each),
  :class:`~cqrskit.projections.rebuild.BlueGreenRebuild` builds the next generation and
  switches to it. Measured: events/s of the whole rebuild (switch included)
  and failed queries. Reference: COPY (asyncpg ``copy_records_to_table``) of the same number
  of rows into a table shaped and indexed like ``customer_orders_orders``. A second reference
  shows the ceiling of any rebuild that builds typed events: reading the same log through
  ``EventStore.read_all`` (pages of 1,000, each event decoded into its pydantic class) and
  nothing else.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.harness import Bench, interleave
from bench.orders_log import CUSTOMERS, PER_ORDER, READ, OrdersLog, copy_orders, read_rate
from bench.report import ScenarioResult, Series
from bench.stats import Target
from cqrskit.backend import Backend, open_backend
from cqrskit.projections.generations import LiveReadModels
from cqrskit.projections.rebuild import BlueGreenRebuild
from cqrskit.projections.runner import ProjectionRunner
from cqrskit.read_models.protocol import ReadModelStore, sql
from orders.read_models.customer_orders import CustomerOrdersProjection

__all__ = ["rebuild_and_memory"]

ROOT = Path(__file__).resolve().parents[2]
COPY = "raw COPY"
_ORDERS = sql("SELECT count(*) AS n FROM customer_orders_orders")
_COPY_DDL = (
    "DROP TABLE IF EXISTS raw_copy_orders",
    "CREATE TABLE raw_copy_orders (order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL,"
    " customer_name TEXT NOT NULL, status TEXT NOT NULL, total_cents BIGINT NOT NULL,"
    " item_count BIGINT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)",
    "CREATE INDEX raw_copy_by_customer ON raw_copy_orders (customer_id, created_at, order_id)",
    "CREATE INDEX raw_copy_by_status ON raw_copy_orders (customer_id, status, created_at,"
    " order_id)",
)


def _memory(bench: Bench) -> dict[str, Any]:
    assert bench.postgres_url is not None
    out = subprocess.run(
        [sys.executable, "-m", "bench.memory_probe", bench.postgres_url],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=1800,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _live(backend: Backend) -> ReadModelStore:
    return LiveReadModels.wrap(backend.read_models, [CustomerOrdersProjection()])


def _client(url: str, log: OrdersLog) -> subprocess.Popen[str]:
    client = subprocess.Popen(
        [sys.executable, "-m", "bench.query_client", url, *log.customers],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert client.stdout is not None
    line = client.stdout.readline().strip()
    if line != "ready":
        client.kill()
        raise RuntimeError(f"query client did not start: {line!r}")
    return client


def _client_result(client: subprocess.Popen[str]) -> dict[str, Any]:
    client.send_signal(signal.SIGTERM)
    out, _ = client.communicate(timeout=60)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


async def _rebuild_once(backend: Backend) -> float:
    live = ProjectionRunner(backend.store, backend.read_models, CustomerOrdersProjection())
    await live.migrate()
    stop = asyncio.Event()
    following = asyncio.create_task(live.run(stop))
    try:
        started = time.perf_counter()
        await BlueGreenRebuild(live).run()
        return time.perf_counter() - started
    finally:
        stop.set()
        await following


def _rebuild(bench: Bench, backend: Backend, log: OrdersLog) -> dict[str, float]:
    assert bench.postgres_url is not None
    client = _client(bench.postgres_url, log)
    try:
        elapsed = bench.run(_rebuild_once(backend))
    finally:
        queries = _client_result(client)
    if queries["failed"]:
        print(f"    failed queries: {queries['failed']} ({queries['first_error']})", flush=True)
    row = bench.run(_live(backend).fetchone(_ORDERS))
    assert row is not None
    assert int(row["n"]) == len(log.orders), (row, len(log.orders))
    return {"rate": log.events / elapsed, "failed": float(queries["failed"]),
            "queries_per_s": queries["ok"] / queries["seconds"]}  # fmt: skip


async def _copy(url: str, n: int) -> dict[str, float]:
    import asyncpg

    rows = [(str(uuid.uuid4()), f"c{i % CUSTOMERS}", "Customer", "shipped", 8991, 9,
             "2026-11-26T12:00:00.000000+00:00", "2026-11-26T12:00:00.000000+00:00")
            for i in range(n)]  # fmt: skip
    conn = await asyncpg.connect(url)
    try:
        for ddl in _COPY_DDL:
            await conn.execute(ddl)
        started = time.perf_counter()
        await conn.copy_records_to_table("raw_copy_orders", records=rows)
        elapsed = time.perf_counter() - started
        await conn.execute("DROP TABLE raw_copy_orders")
    finally:
        await conn.close()
    return {"rate": n / elapsed}


def rebuild_and_memory(bench: Bench) -> list[ScenarioResult]:
    """Scenarios 9 (memory) and 8 (blue/green rebuild) on one seeded log."""
    n = bench.sizes.bg_events
    bench.run(bench.reset_postgres())
    url = bench.postgres_url
    assert url is not None
    backend = bench.run(open_backend(url))
    try:
        started = time.perf_counter()
        log = bench.run(copy_orders(backend.store, url, n))
        seeding = log.events / (time.perf_counter() - started)
        print(f"    seeded {log.events:,} events ({seeding:,.0f} events/s)", flush=True)
        memory = _memory(bench)
        print(f"    memory: {memory}", flush=True)
        runs = interleave(
            bench.sizes.bg_reps,
            {"ours": lambda: _rebuild(bench, backend, log),
             COPY: lambda: bench.run(_copy(url, log.events)),
             READ: lambda: bench.run(read_rate(backend.store, 1000))},
        )  # fmt: skip
    finally:
        bench.run(backend.close())
    failed = sum(runs["ours"]["failed"])
    params = {"events": log.events, "orders": len(log.orders), "events_per_order": PER_ORDER,
              "seed_events_per_s": round(seeding), "rebuild_batch": 1000,
              "queries_per_s": runs["ours"]["queries_per_s"], "failed_queries": failed,
              "read_model": "customer_orders"}  # fmt: skip
    return [
        ScenarioResult(
            id="8",
            name=f"blue/green rebuild of {log.events:,} events, PostgreSQL, queries running",
            unit="events/s", ours=Series("ours", runs["ours"]["rate"]),
            references=[Series(COPY, runs[COPY]["rate"]), Series(READ, runs[READ]["rate"])],
            targets=[Target(">=", 50_000)], params=params,
        ),
        ScenarioResult(
            id="8 queries", name="failed queries during the blue/green rebuild",
            unit="failed", higher_is_better=False,
            ours=Series("ours", runs["ours"]["failed"]), targets=[Target("<=", 0)], params=params,
        ),
        ScenarioResult(
            id="9", name=f"memory: catch-up of {memory['events']:,} events (runner RSS growth)",
            unit="MiB", higher_is_better=False, ours=Series("ours", [memory["growth_mib"]]),
            targets=[Target("<=", 100)],
            params={**memory, "events_per_s": memory["events"] / memory["seconds"]},
        ),
    ]  # fmt: skip
