"""Integration events on NATS JetStream: a checkpointed publisher and a consumer helper.

See ``docs/publishing.md``. :class:`NatsPublisher` sends every event of the log to
``<prefix>.<event type>`` with ``Nats-Msg-Id`` set to the event id; :class:`JetStreamConsumer`
applies those messages to a projection in another service, exactly once.
"""

from cqrskit.publish.consumer import JetStreamConsumer
from cqrskit.publish.message import (
    MSG_ID_HEADER,
    IntegrationEvent,
    decode_event,
    encode_event,
    event_subject,
)
from cqrskit.publish.nats import DEFAULT_DUPLICATE_WINDOW, NatsPublisher, PublishError

__all__ = [
    "DEFAULT_DUPLICATE_WINDOW",
    "MSG_ID_HEADER",
    "IntegrationEvent",
    "JetStreamConsumer",
    "NatsPublisher",
    "PublishError",
    "decode_event",
    "encode_event",
    "event_subject",
]


def __dir__() -> list[str]:
    return list(__all__)
