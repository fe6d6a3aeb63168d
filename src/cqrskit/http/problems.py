"""RFC 9457 problem details for every error the HTTP layer answers.

The one place where the error tree of :mod:`cqrskit.errors` meets HTTP status codes:

=====================================  ======  ==========================================
error                                  status  body
=====================================  ======  ==========================================
``RuleViolation``, other               400     the domain's message
``CommandRejected``
``NotFound``                           404     ``"<kind> not found"``
``InvalidState``                       409     the domain's message
``ConcurrencyError``                   409     ``current_version`` when known
``CommandInProgress``                  409     same idempotency key still running
``PreconditionFailed``                 412     stale ``If-Match``; ``current_version``
``IdempotencyKeyReused``               422     same idempotency key, another request
``OperationalError``                   503     generic, with ``Retry-After``
request validation, malformed JSON     422     each error's ``loc``, ``msg`` and ``type``
unknown route / method                 404/405
anything else                          500     generic (the error is logged, not shown)
=====================================  ======  ==========================================

A problem body never contains the submitted input, validation context values, stack traces,
SQL, constraint names or file paths.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cqrskit.errors import (
    CommandInProgress,
    CommandRejected,
    ConcurrencyError,
    CqrskitError,
    IdempotencyKeyReused,
    InvalidState,
    NotFound,
    OperationalError,
    PreconditionFailed,
)

__all__ = [
    "MAX_REPORTED_ERRORS",
    "PROBLEM_JSON",
    "RETRY_AFTER_SECONDS",
    "error_problem",
    "install_problem_handlers",
    "problem",
    "status_for",
    "validation_errors",
]

PROBLEM_JSON = "application/problem+json"
MAX_REPORTED_ERRORS = 20
"""A request with many invalid fields gets at most this many entries in ``errors``."""
RETRY_AFTER_SECONDS = 2

_log = logging.getLogger("cqrskit.http")

_SAFE_LOC = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
# Pydantic messages of these types quote part of the input; they get a fixed message.
_QUOTING_TYPES = {"uuid_parsing": "Input should be a valid UUID"}


def problem(
    status: int,
    detail: str | None = None,
    *,
    kind: str | None = None,
    headers: Mapping[str, str] | None = None,
    members: Mapping[str, Any] | None = None,
) -> JSONResponse:
    """Build an ``application/problem+json`` response.

    ``kind`` names the problem type (``urn:cqrskit:problem:<kind>``); without it the type is
    ``about:blank`` and the title is the status phrase. ``members`` are added to the body.
    """
    phrase = HTTPStatus(status).phrase
    body: dict[str, Any] = {
        "type": f"urn:cqrskit:problem:{kind}" if kind else "about:blank",
        "title": phrase,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    if members:
        body.update(members)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


# Most specific first: the first class an error is an instance of decides status and kind.
_PROBLEMS: tuple[tuple[type[CqrskitError], int, str], ...] = (
    (NotFound, 404, "not-found"),
    (ConcurrencyError, 409, "concurrency-conflict"),
    (CommandInProgress, 409, "command-in-progress"),
    (PreconditionFailed, 412, "precondition-failed"),
    (IdempotencyKeyReused, 422, "idempotency-key-reused"),
    (InvalidState, 409, "invalid-state"),
    (CommandRejected, 400, "rule-violation"),
    (OperationalError, 503, "unavailable"),
)


def _problem_for(exc: CqrskitError) -> tuple[int, str]:
    for cls, status, kind in _PROBLEMS:
        if isinstance(exc, cls):
            return status, kind
    return 500, "internal-error"


def status_for(exc: CqrskitError) -> int:
    """Return the HTTP status for a framework error (500 for anything unmapped)."""
    return _problem_for(exc)[0]


async def _cqrskit_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, CqrskitError):
        return await _unhandled(request, exc)
    status, kind = _problem_for(exc)
    if isinstance(exc, NotFound):
        return problem(status, f"{exc.kind} not found", kind=kind)
    if isinstance(exc, ConcurrencyError):
        extra = {} if exc.current_version is None else {"current_version": exc.current_version}
        return problem(
            status, "the resource was changed concurrently; retry", kind=kind, members=extra
        )
    if isinstance(exc, PreconditionFailed):
        return problem(
            status,
            "the resource has changed since the version given in If-Match",
            kind=kind,
            members={"current_version": exc.current_version},
        )
    if isinstance(exc, CommandInProgress | IdempotencyKeyReused):
        return problem(status, str(exc), kind=kind)
    if isinstance(exc, CommandRejected):
        return problem(status, str(exc), kind=kind)
    if isinstance(exc, OperationalError):
        _log.warning("%s %s: database unavailable: %s", request.method, request.url.path, exc)
        return problem(
            status,
            "the service is temporarily unavailable; retry later",
            kind=kind,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    return await _unhandled(request, exc)


async def error_problem(request: Request, exc: CqrskitError) -> JSONResponse:
    """The problem response the handlers give ``exc`` (for routes that add headers to it)."""
    return await _cqrskit_error(request, exc)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    _log.error(
        "%s %s failed: %s", request.method, request.url.path, type(exc).__name__, exc_info=exc
    )
    return problem(500, "an internal error occurred", kind="internal-error")


def _safe_loc(loc: Sequence[Any]) -> list[str | int]:
    out: list[str | int] = []
    for part in loc:
        if (isinstance(part, int) and not isinstance(part, bool)) or (
            isinstance(part, str) and _SAFE_LOC.match(part)
        ):
            out.append(part)
        else:
            out.append("?")
    return out


def _safe_msg(error: Mapping[str, Any]) -> str:
    kind = str(error.get("type", ""))
    if kind in _QUOTING_TYPES:
        return _QUOTING_TYPES[kind]
    msg = str(error.get("msg", "invalid value"))
    value = error.get("input")
    if isinstance(value, str) and len(value) >= 3 and value in msg:
        return "Invalid value"
    return msg[:300]


def validation_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Reduce pydantic errors to ``loc``, ``msg`` and ``type`` with no input echoed."""
    out = []
    for error in errors[:MAX_REPORTED_ERRORS]:
        if not isinstance(error, Mapping):
            continue
        out.append(
            {
                "loc": _safe_loc(error.get("loc", ())),
                "msg": _safe_msg(error),
                "type": str(error.get("type", "value_error"))[:64],
            }
        )
    return out


async def _request_validation(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError):
        return await _unhandled(request, exc)
    errors = list(exc.errors())
    detail = "the request is not valid"
    if any(e.get("type") == "json_invalid" for e in errors if isinstance(e, Mapping)):
        detail = "the request body is not valid JSON"
    return problem(
        422,
        detail,
        kind="validation-error",
        members={"errors": validation_errors(errors), "error_count": len(errors)},
    )


_HTTP_DETAILS = {
    400: "the request could not be read",
    404: "no such resource",
    405: "method not allowed on this resource",
    413: "the request body is too large",
}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StarletteHTTPException):
        return await _unhandled(request, exc)
    status = exc.status_code
    # Framework-raised details can quote the request (for example a parse error); use ours.
    detail = _HTTP_DETAILS.get(status)
    if detail is None and isinstance(exc.detail, str) and status < 500:
        detail = exc.detail[:200]
    headers = dict(exc.headers) if exc.headers else None
    return problem(status, detail, headers=headers)


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error ``app`` answers an RFC 9457 problem document."""
    app.add_exception_handler(RequestValidationError, _request_validation)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(CqrskitError, _cqrskit_error)
    app.add_exception_handler(Exception, _unhandled)
