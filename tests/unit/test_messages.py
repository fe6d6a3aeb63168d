"""Messages: frozen pydantic models, the event type registry, log positions and tokens."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import ClassVar

import pytest
from pydantic import ValidationError

from cqrskit.errors import UnknownEventType
from cqrskit.messages import (
    LOG_START,
    NIL_UUID,
    Command,
    DomainEvent,
    EventMetadata,
    LogPosition,
    Query,
    event_class,
    registered_event_types,
)

AT = datetime(2024, 1, 1, tzinfo=UTC)


class PriceChanged(DomainEvent):
    event_type = "tests.messages.PriceChanged"

    price: Decimal


class NamedAfterTheClass(DomainEvent):
    pass


class Rename(Command):
    name: str


class FindByName(Query):
    name: str


def test_events_register_under_their_event_type() -> None:
    assert event_class("tests.messages.PriceChanged") is PriceChanged
    assert registered_event_types()["tests.messages.PriceChanged"] is PriceChanged


def test_event_type_defaults_to_the_class_name() -> None:
    assert NamedAfterTheClass.event_type == "NamedAfterTheClass"
    assert event_class("NamedAfterTheClass") is NamedAfterTheClass


def test_unknown_event_type_raises() -> None:
    with pytest.raises(UnknownEventType):
        event_class("tests.messages.NeverDefined")


def test_registry_copy_cannot_change_the_registry() -> None:
    copy = registered_event_types()
    copy.pop("tests.messages.PriceChanged")
    assert event_class("tests.messages.PriceChanged") is PriceChanged


def test_a_second_class_cannot_take_a_registered_event_type() -> None:
    with pytest.raises(TypeError, match="already registered"):

        class Impostor(DomainEvent):
            event_type: ClassVar[str] = "tests.messages.PriceChanged"


def test_messages_are_frozen() -> None:
    event = PriceChanged(price=Decimal("1.00"), occurred_at=AT)
    with pytest.raises(ValidationError):
        event.price = Decimal("2.00")  # type: ignore[misc]
    command = Rename(name="a")
    with pytest.raises(ValidationError):
        command.name = "b"  # type: ignore[misc]


def test_extra_fields_are_forbidden() -> None:
    with pytest.raises(ValidationError):
        Rename.model_validate({"name": "a", "is_admin": True})
    with pytest.raises(ValidationError):
        FindByName.model_validate({"name": "a", "sql": "1=1"})
    with pytest.raises(ValidationError):
        PriceChanged.model_validate({"price": "1", "occurred_at": AT, "extra": 1})


def test_commands_get_fresh_ids_and_an_aware_timestamp() -> None:
    first, second = Rename(name="a"), Rename(name="a")
    assert first.command_id != second.command_id
    assert first.timestamp.tzinfo is not None
    assert first.user_id is None
    assert first.correlation_id is None


def test_naive_timestamps_are_rejected() -> None:
    with pytest.raises(ValidationError):
        Rename(name="a", timestamp=datetime(2024, 1, 1))
    with pytest.raises(ValidationError):
        PriceChanged(price=Decimal(1), occurred_at=datetime(2024, 1, 1))


def test_event_envelope_defaults() -> None:
    event = PriceChanged(price=Decimal("1.10"), occurred_at=AT)
    assert event.event_id == NIL_UUID
    assert event.stream_id == ""
    assert event.version == 0
    assert event.metadata == EventMetadata()
    assert event.schema_version == 1


def test_decimal_payload_survives_json_exactly() -> None:
    event = PriceChanged(price=Decimal("0.30"), occurred_at=AT)
    back = PriceChanged.model_validate_json(event.model_dump_json())
    assert back == event
    assert str(back.price) == "0.30"


def test_log_positions_order_by_transaction_then_position() -> None:
    assert LOG_START < LogPosition(0, 1) < LogPosition(0, 2) < LogPosition(1, 0)
    assert max(LogPosition(5, 1), LogPosition(4, 99)) == LogPosition(5, 1)


@pytest.mark.parametrize("position", [LOG_START, LogPosition(0, 17), LogPosition(2**63, 2**63)])
def test_token_round_trips(position: LogPosition) -> None:
    assert LogPosition.parse(position.token()) == position


def test_token_format() -> None:
    assert LogPosition(12, 345).token() == "12.345"


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "1",
        "1.",
        ".1",
        "-1.2",
        "1.-2",
        "+1.2",
        "1.2.3",
        " 1.2",
        "1.2 ",
        "1.2\n",
        "1_0.2",
        "0x1.2",
        "1e3.2",
        "\u0661.\u0662",  # Arabic-Indic digits
        "².1",  # superscript two
        "1.\uff12",  # fullwidth digit
        "1.2; DROP TABLE events",
        "'1'.'2'",
        "9" * 30 + "." + "9" * 30,
        "1" * 10_000 + ".1",
    ],
)
def test_parse_rejects_malformed_tokens(token: str) -> None:
    with pytest.raises(ValueError, match="malformed consistency token"):
        LogPosition.parse(token)
