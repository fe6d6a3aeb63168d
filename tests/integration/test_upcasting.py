"""Version-1 rows stored by an older release read as version 2, on SQLite and PostgreSQL.

The rows are inserted with raw SQL, as the old code stored them; the current class has a
renamed field and a new one. ``read_stream``, ``read_all`` and a projection all see v2.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import uuid4

import asyncpg
import pytest

from cqrskit.backend import Backend, open_backend
from cqrskit.messages import LOG_START, DomainEvent
from cqrskit.projections.projection import Projection, on
from cqrskit.projections.runner import ProjectionRunner
from cqrskit.read_models.protocol import Statement, sql
from cqrskit.store.protocol import StreamAppend
from cqrskit.upcasting import upcasters

AT = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


class UpcastPriceSet(DomainEvent):
    """v1: ``{"price": "9.99"}`` (a string, in euros); v2: cents and a currency."""

    schema_version: ClassVar[int] = 2

    cents: int
    currency: str


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {"cents": round(float(data["price"]) * 100), "currency": "EUR"}


@pytest.fixture(autouse=True)
def _registered() -> Iterator[None]:
    upcasters.register("UpcastPriceSet", 1, _v1_to_v2)
    yield
    upcasters.unregister("UpcastPriceSet", 1)


class Prices(Projection):
    name = "upcast_prices"
    schema = (
        sql(
            "CREATE TABLE IF NOT EXISTS upcast_prices ("
            " stream_id TEXT PRIMARY KEY, cents INTEGER NOT NULL, currency TEXT NOT NULL)"
        ),
    )
    truncate = (sql("DELETE FROM upcast_prices"),)

    @on(UpcastPriceSet)
    def _set(self, event: UpcastPriceSet) -> Iterator[Statement]:
        yield sql(
            "INSERT INTO upcast_prices (stream_id, cents, currency) VALUES ($1, $2, $3)"
            " ON CONFLICT (stream_id) DO UPDATE SET cents = excluded.cents,"
            " currency = excluded.currency"
        )(event.stream_id, event.cents, event.currency)


_SQLITE_INSERT = (
    "INSERT INTO events (event_id, stream_id, version, event_type, schema_version, data,"
    " metadata, occurred_at, recorded_at) VALUES (?, ?, ?, 'UpcastPriceSet', 1, ?, ?, ?, ?)"
)
_POSTGRES_INSERT = (
    "INSERT INTO events (event_id, stream_id, version, event_type, schema_version, data,"
    " metadata, occurred_at) VALUES ($1, $2, $3, 'UpcastPriceSet', 1, $4::jsonb, $5::jsonb, $6)"
)


async def _insert_v1(backend: Backend, url: str, stream_id: str, prices: list[str]) -> None:
    rows = [
        (str(uuid4()), stream_id, n, json.dumps({"price": p}), '{"user_id": "old-release"}')
        for n, p in enumerate(prices, start=1)
    ]
    if url.startswith("sqlite"):
        db: Any = backend.store.db  # type: ignore[attr-defined]
        at = AT.isoformat()
        await db.write(lambda conn: conn.executemany(_SQLITE_INSERT, [(*r, at, at) for r in rows]))
        return
    conn = await asyncpg.connect(url)
    try:
        await conn.executemany(_POSTGRES_INSERT, [(uuid4(), *r[1:], AT) for r in rows])
    finally:
        await conn.close()


async def test_version_1_rows_read_as_version_2(database_url: str) -> None:
    backend = await open_backend(database_url)
    stream_id = f"upcastprice-{uuid4()}"
    try:
        await _insert_v1(backend, database_url, stream_id, ["9.99", "12.50"])
        # A v2 event appended by the current code, after the old ones.
        await backend.store.append(
            StreamAppend(stream_id, 2, [UpcastPriceSet(cents=1500, currency="USD", occurred_at=AT)])
        )
        events = await backend.store.read_stream(stream_id)
        assert all(isinstance(e, UpcastPriceSet) for e in events)
        assert [(e.cents, e.currency, e.version) for e in events] == [  # type: ignore[attr-defined]
            (999, "EUR", 1),
            (1250, "EUR", 2),
            (1500, "USD", 3),
        ]
        assert events[0].metadata.user_id == "old-release"

        log = await backend.store.read_all(after=LOG_START, limit=100)
        assert [(r.event.cents, r.event.version) for r in log] == [  # type: ignore[attr-defined]
            (999, 1),
            (1250, 2),
            (1500, 3),
        ]

        runner = ProjectionRunner(backend.store, backend.read_models, Prices())
        await runner.migrate()
        await runner.catch_up()
        rows = await backend.read_models.fetch(
            sql("SELECT stream_id, cents, currency FROM upcast_prices")
        )
        assert [dict(r) for r in rows] == [
            {"stream_id": stream_id, "cents": 1500, "currency": "USD"}
        ]
        # Only a v1 stream: the projection's last write is the upcast value.
        other = f"upcastprice-{uuid4()}"
        await _insert_v1(backend, database_url, other, ["0.10"])
        query = sql("SELECT cents, currency FROM upcast_prices WHERE stream_id = $1")
        # Another connection's commit: PostgreSQL's cluster-wide fence may hold it a moment.
        for _ in range(200):
            await runner.catch_up()
            if (row := await backend.read_models.fetchone(query, other)) is not None:
                break
            await asyncio.sleep(0.05)
        assert row is not None
        assert (row["cents"], row["currency"]) == (10, "EUR")
    finally:
        await backend.close()
