"""Turn events into storable parts and back: type name, schema version, JSON payload.

Reading is the hot path of every projection catch-up, so an event is rebuilt with one call
into pydantic's Rust JSON parser: the stored payload object gets the envelope fields appended
(text concatenation, no intermediate ``dict``) and the event class validates the result,
nested metadata included. An event stored at an older ``schema_version`` for which
upcasters are registered (:mod:`cqrskit.upcasting`) takes the slower path: its payload is
decoded to a ``dict``, upcast, and encoded again before that same parse.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

from cqrskit.errors import UnknownEventType
from cqrskit.messages import ENVELOPE_FIELDS, DomainEvent, event_class
from cqrskit.upcasting import upcasters

__all__ = ["SerializedEvent", "deserialize", "serialize"]

_dumps = json.dumps
_PAYLOAD_EXCLUDE = set(ENVELOPE_FIELDS)


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
        data=event.__pydantic_serializer__.to_json(event, exclude=_PAYLOAD_EXCLUDE).decode(),
        metadata=event.metadata.model_dump_json(exclude_none=True),
        occurred_at=event.occurred_at,
    )


def _string_json(value: str) -> str:
    # Stream ids rarely need escaping; quoting them directly skips the encoder.
    if '"' not in value and "\\" not in value and value.isprintable():
        return f'"{value}"'
    return _dumps(value)


def _object_text(value: str | dict[str, Any]) -> str:
    return value if isinstance(value, str) else _dumps(value, separators=(",", ":"))


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

    ``data`` and ``metadata`` are JSON object texts (or already decoded objects). A payload
    stored at an older schema version passes through the registered upcasters. Raises
    :class:`~cqrskit.errors.UnknownEventType` for an unregistered type or a schema version
    newer than the class knows, and ``pydantic.ValidationError`` for a payload that does not
    fit the class.
    """
    cls = event_class(event_type)
    if schema_version > cls.schema_version:
        raise UnknownEventType(
            f"{event_type} schema version {schema_version} is newer than this code"
        )
    if schema_version != cls.schema_version and upcasters.applies(
        event_type, schema_version, cls.schema_version
    ):
        decoded = json.loads(data) if isinstance(data, str) else dict(data)
        data = upcasters.upcast(event_type, schema_version, cls.schema_version, decoded)
    payload = data if isinstance(data, str) else _object_text(data)
    head = payload[:-1] if payload[-1:] == "}" else payload.rstrip()[:-1]
    if head[-1:].isspace():
        head = head.rstrip()
    # The envelope goes last: with duplicate keys the last one wins, so a payload can never
    # override the id, stream or version the store recorded.
    at = occurred_at if isinstance(occurred_at, str) else occurred_at.isoformat()
    text = (
        f'{head}{"" if head == "{" else ","}"event_id":"{event_id}",'
        f'"stream_id":{_string_json(stream_id)},"version":{int(version)},'
        f'"occurred_at":"{at}","metadata":{_object_text(metadata)}}}'
    )
    event: DomainEvent = cls.__pydantic_validator__.validate_json(text)
    return event
