"""Value objects moved by backends: the message envelope and broker handles."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from melange._own_headers import disowned

__all__ = [
    "CAUSATION_ID",
    "CORRELATION_ID",
    "DECODE_ERROR",
    "PUBLISHED_AT",
    "SAGA_ID",
    "SAGA_TYPE",
    "Message",
    "QueueWrapper",
    "TopicWrapper",
    "new_message_id",
    "unchecked_message",
    "utc_now_iso",
]

_set = object.__setattr__

CORRELATION_ID = "correlation_id"
CAUSATION_ID = "causation_id"
PUBLISHED_AT = "published_at"
#: The saga instance a message belongs to, and its saga type: a message
#: published while handling one that carries them carries them too, so a
#: reply finds its way back to the saga that sent the command.
SAGA_ID = "saga_id"
SAGA_TYPE = "saga_type"
#: Set by a backend on a received message it could not fully decode (a header
#: it cannot parse, text that is not UTF-8…); the value says why. The dispatcher
#: dead-letters such a message with its original content, never handles it.
DECODE_ERROR = "x-melange-decode-error"


_urandom = os.urandom
# The RFC 4122 variant keeps the top two bits of digit 17 at 0b10.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
# [(unix second, its "YYYY-MM-DDTHH:MM:SS")], replaced whole so threads never see a mix.
_second_prefix: list[tuple[int, str]] = [(0, "")]


def utc_now_iso() -> str:
    """Return the current UTC time in ISO 8601, to the microsecond, like ``datetime.isoformat``."""
    # Formatting the date once per second halves the cost on the publish path.
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    cached_second, prefix = _second_prefix[0]
    if seconds != cached_second:
        prefix = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_prefix[0] = (seconds, prefix)
    return f"{prefix}.{nanos // 1000:06d}+00:00"


def new_message_id() -> str:
    """Return a random (version 4) UUID as a string, like ``str(uuid.uuid4())``."""
    # Built from the hex digits directly: a third of uuid4()'s cost on the hot path.
    h = _urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Message:
    """One message as a broker carries it.

    ``metadata`` holds the headers: string keys, string values, except the
    binary values another producer set (an AMQP byte array, an SQS Binary
    attribute), which stay ``bytes``. ``receive_count``
    is how many times the broker has handed this message out, this time
    included; 0 on a message that was never received. ``receipt`` is the
    backend's own handle for acknowledging it and takes no part in equality.
    """

    content: str
    message_id: str = field(default_factory=new_message_id)
    metadata: Mapping[str, str | bytes] = field(default_factory=dict)
    serializer_id: int | None = None
    manifest: str | None = None
    receive_count: int = 0
    receipt: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.message_id, str) or not self.message_id:
            raise TypeError("message_id must be a non-empty string")
        if not isinstance(self.content, str):
            raise TypeError("content must be a string")

    def with_changes(self, **changes: Any) -> Message:
        """Return a copy with some fields replaced."""
        return replace(self, **changes)

    def received(self, receive_count: int, receipt: Any) -> Message:
        """Return a copy as handed out by a broker: a receive count and a receipt.

        Headers under ``x-melange-`` it was published with come out as
        ``x-foreign-`` ones (``melange._own_headers``): only melange sets its own.
        """
        return unchecked_message(
            self.content,
            self.message_id,
            disowned(self.metadata) if self.metadata else self.metadata,
            self.serializer_id,
            self.manifest,
            receive_count,
            receipt,
        )

    def header(self, name: str, default: str | None = None) -> str | bytes | None:
        """Return one header, or ``default``; a binary one from another producer is ``bytes``."""
        return self.metadata.get(name, default)

    def text_header(self, name: str) -> str | None:
        """Return one header if it is text; ``None`` when it is missing or binary."""
        value = self.metadata.get(name)
        return value if type(value) is str else None


@dataclass(frozen=True, slots=True)
class QueueWrapper:
    """A queue as the backend knows it: a name, a URL, a channel-bound name…"""

    obj: Any

    def unwrap(self) -> Any:
        """Return the broker's own object for this queue."""
        return self.obj


@dataclass(frozen=True, slots=True)
class TopicWrapper:
    """A topic as the backend knows it: a name, an ARN, an exchange…"""

    obj: Any

    def unwrap(self) -> Any:
        """Return the broker's own object for this topic."""
        return self.obj


def unchecked_message(  # noqa: PLR0917 - positional for speed on the hot path
    content: str,
    message_id: str,
    metadata: Mapping[str, str | bytes],
    serializer_id: int | None,
    manifest: str | None,
    receive_count: int = 0,
    receipt: Any = None,
) -> Message:
    """Build a message from fields known to be valid, skipping ``__init__`` (hot paths)."""
    message = object.__new__(Message)
    _set(message, "content", content)
    _set(message, "message_id", message_id)
    _set(message, "metadata", metadata)
    _set(message, "serializer_id", serializer_id)
    _set(message, "manifest", manifest)
    _set(message, "receive_count", receive_count)
    _set(message, "receipt", receipt)
    return message
