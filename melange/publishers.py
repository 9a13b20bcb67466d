"""Publishing events: serialize, stamp headers, hand to the backend."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import Any

from melange import signals
from melange._trace_headers import inherited_trace
from melange.backends.decoding import OWN_PREFIX, is_own_header
from melange.backends.interfaces import MessagingBackend
from melange.context import current_message
from melange.exceptions import ConfigurationError, InvalidArgumentError, SerializationError
from melange.middleware import (
    Destination,
    DestinationKind,
    Middleware,
    Publishing,
    compose,
    current_hold,
    hooks_of,
)
from melange.models import (
    CAUSATION_ID,
    CORRELATION_ID,
    PUBLISHED_AT,
    Message,
    QueueWrapper,
    TopicWrapper,
    new_message_id,
    unchecked_message,
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
    names it as its cause. ``middleware`` wraps building and sending each
    message (see ``melange.middleware``); a publish made inside
    ``hold_publishes()`` is kept back until that scope releases it.
    """

    def __init__(
        self,
        backend: MessagingBackend,
        serializers: SerializerRegistry | None = None,
        *,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        self.backend = backend
        self.serializers = serializers if serializers is not None else SerializerRegistry()
        self.middleware = tuple(middleware)
        build_hooks = hooks_of(self.middleware, "build_message")
        send_hooks = hooks_of(self.middleware, "send_message")
        self._wrapped = bool(build_hooks or send_hooks)
        self._build = compose(build_hooks, self._build_core)
        self._send_message = compose(send_hooks, self._send_core)
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
        if topic is not None and queue is not None:
            raise ConfigurationError("publish to a topic or to a queue, not both")
        if delay > 0 and queue is None:
            raise ConfigurationError("a delay needs queue=: topics cannot delay a message")
        if not self._wrapped:
            message = self.build_message(event, headers)
            known = self._topics.get(message.manifest) if topic is queue is None else None  # type: ignore[arg-type]
            if known is not None and current_hold() is None:
                # The common case, kept short: routed by type to a topic already known.
                self.backend.publish_to_topic(message, known)
            else:
                self._send(message, self._resolve(message, topic, queue), delay, topic, queue)
        else:
            publishing = Publishing(
                event, _text_headers(headers), _requested(topic, queue), delay, publisher=self
            )
            publishing.message = self._build(publishing)
            self._send_message(publishing)
            message = publishing.message  # a send hook may have added headers
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

        Events bound for different manifest topics are grouped per topic. With
        middleware, or inside ``hold_publishes()``, each event is published on
        its own so that every hook sees it.

        Raises:
            BatchPublishError: some messages were not published; it lists them.
        """
        if topic is not None and queue is not None:
            raise ConfigurationError("publish to a topic or to a queue, not both")
        if self._wrapped or current_hold() is not None:
            return [self.publish(e, topic=topic, queue=queue, headers=headers) for e in events]
        messages = [self.build_message(event, headers) for event in events]
        groups: dict[_Target, list[Message]] = {}
        for message in messages:
            groups.setdefault(self._resolve(message, topic, queue), []).append(message)
        for (kind, destination), group in groups.items():
            if kind is DestinationKind.QUEUE:
                self.backend.publish_batch_to_queue(group, destination)  # type: ignore[arg-type]
            else:
                self.backend.publish_batch_to_topic(group, destination)  # type: ignore[arg-type]
        if signals.message_published.receivers:
            for message in messages:
                signals.message_published.send(self, message=message, event=None)
        return messages

    def build_message(self, event: Any, headers: Mapping[str, Any] | None = None) -> Message:
        """Serialize an event into a message with melange's headers (no middleware)."""
        content, manifest, serializer_id = self.serializers.serialize(event)
        if type(content) is not str:
            raise SerializationError(
                f"{type(self.serializers.serializer_for(event)).__qualname__} returned"
                f" {type(content).__qualname__}, not str"
            )
        message_id = new_message_id()
        cause = current_message()
        if cause is None:
            metadata = {CORRELATION_ID: message_id, CAUSATION_ID: message_id}
        else:
            metadata = inherited_trace(cause)
        metadata[PUBLISHED_AT] = utc_now_iso()
        if headers:
            # The caller's headers win, except the publication time.
            for given, value in headers.items():
                key = str(given)
                if is_own_header(key):
                    raise InvalidArgumentError(
                        f"header {key!r}: headers under {OWN_PREFIX!r} are melange's own"
                    )
                if key != PUBLISHED_AT:
                    metadata[key] = str(value)
        return unchecked_message(content, message_id, metadata, serializer_id, manifest)

    def send(
        self,
        message: Message,
        *,
        topic: str | TopicWrapper | None = None,
        queue: str | QueueWrapper | None = None,
        delay: float = 0.0,
    ) -> None:
        """Send a message built earlier (``build_message``) as it is, now.

        No middleware runs and ``hold_publishes`` does not hold it: this is
        how an outbox sends what it stored. Routing is ``publish``'s.

        Raises:
            ConfigurationError: both ``topic`` and ``queue``, or a delay on a topic.
            QueueNotFoundError: ``queue`` does not exist.
            BackendError: the backend refused the message.
        """
        if topic is not None and queue is not None:
            raise ConfigurationError("send to a topic or to a queue, not both")
        if delay > 0 and queue is None:
            raise ConfigurationError("a delay needs queue=: topics cannot delay a message")
        self._send_now(message, self._resolve(message, topic, queue), delay)

    # -- middleware ------------------------------------------------------------------

    def _build_core(self, publishing: Publishing) -> Message:
        return self.build_message(publishing.event, publishing.headers)

    def _send_core(self, publishing: Publishing) -> None:
        message = publishing.message
        assert message is not None
        requested = publishing.destination
        topic: str | TopicWrapper | None = None
        queue: str | QueueWrapper | None = None
        if requested is not None:
            given = requested.wrapper or requested.name
            if requested.kind is DestinationKind.QUEUE:
                queue = given  # type: ignore[assignment]
            else:
                topic = given  # type: ignore[assignment]
        target = self._resolve(message, topic, queue)
        self._send(message, target, publishing.delay, topic, queue)

    # -- sending ---------------------------------------------------------------------

    def _send(
        self,
        message: Message,
        target: _Target,
        delay: float,
        topic: str | TopicWrapper | None,
        queue: str | QueueWrapper | None,
    ) -> None:
        held = current_hold()
        if held is not None:
            send = partial(self._send_now, message, target, delay)
            held.hold(message, send, _requested(topic, queue), delay)
        else:
            self._send_now(message, target, delay)

    def _send_now(self, message: Message, target: _Target, delay: float) -> None:
        kind, destination = target
        if kind is DestinationKind.TOPIC:
            self.backend.publish_to_topic(message, destination)  # type: ignore[arg-type]
        elif delay > 0:
            self.backend.publish_delayed_to_queue(message, destination, delay)  # type: ignore[arg-type]
        else:
            self.backend.publish_to_queue(message, destination)  # type: ignore[arg-type]

    def _resolve(
        self,
        message: Message,
        topic: str | TopicWrapper | None,
        queue: str | QueueWrapper | None,
    ) -> _Target:
        """Return where the message goes, as the caller's argument says."""
        if queue is not None:
            if isinstance(queue, str):
                return DestinationKind.QUEUE, self._queue(queue)
            return DestinationKind.QUEUE, queue
        if topic is None:
            if message.manifest is None:
                raise ConfigurationError(
                    "this event has no manifest to route by: pass topic= or queue="
                )
            topic = message.manifest
        if isinstance(topic, str):
            return DestinationKind.TOPIC, self._topic(topic)
        return DestinationKind.TOPIC, topic

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


_Target = tuple[DestinationKind, "QueueWrapper | TopicWrapper"]


def _requested(
    topic: str | TopicWrapper | None, queue: str | QueueWrapper | None
) -> Destination | None:
    """Return the destination the caller named, for middleware to see (``None``: by manifest)."""
    if queue is not None:
        name = queue if isinstance(queue, str) else str(queue.unwrap())
        return Destination(DestinationKind.QUEUE, name, None if isinstance(queue, str) else queue)
    if topic is not None:
        name = topic if isinstance(topic, str) else str(topic.unwrap())
        return Destination(DestinationKind.TOPIC, name, None if isinstance(topic, str) else topic)
    return None


def _text_headers(headers: Mapping[str, Any] | None) -> dict[str, str | bytes]:
    """Return the headers as the wire carries them: text, except bytes, which stay binary."""
    return {str(k): v if isinstance(v, bytes) else str(v) for k, v in (headers or {}).items()}


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
