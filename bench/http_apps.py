"""The two HTTP apps scenario 7 serves with uvicorn (``--factory``), same server settings.

- :func:`ours`: the orders service, ``create_app(orders.service.service, Settings(...))``,
  projections running in the same process (the service's default).
- :func:`ours_cached`: the same with the Redis query cache on (``BENCH_REDIS_URL``,
  ``BENCH_REDIS_PREFIX``), which caches ``GET /api/v1/orders/{id}``.
- :func:`bare`: FastAPI + asyncpg doing one INSERT per ``POST /api/v1/orders`` (same request
  body, validated with an equivalent pydantic model) and one SELECT per
  ``GET /api/v1/orders/{id}``.

Both read ``BENCH_DATABASE_URL``.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

__all__ = ["BARE_DDL", "bare", "ours", "ours_cached"]

POOL_SIZE = 10  # cqrskit's default pool size, for both apps
BARE_DDL = (
    "CREATE TABLE IF NOT EXISTS bare_orders (order_id uuid PRIMARY KEY, customer_id uuid NOT NULL,"
    " body jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
)
_INSERT = "INSERT INTO bare_orders (order_id, customer_id, body) VALUES ($1, $2, $3::jsonb)"
_SELECT = (
    "SELECT order_id, customer_id, body::text AS body, created_at FROM bare_orders"
    " WHERE order_id = $1"
)


def ours() -> FastAPI:
    """The orders service on ``BENCH_DATABASE_URL``."""
    from cqrskit.config import Settings
    from cqrskit.http.app import create_app
    from orders.service import service

    return create_app(service, Settings(database_url=os.environ["BENCH_DATABASE_URL"]))


def ours_cached() -> FastAPI:
    """The orders service with the Redis query cache under a run's own key prefix."""
    from cqrskit.config import Settings
    from cqrskit.http.app import create_app
    from orders.service import service

    settings = Settings(
        database_url=os.environ["BENCH_DATABASE_URL"],
        redis_url=os.environ["BENCH_REDIS_URL"],
        redis_prefix=os.environ["BENCH_REDIS_PREFIX"],
    )
    return create_app(service, settings)


class _Address(BaseModel):
    street: str = Field(min_length=1, max_length=200)
    city: str = Field(min_length=1, max_length=200)
    postal_code: str = Field(min_length=1, max_length=20)
    country: str = Field(min_length=1, max_length=200)


class _Item(BaseModel):
    product_id: uuid.UUID
    quantity: int = Field(ge=1, le=1_000_000)
    unit_price: Decimal = Field(ge=Decimal("0.01"), decimal_places=2)


class _CreateOrder(BaseModel):
    customer_id: uuid.UUID
    items: list[_Item] = Field(min_length=1, max_length=100)
    shipping_address: _Address


def bare() -> FastAPI:
    """The bare reference app."""
    import asyncpg

    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(
            os.environ["BENCH_DATABASE_URL"], min_size=1, max_size=POOL_SIZE
        )
        async with pool.acquire() as conn:
            await conn.execute(BARE_DDL)
        state["pool"] = pool
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/api/v1/orders", status_code=201)
    async def create_order(body: _CreateOrder) -> dict[str, Any]:
        order_id = uuid.uuid4()
        async with state["pool"].acquire() as conn:
            await conn.execute(_INSERT, order_id, body.customer_id, body.model_dump_json())
        return {"order_id": order_id}

    @app.get("/api/v1/orders/{order_id}")
    async def get_order(order_id: uuid.UUID) -> dict[str, Any]:
        async with state["pool"].acquire() as conn:
            row = await conn.fetchrow(_SELECT, order_id)
        if row is None:
            raise HTTPException(status_code=404)
        return {
            "id": row["order_id"],
            "customer_id": row["customer_id"],
            **json.loads(row["body"]),
            "created_at": row["created_at"],
        }

    return app
