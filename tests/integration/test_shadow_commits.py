"""Shadow generations commit without waiting for the flush; live batches and the switch wait.

A projection that records, with every event, the ``synchronous_commit`` setting of the
transaction that applied it shows which commits were flushed: the live runner's and the
switch's (which catches the shadow up to the live checkpoint) say ``on``, the shadow's batches
``off``. The setting is transaction-local, so it never leaks into later transactions of the
pooled connection.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from cqrskit.backend import Backend, open_backend
from cqrskit.messages import utc_now
from cqrskit.projections.generations import live_tables
from cqrskit.projections.projection import Projection, on
from cqrskit.projections.rebuild import BlueGreenRebuild
from cqrskit.projections.runner import ProjectionRunner
from cqrskit.read_models.protocol import Statement, sql
from cqrskit.store.protocol import NO_STREAM, StreamAppend
from orders.customer import Customer, CustomerRegistered

_RECORD = sql(
    "INSERT INTO flush_seen (customer_id, setting)"
    " VALUES ($1, current_setting('synchronous_commit'))",
    keys={"customer": 1},
)
_SETTINGS = sql("SELECT setting, count(*) AS n FROM flush_seen GROUP BY setting")
_LEAK = sql("SELECT current_setting('synchronous_commit') AS setting")


class FlushSeen(Projection):
    name = "flush_seen"
    tables = ("flush_seen",)
    schema = (
        sql(
            "CREATE TABLE IF NOT EXISTS flush_seen"
            " (customer_id TEXT PRIMARY KEY, setting TEXT NOT NULL)"
        ),
    )
    truncate = (sql("DELETE FROM flush_seen"),)

    @on(CustomerRegistered)
    def _registered(self, event: CustomerRegistered) -> Iterator[Statement]:
        yield _RECORD(event.customer_id)


async def _register(backend: Backend, n: int) -> None:
    at = utc_now()
    customers = [
        Customer.register(str(uuid.uuid4()), f"C{i}", f"c{i}@example.com", at=at) for i in range(n)
    ]
    await backend.store.append(
        *(StreamAppend(c.stream_id, NO_STREAM, c.pending_events) for c in customers)
    )


async def test_shadow_batches_are_not_flushed_but_live_batches_and_the_switch_are(
    postgres_url: str,
) -> None:
    backend = await open_backend(postgres_url)
    try:
        projection = FlushSeen()
        live = ProjectionRunner(backend.store, backend.read_models, projection)
        await live.migrate()
        await _register(backend, 30)
        await live.catch_up()
        assert await backend.read_models.fetch(_SETTINGS) == [{"setting": "on", "n": 30}]

        # 120 events in shadow batches of 50; 7 more arrive for the live runner only after
        # the shadow is drained, so the switch applies them (flushed) to the new generation.
        await _register(backend, 90)
        rebuild = BlueGreenRebuild(live, batch_size=50)
        real_switch = rebuild._switch

        async def switch_after_more_events(*args: object, **kwargs: object) -> bool:
            if not getattr(switch_after_more_events, "done", False):
                switch_after_more_events.done = True  # type: ignore[attr-defined]
                await _register(backend, 7)
                await live.catch_up()
            return await real_switch(*args, **kwargs)  # type: ignore[arg-type]

        rebuild._switch = switch_after_more_events  # type: ignore[method-assign]
        await rebuild.run()
        assert await live_tables(backend.read_models).generation(projection) == 2

        rows = await backend.read_models.fetch(projection.physical(_SETTINGS, 2))
        assert {row["setting"]: row["n"] for row in rows} == {"off": 120, "on": 7}
        # Nothing leaked into the pool's later transactions.
        for _ in range(5):
            assert await backend.read_models.fetchone(_LEAK) == {"setting": "on"}
    finally:
        await backend.close()
