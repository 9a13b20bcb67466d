"""A ``Message`` as AMQP properties and body, and back.

``message_id`` is the AMQP ``message_id`` property, the manifest is ``type``,
the metadata are the AMQP headers, the serializer id is the header
``x-melange-serializer``; every message is persistent (``delivery_mode`` 2).
On the way back, the broker's own headers (``x-death``…) are dropped and the
receive count is rebuilt from the quorum queue's ``x-delivery-count`` plus
the receives melange carried over in ``x-melange-receives`` when it put a
message back as a new one (a delayed release).
"""

from __future__ import annotations

from typing import Any

from melange.backends.rabbitmq_consumer import DELIVERY_COUNT, RECEIVES, Delivery, Receipt
from melange.backends.rabbitmq_publisher import Outgoing
from melange.exceptions import MissingExtraError
from melange.models import Message, _unchecked, new_message_id

try:
    import pika
except ImportError as e:  # pragma: no cover - depends on the environment
    raise MissingExtraError("pika", "rabbitmq") from e

__all__ = ["SERIALIZER", "outgoing", "receipt_of", "to_message"]

SERIALIZER = "x-melange-serializer"
_NOT_METADATA = frozenset(
    {
        DELIVERY_COUNT,
        RECEIVES,
        SERIALIZER,
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)
_PERSISTENT = 2


def outgoing(
    message: Message,
    exchange: str,
    routing_key: str,
    *,
    mandatory: bool,
    receives: int = 0,
    extra_headers: dict[str, Any] | None = None,
) -> Outgoing:
    """Return what publishing ``message`` sends; ``receives`` carries its receive count over."""
    headers: dict[str, Any] = dict(message.metadata) if message.metadata else {}
    if extra_headers:
        headers.update(extra_headers)
    if message.serializer_id is not None:
        headers[SERIALIZER] = message.serializer_id
    if receives:
        headers[RECEIVES] = receives
    properties = pika.BasicProperties(
        delivery_mode=_PERSISTENT,
        message_id=message.message_id,
        type=message.manifest,
        headers=headers or None,
    )
    # surrogateescape: bytes that were not UTF-8 when received go out unchanged.
    body = message.content.encode("utf-8", "surrogateescape")
    return exchange, routing_key, body, properties, mandatory


def to_message(receipt: Receipt, delivery: Delivery) -> Message:
    """Rebuild the message of a delivery, with its receive count and receipt."""
    _, redelivered, properties, body = delivery
    headers = properties.headers
    metadata: dict[str, str] = {}
    serializer_id = None
    earlier = 0
    count: Any = None
    if headers:
        for key, value in headers.items():
            if key in _NOT_METADATA:
                if key == DELIVERY_COUNT:
                    count = value
                elif key == SERIALIZER:
                    serializer_id = int(value)
                elif key == RECEIVES:
                    earlier = int(value)
                continue
            metadata[key] = value if type(value) is str else _text(value)
    if count is None:  # a classic queue has only a redelivered flag
        count = 1 if redelivered else 0
    return _unchecked(
        body.decode("utf-8", "surrogateescape"),
        properties.message_id or new_message_id(),
        metadata,
        serializer_id,
        properties.type,
        earlier + int(count) + 1,
        receipt,
    )


def receipt_of(message: Message) -> Receipt:
    """Return the receipt of a received message.

    Raises:
        ValueError: the message was not received from a RabbitMQ backend.
    """
    receipt = message.receipt
    if not isinstance(receipt, Receipt):
        raise ValueError("expected a message received from a RabbitMQBackend")
    return receipt


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return str(value)
