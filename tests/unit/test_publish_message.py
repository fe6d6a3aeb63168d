"""The integration-event wire format: subjects, body, and the way back to event classes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

import pytest
from pydantic import ValidationError

from cqrskit.errors import UnknownEventType
from cqrskit.messages import DomainEvent, EventMetadata
from cqrskit.publish.message import (
    check_subject_prefix,
    decode_event,
    encode_event,
    event_subject,
)


class Charged(DomainEvent):
    event_type = "tests.publish.Charged"

    amount: Decimal
    note: str


def _charged() -> Charged:
    return Charged(
        event_id=UUID("00000000-0000-4000-8000-000000000007"),
        stream_id="card-1",
        version=2,
        occurred_at=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        metadata=EventMetadata(user_id="u-1"),
        amount=Decimal("10.10"),
        note='quote " and \\ backslash',
    )


@pytest.mark.parametrize(
    ("event_type", "subject"),
    [
        ("OrderCreated", "p.OrderCreated"),
        ("billing.InvoiceSent", "p.billing.InvoiceSent"),
        ("with space*and>wild", "p.with_space_and_wild"),
        ("a..b.", "p.a._.b._"),
        ("ümlaut", "p._mlaut"),
    ],
)
def test_event_types_become_valid_subjects(event_type: str, subject: str) -> None:
    assert event_subject("p", event_type) == subject


@pytest.mark.parametrize("prefix", ["", "a.>", "a.*", "a..b", "a b", ".a"])
def test_prefixes_with_wildcards_or_empty_tokens_are_rejected(prefix: str) -> None:
    with pytest.raises(ValueError, match="subject prefix"):
        check_subject_prefix(prefix)


def test_body_is_envelope_plus_payload_json() -> None:
    body = json.loads(encode_event(_charged()))
    assert body == {
        "event_id": "00000000-0000-4000-8000-000000000007",
        "event_type": "tests.publish.Charged",
        "schema_version": 1,
        "stream_id": "card-1",
        "version": 2,
        "occurred_at": "2024-01-02T03:04:05+00:00",
        "metadata": {"user_id": "u-1"},
        "data": {"amount": "10.10", "note": 'quote " and \\ backslash'},
    }


def test_decoding_rebuilds_the_registered_event_exactly() -> None:
    event = _charged()
    assert decode_event(encode_event(event)).to_domain_event() == event


def test_unknown_types_and_malformed_bodies_are_errors() -> None:
    body = json.loads(encode_event(_charged()))
    body["event_type"] = "tests.publish.NobodyKnowsMe"
    with pytest.raises(UnknownEventType):
        decode_event(json.dumps(body).encode()).to_domain_event()
    with pytest.raises(ValidationError):
        decode_event(b'{"event_id": "not a uuid"}')
