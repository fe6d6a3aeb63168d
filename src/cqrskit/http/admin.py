"""Operator endpoints under ``/admin``: dead letters here; projections and rebuilds in
:mod:`~cqrskit.http.admin_projections`, the event browser in
:mod:`~cqrskit.http.admin_events`, counters in :mod:`~cqrskit.http.admin_stats` (all
included in :data:`router`).

Dead letters of projections (poison events):

- ``GET /admin/deadletters?projection=&stream_id=&status=``: parked and skipped events, in log
  order per projection.
- ``POST /admin/deadletters/{projection}/{stream_id}/retry``: apply the stream's parked events
  in stream order, exactly once, atomically with their removal; later events of the stream
  flow again. A handler that fails again keeps the rest parked (``error`` in the answer).
- ``POST /admin/deadletters/{projection}/{stream_id}/skip[?id=N&id=M]``: mark the stream's
  parked events (or only those ids) skipped; they stay listed, never silently dropped.

Unknown projections, streams without parked events and ids that are not parked in that
stream are 404; malformed ids are 422; a retry racing the runner too many times is 409.
With authentication on, the app guards this router with the ``admin`` role.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from cqrskit.errors import NotFound, ProjectionError
from cqrskit.http import admin_events, admin_projections, admin_stats
from cqrskit.http._admin import app_runtime
from cqrskit.http.problems import problem
from cqrskit.projections.deadletters import (
    SettleResult,
    dead_letter_json,
    retry_dead_letters,
    skip_dead_letters,
)

__all__ = ["router"]

router = APIRouter(prefix="/admin", tags=["operations"])

_Name = Annotated[str, Query(min_length=1, max_length=200)]


def _result(result: SettleResult) -> dict[str, Any]:
    return {
        "projection": result.projection,
        "stream_id": result.stream_id,
        "applied": result.applied,
        "skipped": result.skipped,
        "remaining": result.remaining,
        "error": result.error,
    }


def _conflict() -> JSONResponse:
    return problem(409, "the dead letters changed while settling them; retry", kind="conflict")


@router.get("/deadletters")
async def list_dead_letters(
    request: Request,
    projection: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    stream_id: Annotated[str | None, Query(min_length=1, max_length=500)] = None,
    status: Literal["parked", "skipped"] | None = None,
) -> dict[str, Any]:
    """List dead letters, optionally of one projection, stream or status."""
    rt = app_runtime(request)
    if projection is not None and projection not in rt.runners:
        raise NotFound("projection", projection)
    rows = await rt.backend.read_models.dead_letters(projection, stream_id=stream_id)
    items = [dead_letter_json(row) for row in rows if status is None or row.status == status]
    return {"items": items}


@router.post("/deadletters/{projection}/{stream_id}/retry")
async def retry(request: Request, projection: str, stream_id: str) -> Any:
    """Apply the stream's parked events in order, exactly once."""
    rt = app_runtime(request)
    projections = [runner.projection for runner in rt.runners.values()]
    try:
        result = await retry_dead_letters(
            rt.backend.store, rt.backend.read_models, projections, projection, stream_id
        )
    except ProjectionError:
        return _conflict()
    return _result(result)


@router.post("/deadletters/{projection}/{stream_id}/skip")
async def skip(
    request: Request,
    projection: str,
    stream_id: str,
    ids: Annotated[list[int] | None, Query(alias="id", max_length=1000)] = None,
) -> Any:
    """Mark the stream's parked events (or only ``id``s) as skipped."""
    rt = app_runtime(request)
    projections = [runner.projection for runner in rt.runners.values()]
    try:
        result = await skip_dead_letters(
            rt.backend.read_models, projections, projection, stream_id, ids
        )
    except ProjectionError:
        return _conflict()
    return _result(result)


for _module in (admin_projections, admin_events, admin_stats):
    router.include_router(_module.router)  # under /admin, with the same admin guard
