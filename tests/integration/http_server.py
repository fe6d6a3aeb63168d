"""Run a service's HTTP app in a real uvicorn server inside the test's event loop.

``serve(database_url)`` builds ``create_app(orders.service.service, Settings(...))``, starts
``uvicorn.Server`` on an ephemeral port of 127.0.0.1 (lifespan on, so the runtime opens and
projections run exactly as in production), and yields a :class:`Served` holding the app and
an ``httpx.AsyncClient`` bound to it. On exit the server shuts down gracefully.

Test modules wrap it in a fixture over ``database_url`` (SQLite and PostgreSQL)::

    @pytest.fixture
    async def api(database_url: str) -> AsyncIterator[Served]:
        async with serve(database_url) as served:
            yield served
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from cqrskit.config import Settings
from cqrskit.http import CONSISTENCY_HEADER, create_app
from cqrskit.messages import LOG_START, LogPosition
from cqrskit.service import Runtime, Service

__all__ = ["DEADLINE_SECONDS", "Served", "serve"]

DEADLINE_SECONDS = 20.0
"""Upper bound for waits on the server or on projections (a bound, not a timing assertion)."""


@dataclass
class Served:
    """A running app: its object, its base URL and a client bound to it."""

    app: FastAPI
    url: str
    client: httpx.AsyncClient
    last_token: LogPosition = LOG_START
    """The highest consistency token any response carried."""

    async def _remember_token(self, response: httpx.Response) -> None:
        token = response.headers.get(CONSISTENCY_HEADER)
        if token:
            self.last_token = max(self.last_token, LogPosition.parse(token))

    @property
    def runtime(self) -> Runtime:
        """The runtime the app's lifespan opened."""
        runtime = self.app.state.runtime
        assert isinstance(runtime, Runtime)
        return runtime

    async def head(self) -> LogPosition:
        """The position of the last readable event in the store."""
        return await self.runtime.backend.store.head()

    async def visible_head(self, at_least: LogPosition | None = None) -> LogPosition:
        """The head, once readers can see ``at_least`` (default: the last token seen).

        On PostgreSQL the readable head trails a fresh commit until no older transaction can
        still be in flight, so a check of "what was stored" first waits for that.
        """
        target = self.last_token if at_least is None else at_least
        deadline = time.monotonic() + DEADLINE_SECONDS
        while (head := await self.head()) < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"head {head} never reached {target}")
            await asyncio.sleep(0.01)
        return head

    async def settle(self) -> None:
        """Wait (bounded) until every projection has applied every event written so far."""
        target = await self.visible_head()
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            lags = await self.runtime.lag()
            if all(lag.position >= target for lag in lags):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"projections did not catch up: {lags}")
            await asyncio.sleep(0.02)

    async def get_eventually(self, path: str, **params: Any) -> httpx.Response:
        """GET ``path`` until it answers 200 (read models are eventually consistent)."""
        deadline = time.monotonic() + DEADLINE_SECONDS
        while True:
            response = await self.client.get(path, params=params or None)
            if response.status_code == 200 or time.monotonic() > deadline:
                return response
            await asyncio.sleep(0.02)


@asynccontextmanager
async def serve(
    database_url: str, *, service: Service | None = None, **settings: Any
) -> AsyncIterator[Served]:
    """Serve ``service`` (the orders service by default) over ``database_url``."""
    if service is None:
        from orders.service import service as orders_service

        service = orders_service
    options: dict[str, Any] = {"projection_poll_interval": 0.25, **settings}
    app = create_app(service, Settings(database_url=database_url, **options))
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", log_config=None
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="uvicorn")
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped during startup (see the log)")
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start in time")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=DEADLINE_SECONDS) as client:
            served = Served(app, url, client)
            client.event_hooks["response"].append(served._remember_token)
            yield served
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, DEADLINE_SECONDS)
