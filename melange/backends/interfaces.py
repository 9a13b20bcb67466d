"""The contract every backend implements (see docs/backends.md)."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from melange.exceptions import ConfigurationError, InvalidArgumentError, UnsupportedOperationError
from melange.models import Message, QueueWrapper, TopicWrapper

__all__ = [
    "BackendCapabilities",
    "MessagingBackend",
    "QueueStats",
    "checked_filter_events",
    "checked_max_messages",
]


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What a queue holds now; ``None`` where the broker does not say.

    ``ready``: visible, waiting for a consumer; ``in_flight``: received and
    not yet acknowledged (hidden for their visibility timeout); ``delayed``:
    published with a delay, or released for later, not yet visible.
    """

    ready: int | None
    in_flight: int | None = None
    delayed: int | None = None


class BackendCapabilities:
    """What a backend tells about its broker; the sync and async interfaces share it."""

    #: Seconds a received message stays hidden when ``declare_queue`` is not told.
    default_visibility_timeout: float = 30.0
    #: Receives after which a message moves to the dead-letter queue, by default.
    default_max_receive_count: int = 5
    #: The largest message (content and headers, in bytes) the broker takes; ``None``: no limit.
    max_message_size: int | None = None
    #: The broker, as OpenTelemetry's ``messaging.system`` attribute names it.
    messaging_system: str = "melange"
    #: The longest delay (seconds) ``publish_delayed_to_queue`` takes: ``None``, any;
    #: ``0`` (the default, as the default method refuses delays), none at all. Sagas
    #: keep longer timeouts in their store and publish them when due.
    max_delay_seconds: float | None = 0.0


