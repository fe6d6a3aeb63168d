"""The wire format of integration events: subjects, headers and the JSON body.

Pure functions, no I/O. An event of type ``OrderCreated`` goes to the subject
``<prefix>.OrderCreated``; a dotted type such as ``billing.InvoiceSent`` keeps its dots as
subject levels (``<prefix>.billing.InvoiceSent``). Any character that is not a letter, digit,
``_`` or ``-`` becomes ``_`` (NATS subjects forbid whitespace, ``*`` and ``>``), and an empty
level becomes ``_``. The header ``Nats-Msg-Id`` carries the event id. The body is one JSON
object::

    {"event_id": "...", "event_type": "OrderCreated", "schema_version": 1,
     "stream_id": "order-...", "version": 3, "occurred_at": "2024-05-01T12:00:00Z",
     "metadata": {"causation_id": "...", ...}, "data": {...payload fields...}}
"""

from __future__ import annotations

import json
import re
from typing import Any
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict

from cqrskit.messages import DomainEvent
from cqrskit.store.mapper import deserialize, serialize

__all__ = [
    "MSG_ID_HEADER",
    "IntegrationEvent",
    "check_subject_prefix",
    "decode_event",
    "encode_event",
    "event_subject",
]

MSG_ID_HEADER = "Nats-Msg-Id"
"""The header JetStream deduplicates on; it carries the event id."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")
_TOKEN = re.compile(r"[A-Za-z0-9_\-]+")


def check_subject_prefix(prefix: str) -> str:
    """Return ``prefix`` if it is a literal subject (dot-separated tokens, no wildcards).

    Raises ``ValueError`` otherwise.
    """
    if not prefix or not all(_TOKEN.fullmatch(token) for token in prefix.split(".")):
        raise ValueError(
            f"subject prefix {prefix!r} must be dot-separated tokens of letters, digits, _ or -"
        )
    return prefix


def event_subject(prefix: str, event_type: str) -> str:
    """Return the subject an event type is published to: ``<prefix>.<sanitized type>``."""
    tokens = [_UNSAFE.sub("_", token) or "_" for token in event_type.split(".")]
    return ".".join([prefix, *tokens])


def encode_event(event: DomainEvent) -> bytes:
    """Render an event as the integration-event JSON body (see the module docstring)."""
    parts = serialize(event)
    head = json.dumps(
        {
            "event_id": str(parts.event_id),
            "event_type": parts.event_type,
            "schema_version": parts.schema_version,
            "stream_id": event.stream_id,
            "version": event.version,
            "occurred_at": parts.occurred_at.isoformat(),
        },
        separators=(",", ":"),
    )
    # The payload and metadata are already JSON (pydantic's rendering, Decimals exact).
    return f'{head[:-1]},"metadata":{parts.metadata},"data":{parts.data}}}'.encode()


class IntegrationEvent(BaseModel):
    """A decoded integration event: the envelope and the payload as plain JSON values."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: UUID
    event_type: str
    schema_version: int
    stream_id: str
    version: int
    occurred_at: AwareDatetime
    metadata: dict[str, Any]
    data: dict[str, Any]

    def to_domain_event(self) -> DomainEvent:
        """Rebuild the registered event class for ``event_type``.

        Raises :class:`~cqrskit.errors.UnknownEventType` when no class is registered under
        that name, or the schema version is newer than the class.
        """
        return deserialize(
            event_type=self.event_type,
            schema_version=self.schema_version,
            data=self.data,
            metadata=self.metadata,
            event_id=self.event_id,
            stream_id=self.stream_id,
            version=self.version,
            occurred_at=self.occurred_at,
        )


def decode_event(body: bytes) -> IntegrationEvent:
    """Parse an integration-event body; raise ``pydantic.ValidationError`` when malformed."""
    return IntegrationEvent.model_validate_json(body)
