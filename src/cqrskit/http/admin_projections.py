"""Operator endpoints for projections: their state, and blue/green rebuilds on request.

- ``GET /admin/projections``: the body of ``/health/projections``, always 200 (a page must
  show a failing projection, where a probe wants the 503).
- ``POST /admin/projections/{name}/rebuild``: 202 ``{"projection", "state": "running"}``;
  starts a blue/green rebuild of the projection inside this process (see
  :mod:`cqrskit.projections.rebuild_jobs`). 409 when one is already running
  (``rebuild-running``) or the projection has no tables to build beside the live ones
  (``rebuild-unsupported``); 404 for an unknown projection.
- ``GET /admin/projections/{name}/rebuild``: the last rebuild's ``state`` (``idle``,
  ``running``, ``done``, ``failed``), ``applied``, ``total``, ``percent``,
  ``eta_seconds``, ``error``, ``started_at``, ``finished_at``.

Rebuild jobs live in the process that started them: behind a load balancer, ask the same
process (the live checkpoint switch itself is safe across processes).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from cqrskit.errors import NotFound, ProjectionError
from cqrskit.http._admin import app_runtime
from cqrskit.http.health import projections_report
from cqrskit.http.problems import problem
from cqrskit.projections.rebuild_jobs import RebuildRunning
from cqrskit.projections.runner import ProjectionRunner

__all__ = ["router"]

router = APIRouter()
"""Routes relative to ``/admin`` (included by :mod:`cqrskit.http.admin`)."""

_Name = Annotated[str, Path(min_length=1, max_length=200)]


def _runner(request: Request, name: str) -> ProjectionRunner:
    runner = app_runtime(request).runners.get(name)
    if runner is None:
        raise NotFound("projection", name)
    return runner


@router.get("/projections")
async def projections(request: Request) -> dict[str, Any]:
    """Lag and state of every projection, as ``/health/projections`` reports them."""
    return await projections_report(app_runtime(request))


@router.post("/projections/{name}/rebuild", status_code=202)
async def start_rebuild(request: Request, name: _Name) -> JSONResponse:
    """Start a blue/green rebuild of one projection in the background."""
    runtime = app_runtime(request)
    runner = _runner(request, name)
    try:
        runtime.rebuilds.start(runner, batch_size=runtime.settings.projection_batch_size)
    except RebuildRunning:
        return problem(409, "a rebuild of this projection is running", kind="rebuild-running")
    except ProjectionError:
        return problem(
            409,
            "this projection declares no tables, so it cannot be rebuilt beside the live one;"
            " use `cqrskit projections rebuild --in-place`",
            kind="rebuild-unsupported",
        )
    return JSONResponse({"projection": runner.name, "state": "running"}, status_code=202)


@router.get("/projections/{name}/rebuild")
async def rebuild_status(request: Request, name: _Name) -> dict[str, object]:
    """The state and progress of the projection's last rebuild in this process."""
    runner = _runner(request, name)
    return app_runtime(request).rebuilds.get(runner).as_json()
