"""How melange's messages, names and policies look on SNS/SQS (no I/O here)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from melange.exceptions import MessageTooLargeError
from melange.models import Message, _unchecked

__all__ = [
    "MAX_ATTRIBUTES",
    "MAX_BATCH_BYTES",
    "MAX_MESSAGE_BYTES",
    "attributes_for",
    "entity_name",
    "message_from",
    "queue_policy",
    "size_of",
    "topics_in_policy",
]

#: SQS and SNS both refuse a message (body plus attributes) over 256 KiB.
MAX_MESSAGE_BYTES = 262_144
#: SendMessageBatch and PublishBatch refuse a request whose messages add up to more.
MAX_BATCH_BYTES = 262_144
#: SQS and SNS carry at most 10 message attributes.
MAX_ATTRIBUTES = 10

MANIFEST = "melange.manifest"
SERIALIZER_ID = "melange.serializer_id"
MESSAGE_ID = "melange.message_id"
PACKED_HEADERS = "melange.headers"
_FIXED = 3
_POLICY_SID = "melange-topics"
_ATTRIBUTE_NAME = re.compile(
    r"^(?!aws\.|amazon\.|melange\.)[A-Za-z0-9_\-][A-Za-z0-9_\-.]{0,255}$", re.I
)
_NOT_IN_NAMES = re.compile(r"[^A-Za-z0-9_\-]")


def entity_name(name: str) -> str:
    """Return a valid SNS topic or SQS queue name: ``orders.created`` -> ``orders_created``.

    Both allow letters, digits, ``-`` and ``_`` only, and ``.fifo`` at the end.
    """
    base, fifo = (name[: -len(".fifo")], ".fifo") if name.endswith(".fifo") else (name, "")
    return _NOT_IN_NAMES.sub("_", base) + fifo


def _string(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def attributes_for(message: Message) -> dict[str, dict[str, str]]:
    """Return the message attributes that carry a message's manifest, ids and headers.

    Headers travel one attribute each while they fit (so SNS filter policies
    can use them); otherwise they are packed into one JSON attribute.
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
    fits = len(headers) <= MAX_ATTRIBUTES - _FIXED and all(
        _ATTRIBUTE_NAME.match(name) and value for name, value in headers.items()
    )
    if fits:
        attributes.update({name: _string(value) for name, value in headers.items()})
    elif headers:
        attributes[PACKED_HEADERS] = _string(json.dumps(dict(headers), ensure_ascii=False))
    return attributes


def size_of(body: str, attributes: Mapping[str, Mapping[str, str]]) -> int:
    """Return the size SQS/SNS count against their limit.

    That is the body plus every attribute's name, type and value, in UTF-8 bytes.
    """
    size = len(body.encode())
    for name, value in attributes.items():
        size += len(name.encode()) + len(value["DataType"]) + len(value["StringValue"].encode())
    return size


def check_size(message: Message, attributes: Mapping[str, Mapping[str, str]], where: str) -> int:
    """Return the message's size, or raise before anything is sent.

    Raises:
        MessageTooLargeError: it is over ``MAX_MESSAGE_BYTES``.
    """
    size = size_of(message.content, attributes)
    if size > MAX_MESSAGE_BYTES:
        raise MessageTooLargeError(size, MAX_MESSAGE_BYTES, where)
    return size


def message_from(received: Mapping[str, Any], queue_url: str) -> Message:
    """Rebuild a melange message from an SQS ``ReceiveMessage`` entry."""
    attributes: Mapping[str, Mapping[str, str]] = received.get("MessageAttributes", {})
    values = {name: value.get("StringValue", "") for name, value in attributes.items()}
    headers = {k: v for k, v in values.items() if not k.startswith("melange.")}
    if PACKED_HEADERS in values:
        headers.update(json.loads(values[PACKED_HEADERS]))
    serializer_id = values.get(SERIALIZER_ID)
    return _unchecked(
        received["Body"],
        values.get(MESSAGE_ID) or received["MessageId"],
        headers,
        int(serializer_id) if serializer_id is not None else None,
        values.get(MANIFEST),
        int(received.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
        (queue_url, received["ReceiptHandle"]),
    )


def topics_in_policy(policy: str | None) -> set[str]:
    """Return the topic ARNs melange's statement in a queue policy lets send."""
    if not policy:
        return set()
    for statement in json.loads(policy).get("Statement", []):
        if statement.get("Sid") == _POLICY_SID:
            arns = statement.get("Condition", {}).get("ArnEquals", {}).get("aws:SourceArn", [])
            return {arns} if isinstance(arns, str) else set(arns)
    return set()


def queue_policy(queue_arn: str, topic_arns: Iterable[str]) -> str:
    """Return a queue policy that lets exactly these topics send to the queue."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": _POLICY_SID,
                    "Effect": "Allow",
                    "Principal": {"Service": "sns.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": queue_arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": sorted(topic_arns)}},
                }
            ],
        }
    )


def batches(sized: list[tuple[Any, int]], max_entries: int = 10) -> list[list[Any]]:
    """Split (entry, size) pairs into batches of at most 10 entries and ``MAX_BATCH_BYTES``."""
    result: list[list[Any]] = []
    current: list[Any] = []
    total = 0
    for entry, size in sized:
        if current and (len(current) == max_entries or total + size > MAX_BATCH_BYTES):
            result.append(current)
            current, total = [], 0
        current.append(entry)
        total += size
    if current:
        result.append(current)
    return result
