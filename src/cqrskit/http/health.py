"""Health endpoints: liveness, and the lag and state of every projection.

- ``GET /health``: 200 ``{"status": "ok"}`` while the process serves requests.
- ``GET /health/projections``: per projection (and the NATS publisher, when configured) its
  checkpoint (``position``), the log's ``head``, ``lag_events``, ``lag_seconds`` (age of the
  oldest unapplied event), ``throughput`` (events/s over the last minute), ``state``
  (``running``, ``catching_up``, ``stalled``, ``failed``, ``rebuilding``), ``level``
  (``ok``, ``warn``, ``fail`` against the ``CQRSKIT_LAG_*`` thresholds), ``failures``,
  ``last_error``, ``failing_position``, ``parked`` (dead letters waiting) and, on
  PostgreSQL, ``blocked_by``: the long-running transaction holding the log back. The
  overall ``status`` is ``ok`` (200), ``warn`` (200) or ``failing`` (503) when any
  projection is at level ``fail`` (a failed handler, or lag over a fail threshold), so a
  load balancer or probe can alert. Positions are consistency tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from cqrskit.projections.status import lag_thresholds, projection_status

if TYPE_CHECKING:
    from cqrskit.service import Runtime

__all__ = ["health_router", "projections_report"]


def health_router(runtime: Callable[[Request], Runtime]) -> APIRouter:
    """A router with ``/health`` and ``/health/projections`` over ``runtime(request)``."""
    router = APIRouter(tags=["operations"])

    @router.get("/health")
    async def liveness() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @router.get("/health/projections")
    async def projections(request: Request) -> JSONResponse:
        """Lag and state of every projection; 503 when one is failing."""
        body = await projections_report(runtime(request))
        return JSONResponse(body, status_code=503 if body["status"] == "failing" else 200)

    return router


async def projections_report(rt: Runtime) -> dict[str, Any]:
    """The body of ``/health/projections`` (also served by ``/admin/projections``)."""
    statuses = await projection_status(rt, lag_thresholds(rt.settings))
    levels = {status.level for status in statuses}
    overall = "failing" if "fail" in levels else "warn" if "warn" in levels else "ok"
    head = statuses[0].lag.head if statuses else await rt.backend.store.head()
    return {
        "status": overall,
        "head": head.token(),
        "projections": [status.as_json() for status in statuses],
    }
