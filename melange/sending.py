"""What both publishers share: building a message, and the broker calls that send it.

``Sending`` builds a ``Message`` from an event with melange's headers, and
turns an ``Outgoing`` (or a batch of them) into ``BrokerCall`` steps:
looking its topic or queue up once, then the publish. ``MessagePublisher``
runs the steps with ``run_calls``, ``AsyncMessagePublisher`` awaits them with
``run_calls_async``; neither writes the routing again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from melange import signals
from melange._trace_headers import inherited_trace
from melange.backends.decoding import OWN_PREFIX, is_own_header
from melange.broker_calls import BrokerCall, BrokerSteps
from melange.context import current_message
from melange.exceptions import ConfigurationError, InvalidArgumentError, SerializationError
from melange.grouping import GROUP_HEADER, GroupBy, group_key
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
from melange.outgoing import Destination, DestinationKind, Outgoing, text_headers
from melange.serializers import SerializerRegistry
from melange.serializers.versions import VERSION_ATTRIBUTE, VERSION_HEADER, version_of

__all__ = ["Sending"]


class Sending:
    """Builds messages and the broker calls that send them, for one publisher.

    ``publisher`` and ``messaging_system`` (its broker) are what each
    ``Outgoing`` it makes carries, for middleware to see.
    """

    def __init__(
        self,
        serializers: SerializerRegistry | None = None,
        *,
        publisher: object = None,
        messaging_system: str = "melange",
    ) -> None:
        self.serializers = serializers if serializers is not None else SerializerRegistry()
        self.publisher = publisher
        self.messaging_system = messaging_system
        self._topics: dict[str, TopicWrapper] = {}
        self._queues: dict[str, QueueWrapper] = {}
        self._lock = threading.Lock()

    def outgoing(
        self,
        event: Any,
        destination: Destination | None,
        headers: Mapping[str, Any] | None = None,
        delay: float = 0.0,
        group_by: GroupBy | None = None,
    ) -> Outgoing:
        """Return the ``Outgoing`` of one event about to be published (not built yet).

        ``group_by`` puts the event's group in the ``message_group_id`` header.

        Raises:
            ConfigurationError: a delay to a topic, or a group ``group_by`` cannot take.
        """
        if delay > 0 and (destination is None or destination.kind is not DestinationKind.QUEUE):
            raise ConfigurationError("a delay needs queue=: topics cannot delay a message")
        texts = text_headers(headers) if headers else {}
        if group_by is not None:
            texts[GROUP_HEADER] = str(group_key(event, group_by))
        return Outgoing(
            event,
            texts,
            destination,
            delay,
            self.publisher,
            messaging_system=self.messaging_system,
        )

    def built_batch(
        self,
        events: Iterable[Any],
        destination: Destination | None,
        headers: Mapping[str, Any] | None,
        group_by: GroupBy | None = None,
    ) -> list[Outgoing]:
        """Return the ``Outgoing`` of each event of a batch, built (no middleware runs)."""
        batch = [self.outgoing(event, destination, headers, group_by=group_by) for event in events]
        for outgoing in batch:
            outgoing.message = self.build(outgoing)
        return batch

    def announce(self, batch: Sequence[Outgoing]) -> list[Message]:
        """Send ``message_published`` for each message of a batch sent; return the messages."""
        messages = [outgoing.built for outgoing in batch]
        if signals.message_published.receivers:
            for message in messages:
                signals.message_published.send(self.publisher, message=message, event=None)
        return messages

    def build(self, outgoing: Outgoing) -> Message:
        """Return the message of an outgoing event (the core of the ``build_message`` hooks)."""
        return self.build_message(outgoing.event, outgoing.headers)

    def build_message(self, event: Any, headers: Mapping[str, Any] | None = None) -> Message:
        """Serialize an event into a message with melange's headers.

        Raises:
            SerializationError: the event cannot be serialized.
            InvalidArgumentError: a header under ``x-melange-``.
            ConfigurationError: its class's ``__melange_group__`` names no attribute it has.
        """
        content, manifest, serializer_id = self.serializers.serialize(event)
        if type(content) is not str:
            raise SerializationError(
                f"{type(self.serializers.serializer_for(event)).__qualname__} returned"
                f" {type(content).__qualname__}, not str"
            )
        message_id = new_message_id()
        version = getattr(type(event), VERSION_ATTRIBUTE, None)
        cause = current_message()
        if cause is None:
            metadata = {CORRELATION_ID: message_id, CAUSATION_ID: message_id}
        else:
            metadata = inherited_trace(cause)
        metadata[PUBLISHED_AT] = utc_now_iso()
        if version is not None:
            metadata[VERSION_HEADER] = str(version_of(type(event)))
        # A group the caller gave (``group_by``, or the header itself) wins over the class's.
        if not (headers and GROUP_HEADER in headers) and (group := group_key(event)) is not None:
            metadata[GROUP_HEADER] = group
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

    def known_topic(self, message: Message) -> TopicWrapper | None:
        """Return the wrapper of the topic a message routes to by type, if looked up already."""
        return self._topics.get(message.manifest or "")

    def call(self, outgoing: Outgoing) -> BrokerCall | None:
        """Return the one call that sends a built message, or ``None`` if its destination
        must be looked up first (``sent``).

        Raises:
            ConfigurationError: a delay to a topic, or nowhere to route it.
        """
        message = outgoing.message
        if message is None:
            raise ConfigurationError("this outgoing message is not built yet")
        where = outgoing.destination
        if where is None:
            topic = self.known_topic(message) if not outgoing.delay else None
            if topic is not None:  # the common case, kept short: by type, to a known topic
                return BrokerCall("publish_to_topic", (message, topic))
            where = outgoing.where
        target = where.wrapper
        if where.kind is DestinationKind.TOPIC:
            if outgoing.delay > 0:
                raise ConfigurationError("a delay needs queue=: topics cannot delay a message")
            target = target or self._topics.get(where.name)
            return None if target is None else BrokerCall("publish_to_topic", (message, target))
        target = target or self._queues.get(where.name)
        if target is None:
            return None
        if outgoing.delay > 0:
            return BrokerCall("publish_delayed_to_queue", (message, target, outgoing.delay))
        return BrokerCall("publish_to_queue", (message, target))

    def sent(self, outgoing: Outgoing) -> BrokerSteps[None]:
        """Send one built message where it goes, looking its destination up if need be."""
        call = self.call(outgoing)
        if call is None:
            yield from self._target(outgoing.where)
            call = self.call(outgoing)
            assert call is not None  # its destination is known now
        yield call

    def batch_sent(self, batch: Sequence[Outgoing]) -> BrokerSteps[None]:
        """Send built messages in one batch call per destination, in order within each."""
        groups: dict[Destination, list[Message]] = {}
        for outgoing in batch:
            groups.setdefault(outgoing.where, []).append(outgoing.built)
        for where, messages in groups.items():
            target = yield from self._target(where)
            if where.kind is DestinationKind.QUEUE:
                yield BrokerCall("publish_batch_to_queue", (messages, target))
            else:
                yield BrokerCall("publish_batch_to_topic", (messages, target))

    def _target(self, where: Destination) -> BrokerSteps[QueueWrapper | TopicWrapper]:
        """Return the backend's wrapper of a destination, looked up once per name."""
        if where.wrapper is not None:
            return where.wrapper
        if where.kind is DestinationKind.TOPIC:
            topic = self._topics.get(where.name)
            if topic is None:
                topic = yield BrokerCall("declare_topic", (where.name,))
                with self._lock:
                    self._topics[where.name] = topic
            return topic
        queue = self._queues.get(where.name)
        if queue is None:
            queue = yield BrokerCall("get_queue", (where.name,))
            with self._lock:
                self._queues[where.name] = queue
        return queue

    def forget_queue(self, name: str) -> None:
        """Drop a cached queue handle (after the queue was deleted and made again)."""
        with self._lock:
            self._queues.pop(name, None)