class MessagingBackend(BackendCapabilities, abc.ABC):
    """A wrapper over one broker: topics fan out to queues; queues hold messages.

    Subclasses implement the abstract methods. The batch, delay and release
    methods have working defaults built on them; a backend that can do better
    overrides them. A backend is a context manager and ``close_connection()``
    may be called any number of times.
    """

    _closed: bool = False

    @classmethod
    def from_url(cls, url: str) -> Self:
        """Build the backend from a URL (``melange.backends.from_url`` picks the class by scheme).

        Raises:
            ConfigurationError: a bad URL or option; the default: the backend
                has no URL form (register a factory with ``register_backend``).
        """
        raise ConfigurationError(f"{cls.__qualname__} cannot be built from a URL ({url!r})")

    # -- the spec's interface ---------------------------------------------

    @abc.abstractmethod
    def declare_topic(self, topic_name: str) -> TopicWrapper:
        """Get or create a topic."""

    @abc.abstractmethod
    def get_queue(self, queue_name: str) -> QueueWrapper:
        """Get an existing queue; never creates one.

        Raises:
            QueueNotFoundError: the queue does not exist.
        """

    @abc.abstractmethod
    def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        visibility_timeout: float | None = None,
        max_receive_count: int | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Get or create a queue, subscribe it to topics, and attach a dead-letter queue.

        ``visibility_timeout`` is how long (seconds) a received message stays
        hidden before it is delivered again; ``max_receive_count`` is how many
        receives move an unacknowledged message to the dead-letter queue.
        Declaring again adds subscriptions and keeps the earlier ones.

        ``filter_events`` (a keyword every bundled backend takes): a list of
        manifests; from the topics bound in this call the queue then gets only
        messages with one of them. Declaring again with another list replaces
        it; without one, a subscription's filter stays as it is.
        """

    @abc.abstractmethod
    def retrieve_messages(
        self,
        queue: QueueWrapper,
        *,
        max_messages: int = 10,
        wait_seconds: float = 0.0,
        visibility_timeout: float | None = None,
    ) -> list[Message]:
        """Receive the messages available now (possibly none).

        ``max_messages``: at most this many (a broker may cap it, SQS at 10);
        ``wait_seconds``: wait up to that long when the queue is empty;
        ``visibility_timeout``: hide these messages that long (seconds)
        rather than the queue's visibility timeout.

        Raises:
            QueueNotFoundError: the queue does not exist.
            InvalidArgumentError: ``max_messages`` below 1.
        """

    def yield_messages(
        self,
        queue: QueueWrapper,
        *,
        max_messages: int = 10,
        wait_seconds: float = 1.0,
        visibility_timeout: float | None = None,
    ) -> Iterable[Message]:
        """Yield messages as they arrive until the backend is closed; waits without busy-spinning.

        Takes the options of ``retrieve_messages``; each receive waits up to ``wait_seconds``.
        """
        while not self._closed:
            yield from self.retrieve_messages(
                queue,
                max_messages=max_messages,
                wait_seconds=wait_seconds,
                visibility_timeout=visibility_timeout,
            )

    @abc.abstractmethod
    def publish_to_topic(
        self,
        message: Message,
        topic: TopicWrapper,
        extra_attributes: dict[str, Any] | None = None,
    ) -> None:
        """Publish a message to every queue subscribed to the topic."""

    @abc.abstractmethod
    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        """Publish a message to one queue."""

    @abc.abstractmethod
    def acknowledge(self, message: Message) -> None:
        """Mark a received message done so it is never delivered again."""

    def close_connection(self) -> None:
        """Release the broker connection; safe to call more than once."""
        self._closed = True

    @abc.abstractmethod
    def delete_queue(self, queue: QueueWrapper) -> None:
        """Delete a queue and its subscriptions."""

    @abc.abstractmethod
    def delete_topic(self, topic: TopicWrapper) -> None:
        """Delete a topic and its subscriptions."""

    # -- capabilities with defaults -----------------------------------------

    def publish_batch_to_queue(self, messages: Sequence[Message], queue: QueueWrapper) -> None:
        """Publish several messages to one queue.

        Raises:
            BatchPublishError: some messages were not published; it lists them.
        """
        for message in messages:
            self.publish_to_queue(message, queue)

    def publish_batch_to_topic(self, messages: Sequence[Message], topic: TopicWrapper) -> None:
        """Publish several messages to one topic."""
        for message in messages:
            self.publish_to_topic(message, topic)

    def publish_delayed_to_queue(self, message: Message, queue: QueueWrapper, delay: float) -> None:
        """Publish a message that stays invisible for ``delay`` seconds.

        Raises:
            UnsupportedOperationError: the backend cannot delay messages.
        """
        if delay <= 0:
            self.publish_to_queue(message, queue)
            return
        raise UnsupportedOperationError(f"{type(self).__name__} cannot delay a message")

    def release(self, message: Message, delay: float = 0.0) -> None:
        """Hand a received message back, to be delivered again after ``delay`` seconds.

        The default does nothing to the broker: the message comes back when
        its visibility timeout expires, which is what an unacknowledged
        message does on every backend.
        """

    def extend_visibility(self, message: Message, seconds: float) -> None:
        """Keep a received message hidden for ``seconds`` from now, while its handler runs.

        The dispatcher calls it periodically for every message it holds, so a
        handler longer than the queue's visibility timeout is never handed to
        a second worker. A message already acknowledged, released or handed
        out again is left alone.

        The default does nothing: on a backend that does not override it, a
        handler that outlives the visibility timeout may see its message
        delivered again to another worker (an idempotency store then holds the
        second delivery back until the first is done).
        """

    def extend_visibility_batch(self, messages: Sequence[Message], seconds: float) -> None:
        """Keep several received messages hidden for ``seconds`` from now.

        The default calls ``extend_visibility`` for each, going on past a
        failure and raising the first one at the end; a backend with a batch
        call (SQS's ``ChangeMessageVisibilityBatch``) overrides it, so that a
        worker holding many messages renews them all in time.
        """
        first_error: Exception | None = None
        for message in messages:
            try:
                self.extend_visibility(message, seconds)
            except Exception as e:  # the others must still be extended
                first_error = first_error or e
        if first_error is not None:
            raise first_error

    def visibility_timeout_of(self, queue: QueueWrapper) -> float | None:
        """Return the seconds a message received from ``queue`` stays hidden, as the broker has it.

        The dispatcher asks when it did not declare the queue itself (or
        declared it without a ``visibility_timeout``), so that it renews its
        messages before the broker would hand them out again. ``None`` (the
        default): the backend cannot tell, and the dispatcher assumes its own
        ``visibility_timeout`` or ``default_visibility_timeout``.

        Raises:
            QueueNotFoundError: the queue does not exist.
        """
        return None

    def queue_stats(self, queue: QueueWrapper) -> QueueStats:
        """Return how many messages the queue holds ready, in flight and delayed.

        Raises:
            QueueNotFoundError: the queue does not exist.
            UnsupportedOperationError: the backend cannot tell (the default).
        """
        raise UnsupportedOperationError(f"{type(self).__name__} cannot count a queue's messages")

    def queue_depth(self, queue: QueueWrapper) -> int:
        """Return how many messages the queue holds, not yet acknowledged.

        The default adds up what ``queue_stats`` tells: ready, in flight and
        delayed (a broker that counts only ready ones, such as RabbitMQ, says so).

        Raises:
            QueueNotFoundError: the queue does not exist.
            UnsupportedOperationError: the backend cannot tell.
        """
        stats = self.queue_stats(queue)
        return sum(n for n in (stats.ready, stats.in_flight, stats.delayed) if n is not None)

    def browse_messages(self, queue: QueueWrapper, limit: int = 10) -> list[Message]:
        """Return up to ``limit`` of the queue's messages without receiving them.

        No delivery is counted.

        ``melange.dead_letters.peek`` uses it where a receive would wear a
        message away (RabbitMQ's quorum queues count returns).

        Raises:
            QueueNotFoundError: the queue does not exist.
            UnsupportedOperationError: the backend cannot browse (the default);
                ``peek`` then receives and releases.
        """
        raise UnsupportedOperationError(f"{type(self).__name__} cannot browse a queue")

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        """Acknowledge several received messages."""
        for message in messages:
            self.acknowledge(message)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close_connection()


def checked_max_messages(max_messages: int) -> int:
    """Return a receive's ``max_messages``, which every backend refuses below 1.

    Raises:
        InvalidArgumentError: ``max_messages`` below 1.
    """
    if max_messages < 1:
        raise InvalidArgumentError(f"max_messages must be at least 1, not {max_messages!r}")
    return max_messages


def checked_filter_events(filter_events: object) -> frozenset[str] | None:
    """Return the manifests ``declare_queue(filter_events=...)`` lets through (``None``: no filter).

    Every backend's rule (RabbitMQ adds its routing-key limit, SNS its count):
    a queue subscribed with a list gets, from the topics bound in that call,
    only messages whose manifest is listed; ``None`` asks for no filter and
    leaves an existing one as it is.

    Raises:
        ConfigurationError: not a list of manifests (non-empty strings), or an empty one.
    """
    if filter_events is None:
        return None
    if isinstance(filter_events, str | bytes) or not isinstance(filter_events, Iterable):
        raise ConfigurationError(
            f"filter_events must be a list of manifests, not {type(filter_events).__name__}"
        )
    manifests = list(filter_events)
    bad = [m for m in manifests if type(m) is not str or not m]
    if bad:
        raise ConfigurationError(
            f"filter_events must hold manifests (non-empty strings), not {bad[0]!r}"
        )
    if not manifests:
        raise ConfigurationError("filter_events must name at least one manifest")
    return frozenset(manifests)
