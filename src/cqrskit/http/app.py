"""Build the FastAPI app of a service, and the dependencies its routers use.

``create_app(service, settings)`` wires everything: a lifespan that opens the
:class:`~cqrskit.service.Runtime` (and starts its projections when
``settings.run_projections``), the service's routers, ``/health``, ``/health/projections``,
``/metrics``, the ``/ui`` dashboard, problem+json errors, the request deadline and the
request body limit. Routers reach the runtime through :func:`get_runtime` and send commands
through :class:`CommandSender`, which counts them in the metrics and puts the consistency
token in the ``X-Consistency-Token`` header.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated
from uuid import UUID

from fastapi import Depends, FastAPI, Request, Response

from cqrskit.command_bus import CommandResult
from cqrskit.config import Settings
from cqrskit.http.admin import router as admin_router
from cqrskit.http.auth import (
    ApiKeys,
    authenticate,
    current_correlation_id,
    current_user_id,
    require_admin,
)
from cqrskit.http.deadline import RequestDeadline
from cqrskit.http.health import health_router
from cqrskit.http.limits import BodySizeLimit
from cqrskit.http.metrics import HttpMetrics, Metrics, metrics_router
from cqrskit.http.problems import install_problem_handlers
from cqrskit.http.ui import router as ui_router
from cqrskit.messages import Command
from cqrskit.service import Runtime, Service

__all__ = [
    "CONSISTENCY_HEADER",
    "CommandSender",
    "Commands",
    "RuntimeDep",
    "create_app",
    "get_commands",
    "get_runtime",
]

CONSISTENCY_HEADER = "X-Consistency-Token"


def get_runtime(request: Request) -> Runtime:
    """The runtime the app's lifespan opened (a FastAPI dependency)."""
    runtime = getattr(request.app.state, "runtime", None)
    if not isinstance(runtime, Runtime):
        raise RuntimeError("the app's runtime is not open (was the lifespan run?)")
    return runtime


async def _runtime_dependency(request: Request) -> Runtime:
    # async: FastAPI would run a plain def dependency in its thread pool on every request.
    return get_runtime(request)


RuntimeDep = Annotated[Runtime, Depends(_runtime_dependency)]


class CommandSender:
    """Sends commands for one request: dispatch, metrics, consistency-token header."""

    def __init__(
        self,
        runtime: Runtime,
        metrics: Metrics,
        response: Response,
        *,
        user_id: str | None = None,
        correlation_id: UUID | None = None,
    ) -> None:
        self._runtime = runtime
        self._metrics = metrics
        self._response = response
        self._user_id = user_id
        self._correlation_id = correlation_id

    async def send(self, command: Command) -> str | None:
        """Dispatch ``command``; return its consistency token (also set as a header).

        The command's ``user_id`` is the request's verified principal's (``None`` when
        anonymous), whatever the route put there; ``X-Correlation-ID`` sets its correlation
        id. Errors propagate unchanged (the problem handlers map them to a status).
        """
        stamp: dict[str, object] = {}
        if command.user_id != self._user_id:
            stamp["user_id"] = self._user_id
        if self._correlation_id is not None:
            stamp["correlation_id"] = self._correlation_id
        if stamp:
            command = command.model_copy(update=stamp)
        result: CommandResult = await self._metrics.dispatch(self._runtime.command_bus, command)
        token = result.token
        if token is not None:
            self._response.headers[CONSISTENCY_HEADER] = token
        return token


async def get_commands(request: Request, response: Response) -> CommandSender:
    """A :class:`CommandSender` for this request (a FastAPI dependency)."""
    metrics = request.app.state.metrics
    if not isinstance(metrics, Metrics):
        raise RuntimeError("the app was not built by create_app")
    return CommandSender(
        get_runtime(request),
        metrics,
        response,
        user_id=current_user_id(request),
        correlation_id=current_correlation_id(request),
    )


Commands = Annotated[CommandSender, Depends(get_commands)]


def create_app(service: Service, settings: Settings) -> FastAPI:
    """Build the HTTP app of ``service`` over the backend ``settings`` name."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await Runtime.open(service, settings)
        try:
            if settings.run_projections:
                runtime.start_projections()
            app.state.runtime = runtime
            yield
        finally:
            app.state.runtime = None
            await runtime.close()

    metrics = Metrics()
    # Every route authenticates (http/auth.py): writes and /admin need a key when keys exist.
    app = FastAPI(
        title=service.title,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        dependencies=[Depends(authenticate)],
    )
    app.state.api_keys = ApiKeys.parse(
        settings.api_keys.get_secret_value() if settings.api_keys else None
    )
    app.state.metrics = metrics
    app.state.runtime = None
    install_problem_handlers(app)
    for router in service.routers():
        app.include_router(router)
    app.include_router(health_router(get_runtime))
    app.include_router(metrics_router(metrics, get_runtime))
    app.include_router(admin_router, dependencies=[Depends(require_admin)])
    app.include_router(ui_router)  # the dashboard shell: no data, see http/ui.py
    # The last middleware added runs outermost: count every request, 413s included.
    app.add_middleware(
        BodySizeLimit, max_bytes=settings.max_body_bytes, timeout=settings.body_timeout
    )
    app.add_middleware(RequestDeadline, seconds=settings.request_timeout)
    app.add_middleware(HttpMetrics, metrics=metrics)
    return app
