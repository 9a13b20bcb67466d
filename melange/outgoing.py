"""``Outgoing``: one message on its way out, from ``publish`` to the backend.

The same value flows from ``publish``/``send``/``publish_batch`` through the
publish middleware (as ``Publishing``), a ``hold_publishes`` scope and a
saga's outbox to the backend call; it reads and writes itself as JSON for
the outboxes that store it.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from melange.backends.decoding import binary_in_json, binary_of_json
from melange.exceptions import ConfigurationError
from melange.models import Message, QueueWrapper, TopicWrapper

__all__ = [
    "Destination",
    "DestinationKind",
    "Outgoing",
    "headers_in_json",
    "headers_of_json",
    "text_headers",
]


class DestinationKind(enum.Enum):
    """Where a publish goes."""

    TOPIC = "topic"
    QUEUE = "queue"


@dataclass(frozen=True, slots=True)
class Destination:
    """A topic or a queue, by name (and, when the caller gave one, the backend's wrapper)."""

    kind: DestinationKind
    name: str
    wrapper: QueueWrapper | TopicWrapper | None = None

    @classmethod
    def requested(
        cls, topic: str | TopicWrapper | None, queue: str | QueueWrapper | None
    ) -> Destination | None:
        """Return what a caller's ``topic=``/``queue=`` name (``None``: the manifest's topic).

        Raises:
            ConfigurationError: both were given.
        """
        if queue is not None:
            if topic is not None:
                raise ConfigurationError("publish to a topic or to a queue, not both")
            if isinstance(queue, str):
                return cls(DestinationKind.QUEUE, queue)
            return cls(DestinationKind.QUEUE, str(queue.unwrap()), queue)
        if topic is None:
            return None
        if isinstance(topic, str):
            return cls(DestinationKind.TOPIC, topic)
        return cls(DestinationKind.TOPIC, str(topic.unwrap()), topic)


@dataclass(slots=True)
class Outgoing:
    """One event or message on its way to a topic or a queue.

    ``destination`` ``None`` routes by type, to the topic named after the
    manifest. ``headers`` are the caller's extra headers (a ``build_message``
    middleware may add some); ``message`` is set once built. ``delay``
    (seconds, queues only) is what the backend is asked to delay it by;
    ``due_at`` (wall clock) is when an outbox may send it (``0``: at once).
    ``messaging_system`` names the publisher's broker as OpenTelemetry does;
    ``publisher`` is the publisher sending it.
    """

    event: Any = None
    headers: dict[str, str | bytes] = field(default_factory=dict)
    destination: Destination | None = None
    delay: float = 0.0
    publisher: object = None
    message: Message | None = None
    due_at: float = 0.0
    messaging_system: str = "melange"

    @property
    def built(self) -> Message:
        """Return the message (``ConfigurationError`` before it is built)."""
        if self.message is None:
            raise ConfigurationError("this outgoing message is not built yet")
        return self.message

    @property
    def where(self) -> Destination:
        """Return where it goes, the manifest's topic when the caller named nothing.

        Raises:
            ConfigurationError: nothing named and the message has no manifest.
        """
        if self.destination is not None:
            return self.destination
        manifest = self.built.manifest
        if manifest is None:
            raise ConfigurationError(
                "this event has no manifest to route by: pass topic= or queue="
            )
        return Destination(DestinationKind.TOPIC, manifest)

    def to_json(self) -> str:
        """Return the built message and where it goes as one JSON text (for an outbox)."""
        message, where = self.built, self.where
        return json.dumps(
            {
                "content": message.content,
                "message_id": message.message_id,
                "metadata": headers_in_json(message.metadata),
                "serializer_id": message.serializer_id,
                "manifest": message.manifest,
                "kind": where.kind.value,
                "destination": where.name,
                "delay": self.delay,
                "due_at": self.due_at,
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> Outgoing:
        """Read what ``to_json`` wrote."""
        data = json.loads(text)
        message = Message(
            content=data["content"],
            message_id=data["message_id"],
            metadata=headers_of_json(data["metadata"]),
            serializer_id=data["serializer_id"],
            manifest=data["manifest"],
        )
        where = Destination(DestinationKind(data["kind"]), data["destination"])
        return cls(
            message=message,
            destination=where,
            delay=float(data["delay"]),
            due_at=float(data["due_at"]),
        )


def headers_in_json(headers: Mapping[str, str | bytes]) -> dict[str, Any]:
    """Return headers as JSON can hold them (binary values as ``binary_in_json`` writes)."""
    return {k: binary_in_json(v) if isinstance(v, bytes) else v for k, v in headers.items()}


def headers_of_json(data: Mapping[str, Any]) -> dict[str, str | bytes]:
    """Read what ``headers_in_json`` wrote; a value that is neither text nor binary is ``b""``."""
    return {str(k): v if type(v) is str else binary_of_json(v) or b"" for k, v in data.items()}


def text_headers(headers: Mapping[str, Any] | None) -> dict[str, str | bytes]:
    """Return headers as the wire carries them: text, except bytes, which stay binary."""
    return {str(k): v if isinstance(v, bytes) else str(v) for k, v in (headers or {}).items()}
