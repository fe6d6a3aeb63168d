"""Turn events into storable parts and back: type name, schema version, JSON payload."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

from cqrskit.errors import UnknownEventType
from cqrskit.messages import ENVELOPE_FIELDS, DomainEvent, EventMetadata, event_class

__all__ = ["SerializedEvent", "deserialize", "serialize"]


class SerializedEvent(NamedTuple):
    """The columns an adapter stores for one event."""

    event_id: UUID
    event_type: str
    schema_version: int
    data: str
    metadata: str
    occurred_at: datetime


def serialize(event: DomainEvent) -> SerializedEvent:
    """Split an event into its envelope columns and JSON payload and metadata."""
    return SerializedEvent(
        event_id=event.event_id,
        event_type=event.event_type,
        schema_version=event.schema_version,
        data=event.model_dump_json(exclude=ENVELOPE_FIELDS),  # type: ignore[arg-type]
        metadata=event.metadata.model_dump_json(exclude_none=True),
        occurred_at=event.occurred_at,
    )


def deserialize(
    *,
    event_type: str,
    schema_version: int,
    data: str | dict[str, Any],
    metadata: str | dict[str, Any],
    event_id: UUID | str,
    stream_id: str,
    version: int,
    occurred_at: datetime | str,
) -> DomainEvent:
    """Rebuild the registered event class from stored columns.

    Raises :class:`~cqrskit.errors.UnknownEventType` for an unregistered type or a schema
    version newer than the class knows.
    """
    cls = event_class(event_type)
    if schema_version > cls.schema_version:
        raise UnknownEventType(
            f"{event_type} schema version {schema_version} is newer than this code"
        )
    payload = json.loads(data) if isinstance(data, str) else dict(data)
    meta = json.loads(metadata) if isinstance(metadata, str) else metadata
    payload["event_id"] = event_id
    payload["stream_id"] = stream_id
    payload["version"] = version
    payload["occurred_at"] = occurred_at
    payload["metadata"] = EventMetadata.model_validate(meta)
    return cls.model_validate(payload)
