"""Read-your-writes over HTTP: query endpoints that take a consistency token.

A GET route answers through :data:`Queries`. When the request carries a token (the
``X-Consistency-Token`` header a command answered with, or ``?consistent_with=``), the query
first waits until the projections it reads have applied that position, for at most
``CQRSKIT_CONSISTENCY_TIMEOUT`` seconds; ``X-Consistency-Timeout`` or
``?consistency_timeout=`` may ask for less, never more. Then:

- ``X-Consistency: consistent``: the answer includes the token's events;
- ``X-Consistency: stale``: the wait ran out; the answer is the data the read models have,
  and a JSON object answer also gets a top-level ``"stale": true`` member.

An error answer after a wait (a 404: the order may not be projected *yet*) carries the same
header. Without a token nothing waits and no ``X-Consistency`` header is sent. A malformed token or
timeout is a 422 problem. Answers are otherwise exactly the route's response model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Request
from fastapi import Query as QueryParam
from fastapi.responses import JSONResponse, Response
from pydantic import AfterValidator, BaseModel, StringConstraints

from cqrskit.errors import CqrskitError
from cqrskit.http.app import get_runtime
from cqrskit.http.metrics import Metrics
from cqrskit.http.problems import error_problem
from cqrskit.messages import LogPosition, Query
from cqrskit.service import Runtime

__all__ = [
    "CONSISTENCY_STATE_HEADER",
    "CONSISTENCY_TIMEOUT_HEADER",
    "Queries",
    "QueryAnswerer",
    "get_queries",
]

CONSISTENCY_STATE_HEADER = "X-Consistency"
CONSISTENCY_TIMEOUT_HEADER = "X-Consistency-Timeout"

M = TypeVar("M", bound=BaseModel)


def _valid_token(value: str) -> str:
    LogPosition.parse(value)
    return value


Token = Annotated[str, StringConstraints(max_length=41), AfterValidator(_valid_token)]


class QueryAnswerer:
    """Answers one request's queries, waiting for its consistency token when it has one."""

    def __init__(
        self,
        request: Request,
        runtime: Runtime,
        metrics: Metrics,
        position: LogPosition | None,
        timeout: float | None,
    ) -> None:
        self._request = request
        self._runtime = runtime
        self._metrics = metrics
        self.position = position
        self.timeout = timeout

    async def answer(
        self,
        query: Query,
        result_type: type[M],
        *,
        headers_of: Callable[[M], Mapping[str, str]] | None = None,
    ) -> Response:
        """Dispatch ``query`` and render its ``result_type`` answer as JSON.

        ``headers_of(result)`` adds headers to an answer (an ``ETag`` from the result's
        version): taken from the result itself, so no route parses the body it just got.
        Errors propagate unchanged (the problem handlers map them to a status).
        """
        bus = self._runtime.query_bus
        if self.position is None:
            result = await bus.dispatch(query, result_type)
            return Response(
                result.model_dump_json(),
                media_type="application/json",
                headers=None if headers_of is None else dict(headers_of(result)),
            )
        reached = await bus.wait_for(query, self.position, timeout=self.timeout)
        state = "consistent" if reached else "stale"
        self._metrics.consistent_reads.labels(type(query).__name__, state).inc()
        headers = {CONSISTENCY_STATE_HEADER: state}
        try:
            result = await bus.dispatch(query, result_type, at=self.position)
        except CqrskitError as exc:
            # A 404 after a wait that ran out may just not be there *yet*: say so.
            problem = await error_problem(self._request, exc)
            problem.headers.update(headers)
            return problem
        if headers_of is not None:
            headers.update(headers_of(result))
        if reached:
            return Response(
                result.model_dump_json(), media_type="application/json", headers=headers
            )
        body: Any = result.model_dump(mode="json")
        if isinstance(body, dict):
            body["stale"] = True
        return JSONResponse(body, headers=headers)


async def get_queries(
    request: Request,
    x_consistency_token: Annotated[Token | None, Header()] = None,
    consistent_with: Annotated[Token | None, QueryParam()] = None,
    x_consistency_timeout: Annotated[float | None, Header(ge=0, le=3600)] = None,
    consistency_timeout: Annotated[float | None, QueryParam(ge=0, le=3600)] = None,
) -> QueryAnswerer:
    """A :class:`QueryAnswerer` for this request (a FastAPI dependency)."""
    metrics = request.app.state.metrics
    if not isinstance(metrics, Metrics):
        raise RuntimeError("the app was not built by create_app")
    tokens = [LogPosition.parse(t) for t in (x_consistency_token, consistent_with) if t]
    limits = [t for t in (x_consistency_timeout, consistency_timeout) if t is not None]
    return QueryAnswerer(
        request,
        get_runtime(request),
        metrics,
        max(tokens) if tokens else None,
        min(limits) if limits else None,
    )


Queries = Annotated[QueryAnswerer, Depends(get_queries)]
