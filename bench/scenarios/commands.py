"""Scenarios 1-3: one command creates a new stream with one event, committed durably.

1. PostgreSQL, sequential: our command bus + store, raw asyncpg ``BEGIN; INSERT; COMMIT``,
   ``eventsourcing`` ``save()``.
2. PostgreSQL, 32 concurrent: our command bus over a 32-connection pool, raw asyncpg
   single-row transactions on 32 connections.
3. SQLite (WAL, ``synchronous=FULL``), sequential: our command bus + store, raw stdlib
   ``sqlite3`` single-row transactions, ``eventsourcing`` on SQLite.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable

from bench.harness import Bench, interleave
from bench.report import ScenarioResult, Series
from bench.scenarios._rows import PG_INSERT, SQLITE_INSERT, pg_event_rows, sqlite_event_rows
from bench.stats import Summary, Target
from cqrskit.backend import Backend, open_backend
from cqrskit.command_bus import CommandBus
from cqrskit.middleware import log_messages, retry_on_conflict

__all__ = ["command_pg_concurrent", "command_pg_sequential", "command_sqlite_sequential"]

RAW_PG = "raw asyncpg"
RAW_SQLITE = "raw sqlite3"
ES = "eventsourcing"
CONCURRENCY = 32


def _bus(backend: Backend) -> CommandBus:
    # The same middleware the service runtime installs.
    from bench.domain import register

    bus = CommandBus(backend.store, [log_messages(), retry_on_conflict(5)])
    register(bus)
    return bus


def _commands(n: int) -> list[object]:
    from bench.domain import OpenAccount

    return [OpenAccount(account_id=uuid.uuid4(), owner=f"owner-{i}") for i in range(n)]


async def _ours(
    open_: Callable[[], Awaitable[Backend]], n: int, concurrency: int
) -> dict[str, float]:
    backend = await open_()
    try:
        bus = _bus(backend)
        # Warm-up: statement caches, and the pool's connections opened as the raw reference
        # opens its pool before timing (waves of `concurrency` commands at once).
        warm = 20 + 2 * concurrency
        commands = _commands(n + warm)
        for start in range(0, warm, concurrency):
            wave = commands[start : min(start + concurrency, warm)]
            await asyncio.gather(*(bus.dispatch(c) for c in wave))  # type: ignore[arg-type]
        commands = commands[warm:]
        per = n // concurrency

        async def worker(k: int) -> None:
            for command in commands[k * per : (k + 1) * per]:
                await bus.dispatch(command)  # type: ignore[arg-type]

        started = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        return {"rate": per * concurrency / (time.perf_counter() - started)}
    finally:
        await backend.close()


async def _raw_pg(bench: Bench, n: int, concurrency: int) -> dict[str, float]:
    import asyncpg

    assert bench.postgres_url is not None
    pool = await asyncpg.create_pool(bench.postgres_url, min_size=concurrency, max_size=concurrency)
    try:
        rows = pg_event_rows(n + concurrency)
        per = n // concurrency
        start = asyncio.Event()

        async def worker(k: int) -> None:
            async with pool.acquire() as conn:
                insert = await conn.prepare(PG_INSERT)
                async with conn.transaction():  # warm-up
                    await insert.fetch(*rows[n + k])
                await start.wait()
                for row in rows[k * per : (k + 1) * per]:
                    async with conn.transaction():
                        await insert.fetch(*row)

        tasks = [asyncio.create_task(worker(k)) for k in range(concurrency)]
        await asyncio.sleep(0.2)
        started = time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
        return {"rate": per * concurrency / (time.perf_counter() - started)}
    finally:
        await pool.close()


def _pg_backend(bench: Bench, pool_size: int) -> Callable[[], Awaitable[Backend]]:
    async def open_() -> Backend:
        from cqrskit.store.postgres import open_postgres_backend

        assert bench.postgres_url is not None
        return await open_postgres_backend(bench.postgres_url, max_size=pool_size)

    return open_


def _pg_variants(
    bench: Bench, n: int, concurrency: int, with_es: bool
) -> dict[str, Callable[[], dict[str, float]]]:
    def fresh() -> None:
        bench.run(bench.reset_postgres())
        # Our schema serves the raw reference too.
        backend = bench.run(_pg_backend(bench, 1)())
        bench.run(backend.close())

    def ours() -> dict[str, float]:
        fresh()
        return bench.run(_ours(_pg_backend(bench, max(10, concurrency)), n, concurrency))

    def raw() -> dict[str, float]:
        fresh()
        return bench.run(_raw_pg(bench, n, concurrency))

    variants: dict[str, Callable[[], dict[str, float]]] = {"ours": ours, RAW_PG: raw}
    if with_es:

        def es() -> dict[str, float]:
            from bench.es_side import EsBench

            fresh()
            side = EsBench(postgres_url=bench.postgres_url)
            try:
                side.open_accounts(20)
                started = time.perf_counter()
                side.open_accounts(n)
                return {"rate": n / (time.perf_counter() - started)}
            finally:
                side.close()

        variants[ES] = es
    return variants


def _result(
    id_: str,
    name: str,
    runs: dict[str, dict[str, list[float]]],
    targets: list[Target],
    **params: object,
) -> ScenarioResult:
    return ScenarioResult(
        id=id_,
        name=name,
        unit="commands/s",
        ours=Series("ours", runs["ours"]["rate"]),
        references=[Series(label, m["rate"]) for label, m in runs.items() if label != "ours"],
        targets=targets,
        params=dict(params),
    )


def command_pg_sequential(bench: Bench) -> ScenarioResult:
    """Scenario 1."""
    n = bench.sizes.cmd_seq
    runs = interleave(bench.sizes.reps, _pg_variants(bench, n, 1, with_es=True))
    return _result(
        "1",
        "command, new stream, 1 event, PostgreSQL, sequential",
        runs,
        [Target(">=", 0.7, RAW_PG), Target(">=", 10, ES)],
        commands_per_rep=n,
    )


def command_pg_concurrent(bench: Bench) -> ScenarioResult:
    """Scenario 2."""
    n = bench.sizes.cmd_conc
    runs = interleave(bench.sizes.reps, _pg_variants(bench, n, CONCURRENCY, with_es=False))
    bench.facts["ours_concurrent_commands_per_s"] = float(Summary.of(runs["ours"]["rate"]).median)
    return _result(
        "2",
        f"same, {CONCURRENCY} concurrent, PostgreSQL",
        runs,
        [Target(">=", 0.6, RAW_PG)],
        commands_per_rep=n,
        concurrency=CONCURRENCY,
        our_pool_size=CONCURRENCY,
    )


def _raw_sqlite(bench: Bench, n: int) -> dict[str, float]:
    from cqrskit.store.sqlite import SCHEMA

    path = bench.sqlite_path("raw")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        for statement in SCHEMA:
            conn.execute(statement)
        rows = sqlite_event_rows(n + 20)
        for row in rows[:20]:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(SQLITE_INSERT, row)
            conn.execute("COMMIT")
        started = time.perf_counter()
        for row in rows[20:]:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(SQLITE_INSERT, row)
            conn.execute("COMMIT")
        return {"rate": n / (time.perf_counter() - started)}
    finally:
        conn.close()


def command_sqlite_sequential(bench: Bench) -> ScenarioResult:
    """Scenario 3."""
    n = bench.sizes.cmd_sqlite

    def ours() -> dict[str, float]:
        url = f"sqlite:///{bench.sqlite_path('ours')}"
        return bench.run(_ours(lambda: open_backend(url), n, 1))

    def raw() -> dict[str, float]:
        return _raw_sqlite(bench, n)

    def es() -> dict[str, float]:
        from bench.es_side import EsBench

        side = EsBench(sqlite_path=bench.sqlite_path("es"))
        try:
            side.open_accounts(20)
            started = time.perf_counter()
            side.open_accounts(n)
            return {"rate": n / (time.perf_counter() - started)}
        finally:
            side.close()

    runs = interleave(bench.sizes.reps, {"ours": ours, RAW_SQLITE: raw, ES: es})
    return _result(
        "3",
        "same on SQLite (WAL, synchronous=FULL), sequential",
        runs,
        [Target(">=", 0.5, RAW_SQLITE), Target(">=", 2, ES)],
        commands_per_rep=n,
    )


def probe_concurrent_rate(bench: Bench) -> float:
    """Measure our 32-way concurrent command rate once (for scenario 6 when 2 did not run)."""
    rate = _pg_variants(bench, bench.sizes.cmd_conc, CONCURRENCY, with_es=False)["ours"]()["rate"]
    bench.facts["ours_concurrent_commands_per_s"] = rate
    return rate
