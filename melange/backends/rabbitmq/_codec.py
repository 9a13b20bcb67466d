"""A ``Message`` as AMQP properties and body, and back; no I/O.

``message_id`` is the AMQP ``message_id`` property, the manifest is ``type``
(and, published to a topic, the routing key: ``routing_key_of``, which the
``filter_events`` exchanges match), the metadata are the AMQP headers, the
serializer id is the header ``x-melange-serializer``; every message is
persistent (``delivery_mode`` 2). On the way back, the broker's own headers
(``x-death``…) are dropped and the receive count is rebuilt from the quorum
queue's ``x-delivery-count`` plus the receives melange carried over in
``x-melange-receives`` when it put a message back as a new one (a delayed
release). That header is written as ``"<receives> <queue>"`` and trusted only
for the queue it names; other ``x-melange-`` headers a producer set arrive as
``x-foreign-`` ones (``disowned``).

Each delivery is decoded on its own: what cannot be read (a count that is not
an integer, text that is not UTF-8) makes that message ``undecodable``, never
an error. A message without ``message_id`` gets one derived from what stays
the same across its redeliveries (``foreign_id``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import uuid
from typing import TYPE_CHECKING, Any

from melange.backends.decoding import (
    SERIALIZER_HEADER,
    binary_in_json,
    bytes_of,
    decoded_or_undecodable,
    disowned,
    foreign_name,
    header_text,
    integer_of,
    original_form,
    text_of,
    undecodable,
    warn_foreign_once,
)
from melange.backends.rabbitmq._confirms import OnReturn, Outgoing
from melange.exceptions import MissingExtraError, UndecodableMessageError
from melange.models import Message, unchecked_message

try:
    import pika
except ImportError as e:  # pragma: no cover - depends on the environment
    raise MissingExtraError("pika", "rabbitmq") from e

if TYPE_CHECKING:
    from melange.backends.rabbitmq._subscription import Receipt

__all__ = [
    "DELIVERY_COUNT",
    "RECEIVES",
    "SERIALIZER",
    "Delivery",
    "carried_receives",
    "foreign_id",
    "outgoing",
    "routing_key_of",
    "to_message",
    "uncounted",
]

#: Set by quorum queues: how many times this message was returned to the queue.
DELIVERY_COUNT = "x-delivery-count"
#: Set by melange when it puts a message back as a new one: receives before that.
RECEIVES = "x-melange-receives"
SERIALIZER = SERIALIZER_HEADER
#: A buffered delivery: delivery tag, redelivered flag, exchange, routing key, properties, body.
Delivery = tuple[int, bool, str, str, Any, bytes]

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
#: Headers the broker adds or changes on redelivery and dead-lettering.
_BROKER_SET = frozenset(_NOT_METADATA - {SERIALIZER, RECEIVES})
_OWN_PREFIX = "x-melange-"
_PERSISTENT = 2
_MAX_SHORT_STRING = 255  # bytes: a routing key, like the ``type`` property, is a shortstr
# The namespace of foreign_id's version 5 UUIDs; changing it changes every derived id.
_FOREIGN = uuid.UUID("5f0c1c7e-9a8b-4d2e-8f47-6d656c616e67")


def outgoing(
    message: Message,
    exchange: str,
    routing_key: str,
    *,
    on_return: OnReturn = OnReturn.FAIL,
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
        headers[RECEIVES] = carried_receives(receives, routing_key)
    message_id, manifest = message.message_id, message.manifest
    properties = pika.BasicProperties(
        delivery_mode=_PERSISTENT,
        message_id=message_id if message_id.isascii() else original_form(message_id),
        type=manifest if manifest is None or manifest.isascii() else original_form(manifest),
        headers=_wire_headers(headers) if headers else None,
    )
    # surrogateescape: bytes that were not UTF-8 when received go out unchanged.
    body = message.content.encode("utf-8", "surrogateescape")
    return exchange, routing_key, body, properties, on_return


def routing_key_of(manifest: str | None) -> str:
    """Return the routing key a message with ``manifest`` is published to a topic with.

    The manifest itself, as the ``type`` property carries it; ``""`` for a
    manifest that cannot be a routing key (none, more than 255 bytes of
    UTF-8, or text holding surrogates, sent as bytes), which no
    ``filter_events`` can list: a fanout exchange ignores the key either way.
    """
    if manifest is None:
        return ""
    if manifest.isascii():
        return manifest if len(manifest) <= _MAX_SHORT_STRING else ""
    try:
        size = len(manifest.encode("utf-8"))
    except UnicodeEncodeError:
        return ""
    return manifest if size <= _MAX_SHORT_STRING else ""


def to_message(receipt: Receipt, delivery: Delivery) -> Message:
    """Rebuild the message of a delivery, with its receive count and receipt; never raises.

    A delivery melange cannot fully read comes back ``undecodable``: its
    ``DECODE_ERROR`` header says why and the unreadable header stays, as text.
    """
    return decoded_or_undecodable(
        lambda: _decoded(receipt, delivery), lambda: _fallback(receipt, delivery)
    )


def _fallback(receipt: Receipt, delivery: Delivery) -> tuple[str, str | None, Receipt]:
    """Return what can be read of a delivery whose decoding failed: body and id, no headers."""
    body, message_id = delivery[5], getattr(delivery[4], "message_id", None)
    content = text_of(body)[0] if isinstance(body, bytes) else header_text(body)
    return content, header_text(message_id) if message_id else None, receipt


def _decoded(receipt: Receipt, delivery: Delivery) -> Message:
    _, redelivered, _, routing_key, properties, body = delivery
    headers = properties.headers
    metadata: dict[str, str | bytes] = {}
    problems: list[str] = []
    serializer_id = None
    earlier = 0
    count: int | None = None
    counted = True
    if headers:
        for key, value in headers.items():
            if key in _NOT_METADATA:
                try:
                    if key == DELIVERY_COUNT:
                        count = integer_of(value, key)
                    elif key == SERIALIZER:
                        serializer_id = integer_of(value, key)
                    elif key == RECEIVES:
                        earlier = _receives_carried(value, routing_key, metadata)
                except UndecodableMessageError as e:
                    problems.append(str(e))
                    metadata[key] = header_text(value)
                    counted = counted and key == SERIALIZER
                continue
            if type(value) is str and type(key) is str:
                metadata[key] = value
            else:
                _read_header(key, value, metadata, problems)
    owned = disowned(metadata)
    content, why = text_of(body)
    if why is not None:
        problems.append(f"body is {why}")
    message_id = properties.message_id
    if not message_id:
        message_id = foreign_id(delivery)
    elif type(message_id) is not str:
        message_id, why = text_of(message_id)
        problems.append(f"message_id is {why}")
    manifest = properties.type
    if manifest is not None and type(manifest) is not str:
        manifest, why = text_of(manifest)
        problems.append(f"type is {why}")
    if count is None:  # a classic queue has only a redelivered flag
        count = 1 if redelivered else 0
    receive_count = earlier + count + 1 if counted else 0  # 0: unknown
    if problems:
        reason = "; ".join(problems)
        return undecodable(content, message_id, owned, reason, receive_count, receipt, manifest)
    return unchecked_message(
        content, message_id, owned, serializer_id, manifest, receive_count, receipt
    )


def carried_receives(receives: int, queue: str) -> str:
    """Return the ``x-melange-receives`` value of a message put back into ``queue``."""
    return f"{receives} {queue}"


def _receives_carried(value: Any, queue: Any, metadata: dict[str, str | bytes]) -> int:
    """Return the receives melange carried over into ``queue``; a value it did not write counts 0.

    A producer's value (another queue's, or not melange's form) is kept as
    ``x-foreign-receives``: it must not dead-letter a message on its first receive.
    """
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    if type(text) is str:
        number, _, named = text.partition(" ")
        if named == queue and number.isascii() and number.isdigit() and len(number) <= 9:
            return int(number)
    metadata[foreign_name(RECEIVES)] = header_text(value)
    warn_foreign_once(RECEIVES)
    return 0


def foreign_id(delivery: Delivery) -> str:
    """Return the id of a message published without ``message_id``: the same on every delivery.

    A version 5 UUID of the exchange and routing key it was first published
    with, its properties and headers and its body, leaving out what the
    broker changes on redelivery and dead-lettering (``x-delivery-count``,
    ``x-death``, ``x-first-death-*``, ``x-last-death-*``, ``expiration``) and
    every ``x-melange-`` header: the same id in the queue and its DLQ.
    """
    _, _, exchange, routing_key, properties, body = delivery
    stable = copy.copy(properties)
    stable.expiration = None  # dead-lettering on a message's TTL removes it
    headers = properties.headers
    if headers:
        exchange, routing_key = _first_published(headers, exchange, routing_key)
        # Sorted, so that the id does not depend on where the broker adds its headers.
        stable.headers = {
            key: headers[key] for key in sorted(headers, key=_raw) if _stable_header(key)
        }
    digest = hashlib.sha1(_FOREIGN.bytes, usedforsecurity=False)
    for part in (_raw(exchange), _raw(routing_key)):
        digest.update(len(part).to_bytes(2, "big"))
        digest.update(part)
    # pika's encoding of the properties: length-prefixed and in a fixed order.
    digest.update(b"".join(stable.encode()))
    digest.update(body)
    return str(uuid.UUID(bytes=digest.digest()[:16], version=5))


def _stable_header(key: str | bytes) -> bool:
    name = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
    return name not in _BROKER_SET and not name.startswith(_OWN_PREFIX)


def _first_published(headers: dict[Any, Any], exchange: Any, routing_key: Any) -> tuple[Any, Any]:
    """Return the exchange and routing key a dead-lettered message was first published with.

    That is the ``x-death`` entry of the queue ``x-first-death-queue`` names;
    anything missing or not of the broker's form leaves the delivery's own.
    """
    deaths, first_queue = headers.get("x-death"), headers.get("x-first-death-queue")
    if not isinstance(deaths, list) or first_queue is None:
        return exchange, routing_key
    for death in deaths:
        if isinstance(death, dict) and death.get("queue") == first_queue:
            keys = death.get("routing-keys")
            first_key = keys[0] if isinstance(keys, list) and keys else None
            first_exchange = death.get("exchange")
            if isinstance(first_exchange, str | bytes) and isinstance(first_key, str | bytes):
                return first_exchange, first_key
    return exchange, routing_key


def uncounted(delivery: Delivery, queue: str) -> Any:
    """Return the properties of a delivery put back into ``queue`` as new, receives carried over.

    A message without ``message_id`` keeps the id it was known by.
    """
    properties = delivery[4]
    headers = dict(properties.headers or {})
    try:
        count = integer_of(headers.pop(DELIVERY_COUNT, 0) or 0, DELIVERY_COUNT)
    except UndecodableMessageError:
        count = 0  # the publisher's, passed on until the broker counts a return
    earlier = _receives_carried(headers[RECEIVES], delivery[3], {}) if RECEIVES in headers else 0
    if earlier + count:
        headers[RECEIVES] = carried_receives(earlier + count, queue)
    copied = copy.copy(properties)
    copied.headers = headers or None
    if not copied.message_id:
        copied.message_id = foreign_id(delivery)
    return copied


def _read_header(
    key: Any, value: Any, metadata: dict[str, str | bytes], problems: list[str]
) -> None:
    """Add a header that is not plain text to ``metadata``, noting a name that is not UTF-8.

    A byte array (or a long string that is not UTF-8) stays ``bytes``; a
    table or array becomes JSON text; any other field type its text.
    """
    if type(key) is not str:
        key, why = text_of(key)
        problems.append(f"header name {key[:80]!r} is {why}")
    if isinstance(value, bytes | bytearray):
        metadata[key] = bytes(value)
    elif isinstance(value, dict | list):
        try:
            metadata[key] = json.dumps(_plain(value), ensure_ascii=False, separators=(",", ":"))
        except (ValueError, RecursionError) as e:
            metadata[key] = header_text(value)
            problems.append(f"header {key[:80]!r} is {type(e).__name__}: {e}")
    else:
        metadata[key] = header_text(value)


def _plain(value: Any) -> Any:
    """Return a nested header value as JSON data: text, numbers, booleans, null.

    Nested bytes become their text if UTF-8, else ``{"base64": …}``.
    """
    if isinstance(value, dict):
        return {header_text(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if value is None or type(value) in (bool, int, float, str):
        return value
    return _plain_text(value)


def _plain_text(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        text, why = text_of(bytes(value))
        return text if why is None else binary_in_json(bytes(value))
    return header_text(value)


def _raw(text: str | bytes) -> bytes:
    """Return the bytes pika read ``text`` from."""
    return text if isinstance(text, bytes) else bytes_of(text)


def _wire_headers(headers: dict[str, Any]) -> dict[Any, Any]:
    for key, value in headers.items():
        if not key.isascii() or (type(value) is str and not value.isascii()):
            return {
                original_form(k): original_form(v) if type(v) is str else v
                for k, v in headers.items()
            }
    return headers
