"""How melange's messages and names look on SNS/SQS: attributes, sizes, batches (no I/O)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from melange.backends.decoding import (
    binary_in_json,
    binary_of_json,
    decoded_or_undecodable,
    disowned,
    header_text,
    integer_of,
    undecodable,
)
from melange.backends.naming import sqs_name
from melange.exceptions import MessageTooLargeError, UndecodableMessageError
from melange.models import Message, new_message_id, unchecked_message

__all__ = [
    "MANIFEST",
    "MAX_ATTRIBUTES",
    "MESSAGE_ID",
    "PACKED_HEADERS",
    "SERIALIZER_ID",
    "attributes_for",
    "batches",
    "check_size",
    "entity_name",
    "is_fifo",
    "message_from",
    "size_of",
]

#: SQS and SNS carry at most 10 message attributes.
MAX_ATTRIBUTES = 10

MANIFEST = "melange.manifest"
SERIALIZER_ID = "melange.serializer_id"
MESSAGE_ID = "melange.message_id"
PACKED_HEADERS = "melange.headers"

#: Attribute name to ``{"DataType": …, "StringValue": str}`` or ``{…, "BinaryValue": bytes}``.
Attributes = dict[str, dict[str, Any]]

# SQS/SNS attribute names: letters, digits, "_", "-", "." (not first, last or doubled),
# at most 256 characters, and not starting with the reserved "AWS." or "Amazon.".
_ATTRIBUTE_NAME = re.compile(
    r"(?!(?i:aws|amazon|melange)\.)[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*", re.ASCII
)
# melange's own attributes: read as text, whatever their type.
_OWN = frozenset({MESSAGE_ID, MANIFEST, SERIALIZER_ID, PACKED_HEADERS})
# The characters SQS accepts in a body or a string attribute.
_VALID_TEXT = re.compile("[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*")


def entity_name(name: str, *, topic: bool = False) -> str:
    """Return the SNS topic or SQS queue name for ``name`` (``orders.created``: ``orders_created``).

    The rule is ``melange.backends.naming.sqs_name``'s.

    Raises:
        InvalidNameError: a character SQS refuses other than ``.``, or too long.
    """
    return sqs_name(name, topic=topic)


def is_fifo(queue_url_or_arn: str) -> bool:
    """Return whether a queue URL or topic ARN names a FIFO queue or topic."""
    return queue_url_or_arn.endswith(".fifo")


def _string(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def _binary(value: bytes) -> dict[str, Any]:
    return {"DataType": "Binary", "BinaryValue": value}


def _attribute(value: str | bytes) -> dict[str, Any]:
    return _binary(value) if isinstance(value, bytes) else _string(value)


def _fits_one_each(headers: Mapping[str, str | bytes], room: int) -> bool:
    return len(headers) <= room and all(
        len(name) <= 256
        and _ATTRIBUTE_NAME.fullmatch(name)
        and value
        and (isinstance(value, bytes) or _VALID_TEXT.fullmatch(value))
        for name, value in headers.items()
    )


def _packable(headers: Mapping[str, str | bytes]) -> dict[str, Any]:
    return {
        name: binary_in_json(value) if isinstance(value, bytes) else value
        for name, value in headers.items()
    }


def attributes_for(message: Message) -> Attributes:
    """Return the message attributes that carry a message's ids, manifest and headers.

    Headers travel one attribute each while all of them fit in the limit of
    10 (so SNS filter policies can use them) and SQS accepts their names and
    values; otherwise they are packed, as JSON, into ``melange.headers``.
    """
    attributes = {MESSAGE_ID: _string(message.message_id)}
    if message.manifest is not None:
        attributes[MANIFEST] = _string(message.manifest)
    if message.serializer_id is not None:
        attributes[SERIALIZER_ID] = {
            "DataType": "Number",
            "StringValue": str(message.serializer_id),
        }
    headers = message.metadata
    if not headers:
        return attributes
    if _fits_one_each(headers, MAX_ATTRIBUTES - len(attributes)):
        attributes.update({name: _attribute(value) for name, value in headers.items()})
    else:
        plain = _packable(headers)
        packed = json.dumps(plain, ensure_ascii=False, separators=(",", ":"))
        if not _VALID_TEXT.fullmatch(packed):  # lone surrogates: only escapes survive
            packed = json.dumps(plain, separators=(",", ":"))
        attributes[PACKED_HEADERS] = _string(packed)
    return attributes


def size_of(body: str, attributes: Mapping[str, Mapping[str, Any]]) -> int:
    """Return the size SQS and SNS count against their limit.

    That is the body plus every attribute's name, type and value, in UTF-8 bytes.
    """
    size = len(body.encode())
    for name, value in attributes.items():
        data = value["BinaryValue"] if "BinaryValue" in value else value["StringValue"].encode()
        size += len(name.encode()) + len(value["DataType"]) + len(data)
    return size


def check_size(
    body: str, attributes: Mapping[str, Mapping[str, Any]], limit: int | None, where: str
) -> int:
    """Return the message's size, or raise before anything is sent (``limit=None``: no limit).

    Raises:
        MessageTooLargeError: the body and attributes add up to more than ``limit`` bytes.
    """
    size = size_of(body, attributes)
    if limit is not None and size > limit:
        raise MessageTooLargeError(size, limit, where)
    return size


def batches(
    sized: Sequence[tuple[Any, int]], max_bytes: int, max_entries: int = 10
) -> list[list[Any]]:
    """Split (entry, size) pairs, in order, into batches of ``max_entries`` and ``max_bytes``."""
    result: list[list[Any]] = []
    current: list[Any] = []
    total = 0
    for entry, size in sized:
        if current and (len(current) == max_entries or total + size > max_bytes):
            result.append(current)
            current, total = [], 0
        current.append(entry)
        total += size
    if current:
        result.append(current)
    return result


def _value(attribute: Mapping[str, Any]) -> str | bytes:
    """Return a header's value: text for String and Number (its digits), bytes for Binary."""
    if "StringValue" in attribute:
        return header_text(attribute["StringValue"])
    value = attribute.get("BinaryValue", b"")
    return bytes(value) if isinstance(value, bytes | bytearray) else header_text(value)


