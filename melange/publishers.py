"""Publishing events: serialize, stamp headers, hand to the backend."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from melange import signals
from melange.backends.interfaces import MessagingBackend
from melange.context import current_message
from melange.exceptions import ConfigurationError, SerializationError
from melange.models import (
    CAUSATION_ID,
    CORRELATION_ID,
    PUBLISHED_AT,
    Message,
    QueueWrapper,
    TopicWrapper,
    _unchecked,
    new_message_id,
    utc_now_iso,
)
from melange.serializers import SerializerRegistry

__all__ = ["MessagePublisher", "QueuePublisher", "TopicPublisher"]


class MessagePublisher:
    """Publishes typed events to topics or queues of one backend.

    With neither ``topic`` nor ``queue``, an event goes to the topic named
    after its manifest, so consumers subscribe by type. Every message carries
    ``correlation_id``, ``causation_id`` and ``published_at``; published while
    a message is being handled, it inherits that message's correlation id and
    names it as its cause.
    """

    def __init__(
        self, backend: MessagingBackend, serializers: SerializerRegistry | None = None
    ) -> None:
        self.backend = backend
        self.serializers = serializers if serializers is not None else SerializerRegistry()
        self._topics: dict[str, TopicWrapper] = {}
        self._queues: dict[str, QueueWrapper] = {}
        self._lock = threading.Lock()

    def publish(
        self,
        event: Any,
        *,
        topic: str | TopicWrapper | None = None,
        queue: str | QueueWrapper | None = None,
        headers: Mapping[str, Any] | None = None,
        delay: float = 0.0,
    ) -> Message:
        """Publish one event and return the message sent.

        ``delay`` (seconds, queues only) keeps the message invisible that long.

        Raises:
            ConfigurationError: both ``topic`` and ``queue``, a delay on a topic,
                or an event with no manifest and no destination.
            SerializationError: the event cannot be serialized.
            QueueNotFoundError: ``queue`` does not exist.
            BackendError: the backend refused the message.
        """
        message = self.build_message(event, headers)
        if topic is None and queue is None and delay == 0:
            wrapper = self._topics.get(message.manifest)  # type: ignore[arg-type]
            if wrapper is not None:  # the common case: routing by type, topic known
                self.backend.publish_to_topic(message, wrapper)
                if signals.message_published.receivers:
                    signals.message_published.send(self, message=message, event=event)
                return message
        destination = self._destination(message, topic, queue)
        if isinstance(destination, QueueWrapper):
            if delay > 0:
                self.backend.publish_delayed_to_queue(message, destination, delay)
            else:
                self.backend.publish_to_queue(message, destination)
        elif delay > 0:
            raise ConfigurationError("a delay needs queue=: topics cannot delay a message")
        else:
            self.backend.publish_to_topic(message, destination)
        if signals.message_published.receivers:
            signals.message_published.send(self, message=message, event=event)
        return message

    def publish_batch(
        self,
        events: Iterable[Any],
        *,
        topic: str | TopicWrapper | None = None,
        queue: str | QueueWrapper | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> list[Message]:
        """Publish several events in as few broker calls as the backend allows.

        Events bound for different manifest topics are grouped per topic.

        Raises:
            BatchPublishError: some messages were not published; it lists them.
        """
        messages = [self.build_message(event, headers) for event in events]
        groups: dict[QueueWrapper | TopicWrapper, list[Message]] = {}
        for message in messages:
            groups.setdefault(self._destination(message, topic, queue), []).append(message)
        for destination, group in groups.items():
            if isinstance(destination, QueueWrapper):
                self.backend.publish_batch_to_queue(group, destination)
            else:
                self.backend.publish_batch_to_topic(group, destination)
        if signals.message_published.receivers:
            for message in messages:
                signals.message_published.send(self, message=message, event=None)
        return messages

    def build_message(self, event: Any, headers: Mapping[str, Any] | None = None) -> Message:
        """Serialize an event into a message with melange's headers."""
        content, manifest, serializer_id = self.serializers.serialize(event)
        if type(content) is not str:
            raise SerializationError(
                f"{type(self.serializers.serializer_for(event)).__qualname__} returned"
                f" {type(content).__qualname__}, not str"
            )
        message_id = new_message_id()
        cause = current_message()
        if cause is None:
            correlation_id = causation_id = message_id
        else:
            correlation_id = cause.metadata.get(CORRELATION_ID) or cause.message_id
            causation_id = cause.message_id
        metadata = {
            CORRELATION_ID: correlation_id,
            CAUSATION_ID: causation_id,
            PUBLISHED_AT: utc_now_iso(),
        }
        if headers:
            # The caller's headers win, except the publication time.
            metadata.update({str(k): str(v) for k, v in headers.items() if k != PUBLISHED_AT})
        return _unchecked(content, message_id, metadata, serializer_id, manifest)

    def _destination(
        self,
        message: Message,
        topic: str | TopicWrapper | None,
        queue: str | QueueWrapper | None,
    ) -> QueueWrapper | TopicWrapper:
        if topic is not None and queue is not None:
            raise ConfigurationError("publish to a topic or to a queue, not both")
        if queue is not None:
            return queue if isinstance(queue, QueueWrapper) else self._queue(queue)
        if topic is None:
            if message.manifest is None:
                raise ConfigurationError(
                    "this event has no manifest to route by: pass topic= or queue="
                )
            topic = message.manifest
        return topic if isinstance(topic, TopicWrapper) else self._topic(topic)

    def _topic(self, name: str) -> TopicWrapper:
        wrapper = self._topics.get(name)
        if wrapper is None:
            wrapper = self.backend.declare_topic(name)
            with self._lock:
                self._topics[name] = wrapper
        return wrapper

    def _queue(self, name: str) -> QueueWrapper:
        wrapper = self._queues.get(name)
        if wrapper is None:
            wrapper = self.backend.get_queue(name)
            with self._lock:
                self._queues[name] = wrapper
        return wrapper

    def forget_queue(self, name: str) -> None:
        """Drop a cached queue handle (after the queue was deleted and made again)."""
        with self._lock:
            self._queues.pop(name, None)


class QueuePublisher(MessagePublisher):
    """The original two-argument form: ``publish(queue_name, event)``."""

    def publish(  # type: ignore[override]
        self, queue_name: str, event: Any, **kwargs: Any
    ) -> Message:
        """Publish an event to a queue.

        Raises:
            QueueNotFoundError: the queue does not exist.
        """
        return super().publish(event, queue=queue_name, **kwargs)


class TopicPublisher(MessagePublisher):
    """The original two-argument form: ``publish(topic_name, event)``."""

    def publish(  # type: ignore[override]
        self, topic_name: str, event: Any, **kwargs: Any
    ) -> Message:
        """Publish an event to a topic, creating the topic if needed."""
        return super().publish(event, topic=topic_name, **kwargs)
