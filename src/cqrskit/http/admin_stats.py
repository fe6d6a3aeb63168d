"""``GET /admin/stats``: this process's counters, for a dashboard that does not parse Prometheus.

``{"commands": {"total", "failed", "per_second"}, "requests": {"total", "errors_5xx",
"errors_4xx"}, "events": {"head"}}``. Commands are those sent through the app's command
sender since the process started; ``failed`` counts every outcome but ``ok`` (rejections
included); ``per_second`` is the rate over the last minute. ``head`` is the log's last
readable position (a consistency token). The same numbers are in ``/metrics``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from cqrskit.http._admin import app_metrics, app_runtime

__all__ = ["router"]

router = APIRouter()
"""Routes relative to ``/admin`` (included by :mod:`cqrskit.http.admin`)."""


@router.get("/stats")
async def stats(request: Request) -> dict[str, Any]:
    """Command and request counters of this process, and the log's head."""
    head = await app_runtime(request).backend.store.head()
    return {**app_metrics(request).stats(), "events": {"head": head.token()}}