def _text_value(attribute: Mapping[str, Any]) -> str:
    """Return the value of one of melange's own attributes as text (Binary: its base64)."""
    value = _value(attribute)
    return base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value


def _unpacked(packed: str) -> tuple[dict[str, str | bytes], str | None]:
    """Return the headers packed into ``melange.headers`` and, if they cannot be read, why."""
    try:
        headers = json.loads(packed)
    except (ValueError, RecursionError) as e:  # "[" * 100000 nests too deep
        return {}, f"{PACKED_HEADERS} is not JSON: {e}"
    if not isinstance(headers, dict):
        return {}, f"{PACKED_HEADERS} is not a JSON object of strings: {packed[:80]!r}"
    unpacked: dict[str, str | bytes] = {}
    for name, value in headers.items():
        if isinstance(value, str):
            unpacked[name] = value
            continue
        binary = binary_of_json(value)
        if binary is None:
            return {}, (
                f"{PACKED_HEADERS} is not a JSON object of strings (or {{'base64': …}}"
                f" bytes): {name[:80]!r} is {type(value).__name__}"
            )
        unpacked[name] = binary
    return unpacked, None


def message_from(received: Mapping[str, Any], queue_url: str) -> Message:
    """Rebuild a melange message from one ``ReceiveMessage`` entry; never raises.

    Attributes melange did not write become headers; a message another
    producer sent keeps SQS's own ``MessageId``. An entry melange cannot read
    (a serializer id or receive count that is not an integer, packed headers
    that are not a JSON object of strings) comes back ``undecodable``: its
    body as received, unreadable attributes kept as headers, ackable.
    """
    return decoded_or_undecodable(
        lambda: _decoded(received, queue_url), lambda: _fallback(received, queue_url)
    )


def _fallback(received: Mapping[str, Any], queue_url: str) -> tuple[str, str | None, Any]:
    """Return what can be read of an entry whose decoding failed: body and ids, no headers."""
    body = header_text(received.get("Body", ""))
    message_id = header_text(received.get("MessageId") or "") or None
    return body, message_id, (queue_url, header_text(received.get("ReceiptHandle", "")))


def _decoded(received: Mapping[str, Any], queue_url: str) -> Message:
    attributes: Mapping[str, Mapping[str, Any]] = received.get("MessageAttributes") or {}
    headers: dict[str, str | bytes] = {}
    problems: list[str] = []
    manifest = serializer_id = message_id = None
    for name, attribute in attributes.items():
        value = _text_value(attribute) if name in _OWN else _value(attribute)
        if name == MESSAGE_ID:
            message_id = header_text(value)
        elif name == MANIFEST:
            manifest = header_text(value)
        elif name == SERIALIZER_ID:
            try:
                serializer_id = integer_of(value, SERIALIZER_ID)
            except UndecodableMessageError as e:
                problems.append(str(e))
                headers[name] = value
        elif name == PACKED_HEADERS:
            unpacked, problem = _unpacked(header_text(value))
            if problem is None:
                headers.update(unpacked)
            else:
                problems.append(problem)
                headers[name] = value  # its original text goes to the dead-letter queue
        else:
            headers[name] = value
    owned = disowned(headers)
    count = (received.get("Attributes") or {}).get("ApproximateReceiveCount", "1")
    try:
        receive_count = integer_of(count, "ApproximateReceiveCount")
    except UndecodableMessageError as e:
        receive_count = 0  # unknown
        problems.append(str(e))
    body = header_text(received.get("Body", ""))
    message_id = message_id or header_text(received.get("MessageId") or "") or new_message_id()
    receipt = (queue_url, header_text(received.get("ReceiptHandle", "")))
    if problems:
        reason = "; ".join(problems)
        return undecodable(body, message_id, owned, reason, receive_count, receipt, manifest)
    return unchecked_message(
        body, message_id, owned, serializer_id, manifest, receive_count, receipt
    )
