"""Melange 7's publishers: the registry first, the destination's name, FIFO keywords."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from melange.backends.interfaces import MessagingBackend
from melange.compat._backends import backend_or_default
from melange.compat._deprecation import deprecated
from melange.compat._models import MessageDto
from melange.models import Message
from melange.publishers import MessagePublisher
from melange.serializers import SerializerRegistry

__all__ = ["AsyncQueuePublisher", "QueuePublisher", "TopicPublisher"]


class QueuePublisher:
    """Melange 7's ``QueuePublisher(serializer_registry, backend=None).publish(queue_name, data)``.

    Keywords (``message_group_id``, ``message_deduplication_id``) go to the
    backend's ``publish_to_queue``. Without a backend, ``BackendManager``'s.
    """

    def __init__(
        self, serializer_registry: SerializerRegistry, backend: MessagingBackend | None = None
    ) -> None:
        deprecated("QueuePublisher", "melange.MessagePublisher(backend).publish(event, queue=…)")
        self.backend = backend_or_default(backend)
        self.publisher = MessagePublisher(self.backend, serializer_registry)

    def publish(self, queue_name: str, data: Any, **kwargs: Any) -> Message:
        """Publish ``data`` to an existing queue; return the message sent.

        Raises:
            QueueNotFoundError: the queue does not exist.
        """
        if not kwargs:
            return self.publisher.publish(data, queue=queue_name)
        message = self.publisher.build_message(data)
        self.backend.publish_to_queue(message, self.backend.get_queue(queue_name), **kwargs)
        return message


class TopicPublisher:
    """Melange 7's ``TopicPublisher(serializer_registry, backend=None).publish(topic_name, data)``.

    Keywords are the backend's ``extra_attributes`` (on SNS: ``subject``,
    ``message_attributes``, FIFO ids). The topic is created if needed.
    """

    def __init__(
        self, serializer_registry: SerializerRegistry, backend: MessagingBackend | None = None
    ) -> None:
        deprecated("TopicPublisher", "melange.MessagePublisher(backend).publish(event, topic=…)")
        self.backend = backend_or_default(backend)
        self.publisher = MessagePublisher(self.backend, serializer_registry)

    def publish(self, topic_name: str, data: Any, **extra_attributes: Any) -> Message:
        """Publish ``data`` to a topic; return the message sent."""
        if not extra_attributes:
            return self.publisher.publish(data, topic=topic_name)
        message = self.publisher.build_message(data)
        topic = self.backend.declare_topic(topic_name)
        self.backend.publish_to_topic(message, topic, extra_attributes=extra_attributes)
        return message


class AsyncQueuePublisher:
    """Melange 7.3's ``AsyncQueuePublisher(serializer_registry, backend)`` (async SQS backend)."""

    def __init__(self, serializer_registry: SerializerRegistry, backend: Any) -> None:
        deprecated("AsyncQueuePublisher", "melange.aio.AsyncMessagePublisher")
        self.backend = backend
        self.publisher = MessagePublisher(backend.sync, serializer_registry)

    async def publish(self, queue_name: str, data: Any, **kwargs: Any) -> Message:
        """Publish ``data`` to an existing queue; return the message sent."""
        message = self.publisher.build_message(data)
        await self.backend.publish_to_queue(
            message, await self.backend.get_queue(queue_name), **kwargs
        )
        return message

    async def publish_batch(
        self, queue_name: str, data: Sequence[Mapping[str, Any]]
    ) -> list[Message]:
        """Publish entries ``{"object": …, "message_group_id"?, "message_deduplication_id"?}``.

        Each object is serialized by its own class's serializer (7.3 looked at
        the entry instead).
        """
        dtos = [
            MessageDto(
                self.publisher.build_message(entry["object"]),
                entry.get("message_group_id"),
                entry.get("message_deduplication_id"),
            )
            for entry in data
        ]
        await self.backend.publish_to_queue_batch(dtos, await self.backend.get_queue(queue_name))
        return [dto.message for dto in dtos]
