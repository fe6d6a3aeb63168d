"""Health endpoints: liveness, and the lag and state of every projection.

- ``GET /health``: 200 ``{"status": "ok"}`` while the process serves requests.
- ``GET /health/projections``: per projection its checkpoint (``position``), the log's
  ``head``, ``lag_events``, ``lag_seconds``, the runner's ``state``, ``failures`` and
  ``last_error``. The overall ``status`` is ``ok`` (200), or ``failing`` (503) when any
  runner in this process is in the ``failed`` state. Positions are consistency tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from cqrskit.projections.runner import ProjectionState

if TYPE_CHECKING:
    from cqrskit.service import Runtime

__all__ = ["health_router"]

_MAX_ERROR_CHARS = 500


def health_router(runtime: Callable[[Request], Runtime]) -> APIRouter:
    """A router with ``/health`` and ``/health/projections`` over ``runtime(request)``."""
    router = APIRouter(tags=["operations"])

    @router.get("/health")
    async def liveness() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @router.get("/health/projections")
    async def projections(request: Request) -> JSONResponse:
        """Lag and state of every projection."""
        rt = runtime(request)
        rows: list[dict[str, Any]] = []
        failing = False
        head = None
        for lag in await rt.lag():
            runner = rt.runners.get(lag.name)
            status = runner.status if runner is not None else None
            state = status.state if status is not None else ProjectionState.IDLE
            failing = failing or state is ProjectionState.FAILED
            last_error = status.last_error if status is not None else None
            head = lag.head
            rows.append(
                {
                    "name": lag.name,
                    "position": lag.position.token(),
                    "head": lag.head.token(),
                    "lag_events": lag.lag_events,
                    "lag_seconds": round(lag.lag_seconds, 3),
                    "state": state.value,
                    "failures": status.failures if status is not None else 0,
                    "last_error": last_error[:_MAX_ERROR_CHARS] if last_error else None,
                    "updated_at": lag.updated_at.isoformat() if lag.updated_at else None,
                }
            )
        if head is None:
            head = await rt.backend.store.head()
        body = {
            "status": "failing" if failing else "ok",
            "head": head.token(),
            "projections": rows,
        }
        return JSONResponse(body, status_code=503 if failing else 200)

    return router
