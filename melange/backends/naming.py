"""The queue and topic names each backend takes: one rule per backend, checked, never folded.

A name a backend cannot take raises ``InvalidNameError`` naming the rule
before any I/O, at ``declare_queue``, ``declare_topic`` and ``get_queue``.
Only SNS/SQS maps names, by one rule (``sqs_name``).
"""

from __future__ import annotations

import re

from melange.exceptions import InvalidNameError

__all__ = [
    "MAX_PLAIN_NAME",
    "MAX_RABBITMQ_BYTES",
    "MAX_SNS_TOPIC",
    "MAX_SQS_QUEUE",
    "NAME_TAG",
    "check_plain_name",
    "check_rabbitmq_name",
    "folded",
    "may_fold",
    "sqs_name",
]

#: The SQS queue / SNS topic tag that keeps the melange name an entity was declared for.
NAME_TAG = "melange-name"

#: SQLite and in-memory queues and topics: characters.
MAX_PLAIN_NAME = 255
#: RabbitMQ queues and exchanges: bytes of UTF-8.
MAX_RABBITMQ_BYTES = 255
#: SQS queue names, ``.fifo`` included; a dead-letter queue's ``-dlq`` counts too.
MAX_SQS_QUEUE = 80
#: SNS topic names, ``.fifo`` included.
MAX_SNS_TOPIC = 256

_FIFO_MARK = re.compile(r"\.fifo(?![A-Za-z0-9])")
_SQS_CHARACTERS = re.compile(r"[A-Za-z0-9_-]+", re.ASCII)
_NOT_SQS = re.compile(r"[^A-Za-z0-9_-]", re.ASCII)


def check_plain_name(name: object, backend: str) -> str:
    """Return ``name`` if the embedded brokers take it: 1 to 255 characters, no NUL.

    Raises:
        InvalidNameError: it is not such a string.
    """
    if type(name) is not str:
        raise InvalidNameError(repr(name), backend, "a name must be a string")
    if not name:
        raise InvalidNameError(name, backend, "a name must not be empty")
    if "\0" in name:
        raise InvalidNameError(name, backend, "a name must not contain NUL")
    if len(name) > MAX_PLAIN_NAME:
        raise InvalidNameError(name, backend, f"at most {MAX_PLAIN_NAME} characters")
    return name


def check_rabbitmq_name(name: object) -> str:
    """Return ``name`` if RabbitMQ takes it: 1 to 255 bytes of UTF-8, no NUL, no ``amq.`` prefix.

    RabbitMQ itself takes a NUL, which then breaks logs, the management UI and CLI tools.

    Raises:
        InvalidNameError: it is not such a string.
    """
    backend = "rabbitmq"
    if type(name) is not str:
        raise InvalidNameError(repr(name), backend, "a name must be a string")
    if not name:
        raise InvalidNameError(name, backend, "a name must not be empty")
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        raise InvalidNameError(name, backend, "a name must be valid Unicode text") from None
    if size > MAX_RABBITMQ_BYTES:
        raise InvalidNameError(name, backend, f"at most {MAX_RABBITMQ_BYTES} bytes of UTF-8")
    if "\0" in name:
        raise InvalidNameError(name, backend, "a name must not contain NUL")
    if name.startswith("amq."):
        raise InvalidNameError(name, backend, "names starting with 'amq.' are RabbitMQ's own")
    return name


def sqs_name(name: object, *, topic: bool = False) -> str:
    """Return the SQS queue (or SNS topic) name melange uses for ``name``.

    The one mapping: each ``.`` becomes ``_`` (``orders.created`` is
    ``orders_created``, as it always was), and a ``.fifo`` inside the name
    moves to the end (the dead-letter queue ``orders.fifo-dlq`` is
    ``orders-dlq.fifo``). Any other character outside ``A-Z a-z 0-9 _ -`` is
    refused, as is a result longer than SQS's 80 characters (SNS: 256).

    Raises:
        InvalidNameError: the name cannot be an SQS/SNS name.
    """
    backend = "aws_sns" if topic else "aws_sqs"
    if type(name) is not str:
        raise InvalidNameError(repr(name), backend, "a name must be a string")
    base, marks = _FIFO_MARK.subn("", name)
    mapped = base.replace(".", "_")
    if not _SQS_CHARACTERS.fullmatch(mapped):
        rule = "only letters, digits, '_', '-' (and '.', read as '_')"
        if not mapped:
            raise InvalidNameError(name, backend, "a name must not be empty")
        raise InvalidNameError(
            name, backend, rule, _NOT_SQS.sub("-", mapped) + (".fifo" if marks else "")
        )
    full = mapped + (".fifo" if marks else "")
    limit = MAX_SNS_TOPIC if topic else MAX_SQS_QUEUE
    if len(full) > limit:
        what = (
            "an SNS topic name"
            if topic
            else "an SQS queue name (a dead-letter queue's '-dlq' included)"
        )
        raise InvalidNameError(
            name, backend, f"{what} has at most {limit} characters, not {len(full)}"
        )
    return full


def may_fold(mapped: str) -> bool:
    """Whether two melange names could map to ``mapped``: ``a.b`` and ``a_b`` both do to ``a_b``."""
    return "_" in mapped


def folded(original: str, mapped: str, owner: str, backend: str) -> InvalidNameError:
    """Return the error for ``original``, whose SQS/SNS name ``mapped`` is ``owner``'s."""
    return InvalidNameError(
        original,
        backend,
        f"it maps to {mapped!r}, which is already the {backend[4:].upper()} name of"
        f" {owner!r} (its {NAME_TAG!r} tag): two names must not share one queue or topic",
        original.replace(".", "-") if "." in original else None,
    )
