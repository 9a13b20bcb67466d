"""Publishing events: serialize, stamp headers, hand to the backend."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import Any

from melange import signals
from melange.backends.interfaces import MessagingBackend
from melange.broker_calls import run_calls
from melange.grouping import GroupBy
from melange.middleware import Middleware, Publishing, compose, current_hold, hooks_of
from melange.models import Message, QueueWrapper, TopicWrapper
from melange.outgoing import Destination, Outgoing
from melange.sending import Sending
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
        self.sending = Sending(
            serializers, publisher=self, messaging_system=backend.messaging_system
        )
        self.serializers = self.sending.serializers
        self.middleware = tuple(middleware)
        build_hooks = hooks_of(self.middleware, "build_message")
        send_hooks = hooks_of(self.middleware, "send_message")
        self._one_by_one = bool(build_hooks or send_hooks)
        self._build = compose(build_hooks, self.sending.build)
        self._send = compose(send_hooks, self._send_core)

    def publish(
        self,
        event: Any,
        *,
        topic: str | TopicWrapper | None = None,
        queue: str | QueueWrapper | None = None,
        headers: Mapping[str, Any] | None = None,
        delay: float = 0.0,
        group_by: GroupBy | None = None,
    ) -> Message:
        """Publish one event and return the message sent.

        ``delay`` (seconds, queues only) keeps the message invisible that long.
        ``group_by`` (an attribute name or a function of the event) sets its
        message group, else its class's ``__melange_group__`` does
        (``melange.grouping``): an SQS FIFO ``MessageGroupId``, and one at a
        time, in order, in the dispatcher.

        Raises:
            ConfigurationError: both ``topic`` and ``queue``, a delay on a topic,
                an event with no manifest and no destination, or no group to take.
            SerializationError: the event cannot be serialized.
            QueueNotFoundError: ``queue`` does not exist.
            BackendError: the backend refused the message.
        """
        if topic is queue is None and not (headers or delay or group_by or self._one_by_one):
            # The common case, kept short: by type, with no middleware to see an
            # ``Outgoing``; once the topic is known and nothing holds publishes,
            # the message goes straight to the backend.
            message = self.sending.build_message(event)
            known = self.sending.known_topic(message)
            if known is not None and current_hold() is None:
                self.backend.publish_to_topic(message, known)
            else:
                outgoing = self.sending.outgoing(event, None)
                outgoing.message = message
                self._send_core(outgoing)
        else:
            message = self._published(event, topic, queue, headers, delay, group_by=group_by)
        if signals.message_published.receivers:
            signals.message_published.send(self, message=message, event=event)
        return message

    def _published(
        self,
        event: Any,
        topic: str | TopicWrapper | None,
        queue: str | QueueWrapper | None,
        headers: Mapping[str, Any] | None,
        delay: float,
        *,
        group_by: GroupBy | None,
    ) -> Message:
        """Publish through the middleware and any hold; return the message sent."""
        destination = None if topic is queue is None else Destination.requested(topic, queue)
        outgoing = self.sending.outgoing(event, destination, headers, delay, group_by)
        outgoing.message = self._build(outgoing)
        self._send(outgoing)
        return outgoing.built  # a send hook may have added headers

    def publish_batch(
        self,
        events: Iterable[Any],
        *,
        topic: str | TopicWrapper | None = None,
        queue: str | QueueWrapper | None = None,
        headers: Mapping[str, Any] | None = None,
        group_by: GroupBy | None = None,
    ) -> list[Message]:
        """Publish several events in as few broker calls as the backend allows.

        Events bound for different manifest topics are grouped per topic. With
        middleware, or inside ``hold_publishes()``, each event is published on
        its own so that every hook sees it. ``group_by``: as for ``publish``,
        per event.

        Raises:
            BatchPublishError: some messages were not published; it lists them.
        """
        destination = Destination.requested(topic, queue)
        if self._one_by_one or current_hold() is not None:
            return [
                self.publish(e, topic=topic, queue=queue, headers=headers, group_by=group_by)
                for e in events
            ]
        batch = self.sending.built_batch(events, destination, headers, group_by)
        run_calls(self.backend, self.sending.batch_sent(batch))
        return self.sending.announce(batch)

    def build_message(self, event: Any, headers: Mapping[str, Any] | None = None) -> Message:
        """Serialize an event into a message with melange's headers (no middleware)."""
        return self.sending.build_message(event, headers)

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
        where = Destination.requested(topic, queue)
        self.deliver(Outgoing(destination=where, delay=delay, publisher=self, message=message))

    def deliver(self, outgoing: Outgoing) -> None:
        """Send a built ``Outgoing`` now, as it is (``send``'s step, and an outbox's)."""
        call = self.sending.call(outgoing)
        if call is None:  # its topic or queue is looked up first, once
            run_calls(self.backend, self.sending.sent(outgoing))
        else:
            getattr(self.backend, call.method)(*call.args)

    def forget_queue(self, name: str) -> None:
        """Drop a cached queue handle (after the queue was deleted and made again)."""
        self.sending.forget_queue(name)

    # -- the core of the middleware chain -----------------------------------------------

    def _send_core(self, publishing: Publishing) -> None:
        held = current_hold()
        if held is None:
            self.deliver(publishing)
        else:
            held.hold(publishing, partial(self.deliver, publishing))


class _NamedFirst:
    """The original two-argument publishers: the destination's name, then the event."""

    def __init__(
        self,
        backend: MessagingBackend,
        serializers: SerializerRegistry | None = None,
        *,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        #: The publisher doing the work; its other methods are this one's.
        self.publisher = MessagePublisher(backend, serializers, middleware=middleware)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.publisher, name)


class QueuePublisher(_NamedFirst):
    """The original two-argument form: ``publish(queue_name, event)``."""

    def publish(self, queue_name: str, event: Any, **kwargs: Any) -> Message:
        """Publish an event to a queue.

        Raises:
            QueueNotFoundError: the queue does not exist.
        """
        return self.publisher.publish(event, queue=queue_name, **kwargs)


class TopicPublisher(_NamedFirst):
    """The original two-argument form: ``publish(topic_name, event)``."""

    def publish(self, topic_name: str, event: Any, **kwargs: Any) -> Message:
        """Publish an event to a topic, creating the topic if needed."""
        return self.publisher.publish(event, topic=topic_name, **kwargs)
