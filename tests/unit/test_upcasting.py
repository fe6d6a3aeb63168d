"""Upcasters turn old stored payloads into the current event class, on read, in the mapper."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import uuid4

import pytest
from pydantic import ValidationError

from cqrskit.errors import UnknownEventType
from cqrskit.messages import DomainEvent
from cqrskit.store.mapper import deserialize, serialize
from cqrskit.upcasting import UpcasterRegistry, upcasters

AT = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


class UpcastUnitRenamed(DomainEvent):
    """v1 had ``title``; v2 calls it ``name``; v3 adds ``tags`` (no default)."""

    schema_version: ClassVar[int] = 3

    name: str
    tags: list[str]


@pytest.fixture
def steps() -> Iterator[None]:
    upcasters.register("UpcastUnitRenamed", 1, lambda d: {"name": d.pop("title"), **d})
    upcasters.register("UpcastUnitRenamed", 2, lambda d: {**d, "tags": []})
    yield
    upcasters.unregister("UpcastUnitRenamed", 1)
    upcasters.unregister("UpcastUnitRenamed", 2)


def _read(schema_version: int, data: str | dict[str, Any]) -> DomainEvent:
    return deserialize(
        event_type="UpcastUnitRenamed",
        schema_version=schema_version,
        data=data,
        metadata='{"user_id": "alice"}',
        event_id=uuid4(),
        stream_id="thing-1",
        version=4,
        occurred_at=AT,
    )


@pytest.mark.usefixtures("steps")
@pytest.mark.parametrize(
    ("stored", "data"),
    [
        (1, '{"title": "Lamp"}'),
        (1, {"title": "Lamp"}),
        (2, '{"name": "Lamp"}'),
        (3, '{"name": "Lamp", "tags": []}'),
    ],
)
def test_old_versions_read_as_the_current_class(stored: int, data: str | dict[str, Any]) -> None:
    event = _read(stored, data)
    assert isinstance(event, UpcastUnitRenamed)
    assert (event.name, event.tags, event.version) == ("Lamp", [], 4)
    assert event.metadata.user_id == "alice"


def test_without_upcasters_an_old_shape_does_not_validate() -> None:
    with pytest.raises(ValidationError):
        _read(1, '{"title": "Lamp"}')


@pytest.mark.usefixtures("steps")
def test_upcaster_cannot_change_the_envelope() -> None:
    event = _read(2, '{"name": "Lamp", "version": 99, "stream_id": "other"}')
    assert (event.version, event.stream_id) == (4, "thing-1")


def test_newer_stored_version_than_the_code_is_refused() -> None:
    with pytest.raises(UnknownEventType):
        _read(4, '{"name": "Lamp", "tags": []}')


def test_current_events_round_trip_on_the_fast_path() -> None:
    event = UpcastUnitRenamed(name="Lamp", tags=["a"], occurred_at=AT, stream_id="thing-1")
    s = serialize(event)
    assert s.schema_version == 3
    assert json.loads(s.data) == {"name": "Lamp", "tags": ["a"]}
    back = deserialize(
        event_type=s.event_type,
        schema_version=s.schema_version,
        data=s.data,
        metadata=s.metadata,
        event_id=s.event_id,
        stream_id="thing-1",
        version=1,
        occurred_at=s.occurred_at,
    )
    assert back == event.model_copy(update={"version": 1})


def test_registry_rules() -> None:
    registry = UpcasterRegistry()
    registry.register("E", 2, lambda d: {**d, "b": 1})
    with pytest.raises(ValueError, match="already"):
        registry.register("E", 2, lambda d: d)
    with pytest.raises(ValueError, match="start at 1"):
        registry.register("E", 0, lambda d: d)
    assert registry.applies("E", 1, 3)
    assert not registry.applies("E", 1, 2)  # only a step from 2 exists
    assert not registry.applies("E", 3, 3)
    assert not registry.applies("F", 1, 3)
    assert registry.upcast("E", 1, 3, {"a": 0}) == {"a": 0, "b": 1}
    registry.register("E", 1, lambda d: [d])  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="did not return a dict"):
        registry.upcast("E", 1, 3, {})
