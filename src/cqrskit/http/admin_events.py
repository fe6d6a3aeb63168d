"""Operator endpoints to browse the event store page by page.

- ``GET /admin/events?after=<token>&limit=<1..500, default 50>``: the global log after a
  consistency token (from the start without one): ``{"items", "next", "head"}``. ``next``
  is the token to pass as ``after`` for the following page, ``null`` when this page was
  short (nothing more was readable); ``head`` is the log's last readable position.
- ``GET /admin/streams/{stream_id}/events?after_version=0&limit=<1..500, default 100>``:
  one stream's history ``{"stream_id", "items", "next_version"}``; ``next_version`` is the
  ``after_version`` of the following page, ``null`` when this page was short. 404 when the
  stream has no events.

Every read is one bounded query (``read_all`` / ``read_stream_records`` with a limit), so a
page costs the same at any depth of a log of millions of events. An event is ``{"position",
"stream_id", "version", "event_type", "event_id", "occurred_at", "recorded_at",
"metadata": {"user_id", "causation_id", "correlation_id"}, "data"}``, ``data`` being the
payload fields as JSON (money as decimal strings). Malformed tokens, versions, limits and
stream ids are 422 problems that do not quote the input.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import AfterValidator, StringConstraints

from cqrskit.errors import NotFound
from cqrskit.http._admin import app_runtime
from cqrskit.http.problems import problem
from cqrskit.messages import ENVELOPE_FIELDS, LOG_START, LogPosition, RecordedEvent
from cqrskit.store.protocol import StreamPager

__all__ = ["event_json", "router"]

router = APIRouter()
"""Routes relative to ``/admin`` (included by :mod:`cqrskit.http.admin`)."""

MAX_PAGE = 500
_MAX_INT64 = 2**63 - 1
_MAX_VERSION = 2**31 - 1
_MAX_STREAM_ID = 1000
_PAYLOAD_EXCLUDE = set(ENVELOPE_FIELDS)


def _token(value: str) -> str:
    position = LogPosition.parse(value)
    if max(position) > _MAX_INT64:
        raise ValueError("consistency token out of range")
    return value


_Token = Annotated[str, StringConstraints(max_length=41), AfterValidator(_token)]
# Control characters are never part of a stream id here (PostgreSQL text refuses NUL).
_StreamId = Annotated[
    str, Path(min_length=1, max_length=_MAX_STREAM_ID, pattern=r"^[^\x00-\x1f\x7f]+$")
]


def event_json(record: RecordedEvent) -> dict[str, Any]:
    """One stored event as the admin API shows it."""
    event, metadata = record.event, record.event.metadata
    return {
        "position": record.position.token(),
        "stream_id": event.stream_id,
        "version": event.version,
        "event_type": event.event_type,
        "event_id": str(event.event_id),
        "occurred_at": event.occurred_at.isoformat(),
        "recorded_at": record.recorded_at.isoformat(),
        "metadata": {
            "user_id": metadata.user_id,
            "causation_id": None if metadata.causation_id is None else str(metadata.causation_id),
            "correlation_id": (
                None if metadata.correlation_id is None else str(metadata.correlation_id)
            ),
        },
        "data": event.model_dump(mode="json", exclude=_PAYLOAD_EXCLUDE),
    }


@router.get("/events")
async def events(
    request: Request,
    after: Annotated[_Token | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> dict[str, Any]:
    """One page of the global log after ``after``, oldest first."""
    store = app_runtime(request).backend.store
    start = LOG_START if after is None else LogPosition.parse(after)
    page = await store.read_all(after=start, limit=limit)
    head = await store.head()
    return {
        "items": [event_json(record) for record in page],
        "next": page[-1].position.token() if len(page) == limit else None,
        "head": max(head, page[-1].position).token() if page else head.token(),
    }


@router.get("/streams/{stream_id:path}/events", response_model=None)
async def stream_events(
    request: Request,
    stream_id: _StreamId,
    after_version: Annotated[int, Query(ge=0, le=_MAX_VERSION)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> Any:
    """One page of a stream's history after ``after_version``, in version order."""
    store = app_runtime(request).backend.store
    if not isinstance(store, StreamPager):
        return problem(501, "this event store cannot page a stream", kind="not-implemented")
    page = await store.read_stream_records(stream_id, after_version=after_version, limit=limit)
    if not page and await store.stream_version(stream_id) == 0:
        raise NotFound("stream", stream_id)
    return {
        "stream_id": stream_id,
        "items": [event_json(record) for record in page],
        "next_version": page[-1].event.version if len(page) == limit else None,
    }
