"""Staged rebuilds on PostgreSQL: replayed in SQLite, COPY'd into the shadow, same rows.

Every orders projection declares ``staged_rebuild``; these tests hold it to that. From an
interleaved log (customers, products and orders of every kind of change, see
``test_keyed_batches``), each projection is rebuilt blue/green while more events arrive; the
new generation must equal a build statement by statement, one event per batch. A COPY that
fails half-way leaves the shadow's checkpoint at the start, and the next rebuild empties
what it left and succeeds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from cqrskit.backend import open_backend
from cqrskit.messages import LOG_START
from cqrskit.projections import staging
from cqrskit.projections.generations import live_tables
from cqrskit.projections.projection import physical_name
from cqrskit.projections.rebuild import BlueGreenRebuild, shadow_name
from cqrskit.projections.runner import ProjectionRunner
from cqrskit.read_models.postgres import PostgresReadModelStore
from orders.read_models import projections
from orders.read_models.customer_orders import CustomerOrdersProjection
from tests.integration.test_keyed_batches import _build, _interleaved_log
from tests.reliability.history import table_digests


async def test_every_orders_projection_rebuilds_staged_to_the_same_rows(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cqrskit.projections")
    backend = await open_backend(postgres_url)
    try:
        await _interleaved_log(backend.store, seed=11)
        for number, projection in enumerate(projections()):
            assert projection.staged_rebuild, projection.name
            live = ProjectionRunner(backend.store, backend.read_models, projection)
            await live.migrate()
            await live.catch_up()
            # More events arrive while the rebuild runs: the tail after the staged part goes
            # through the shadow's statements and the switch.
            more = asyncio.create_task(_interleaved_log(backend.store, seed=100 + number))
            await BlueGreenRebuild(live, batch_size=100).run()
            await more
            await live.catch_up()
            generation = await live_tables(backend.read_models).generation(projection)
            assert generation == 2
            rebuilt = await table_digests(
                backend.read_models, [physical_name(t, 2) for t in projection.tables]
            )
            expected = await _build(postgres_url, projection, 90, batch=1)
            assert rebuilt == expected, projection.name
    finally:
        await backend.close()
    staged = [r.getMessage() for r in caplog.records if " staged " in r.getMessage()]
    assert len(staged) == len(projections()), staged


async def test_a_copy_that_fails_half_way_is_emptied_and_redone(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cqrskit.projections")
    monkeypatch.setattr(staging, "COPY_CHUNK", 7)
    real_copy = PostgresReadModelStore.copy_rows
    calls = 0

    async def copy_then_fail(self: PostgresReadModelStore, *args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise ConnectionResetError("lost the server mid-COPY")
        await real_copy(self, *args, **kwargs)

    backend = await open_backend(postgres_url)
    try:
        await _interleaved_log(backend.store, seed=5)
        projection = CustomerOrdersProjection()
        live = ProjectionRunner(backend.store, backend.read_models, projection)
        await live.migrate()
        await live.catch_up()
        monkeypatch.setattr(PostgresReadModelStore, "copy_rows", copy_then_fail)
        with pytest.raises(ConnectionResetError):
            await BlueGreenRebuild(live, batch_size=100).run()
        # Three chunks went in; the shadow's checkpoint never moved.
        shadow = shadow_name(projection.name, 2)
        assert await backend.read_models.checkpoint(shadow) == LOG_START
        left = await table_digests(
            backend.read_models, [physical_name(t, 2) for t in projection.tables]
        )
        assert sum(int(d.split(":")[0]) for d in left) == 21

        monkeypatch.setattr(PostgresReadModelStore, "copy_rows", real_copy)
        await BlueGreenRebuild(live, batch_size=100).run()
        assert await live_tables(backend.read_models).generation(projection) == 2
        rebuilt = await table_digests(
            backend.read_models, [physical_name(t, 2) for t in projection.tables]
        )
    finally:
        await backend.close()
    assert rebuilt == await _build(postgres_url, projection, 90, batch=1)
    assert sum(" staged " in r.getMessage() for r in caplog.records) == 1
