"""RabbitMQ over pika: fanout exchanges for topics, quorum queues, publisher confirms.

See docs/backends/rabbitmq.md for the topology, the delivery limit, how the
visibility timeout is emulated, delays, reconnects and the threading model.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from melange.backends.interfaces import MessagingBackend, QueueStats, checked_max_messages
from melange.backends.naming import check_rabbitmq_name
from melange.backends.rabbitmq._browse import browse
from melange.backends.rabbitmq._codec import outgoing, routing_key_of, to_message
from melange.backends.rabbitmq._confirms import OnReturn, Outgoing, PublishBatch
from melange.backends.rabbitmq._connection import ConnectionThread, Declared, Step, TopologyKey
from melange.backends.rabbitmq._errors import NOT_FOUND, translate
from melange.backends.rabbitmq._filters import (
    checked_manifests,
    filter_names,
    filter_path,
    filter_steps,
    probe,
    release,
    ride,
)
from melange.backends.rabbitmq._subscription import (
    ACK,
    REJECT,
    REQUEUE,
    QueueSubscription,
    Receipt,
    receipt_of,
)
from melange.backends.rabbitmq._topology import (
    MAX_DELAY_SECONDS,
    QUORUM,
    bind,
    declare_exchange,
    declare_queue,
    delay_bucket_ms,
    delay_route,
    delete_exchange,
    delete_queue,
    parse_url,
    queue_arguments,
)
from melange.backends.routing import report_unrouted
from melange.exceptions import (
    BackendError,
    BatchPublishError,
    ConfigurationError,
    MissingExtraError,
    UnsupportedOperationError,
)
from melange.models import Message, QueueWrapper, TopicWrapper

try:
    import pika
    import pika.exceptions as pika_errors
except ImportError as e:
    raise MissingExtraError("pika", "rabbitmq") from e

__all__ = ["RabbitMQBackend"]

log = logging.getLogger("melange.backends.rabbitmq")

_PRECONDITION_FAILED = 406
_RESOURCE_LOCKED = 405
_LOCK_PAUSE = 0.02  # seconds between tries at a filter lock another process holds
_PER_QUEUE = (Declared.QUEUE, Declared.BINDING)


class RabbitMQBackend(MessagingBackend):
    """Topics are durable fanout exchanges; queues are durable quorum queues.

    Every publish is persistent and waits for the broker's confirm (up to
    ``confirm_timeout`` seconds): a message that was not confirmed raises; one
    published to a topic no queue subscribes to is reported (``report_unrouted``).
    Consuming uses ``basic_consume`` with ``prefetch`` messages buffered per
    queue. A message handed out and not acknowledged is requeued after the
    queue's visibility timeout; after ``max_receive_count`` receives it goes to
    the dead-letter queue (the quorum queue's ``x-delivery-limit``). One I/O
    thread owns the connection, so a backend may be shared by threads; it
    reconnects with backoff and declares again what it declared.

    Raises:
        ConfigurationError: the URL or an option is invalid.
    """

    messaging_system = "rabbitmq"
    max_delay_seconds = float(MAX_DELAY_SECONDS)

    def __init__(
        self,
        parameters: Any = "amqp://guest:guest@localhost:5672/%2F",
        *,
        prefetch: int | None = None,
        heartbeat: int | None = None,
        confirm_timeout: float | None = None,
        operation_timeout: float | None = None,
        visibility_timeout: float | None = None,
        idle_release: float | None = None,
        reconnect_delay: float = 0.2,
        max_reconnect_delay: float = 10.0,
    ) -> None:
        options: dict[str, Any] = {}
        nodes: list[Any]
        if isinstance(parameters, str):
            nodes, options = parse_url(parameters)
        elif isinstance(parameters, pika.connection.Parameters):
            nodes = [copy.copy(parameters)]
        elif (
            isinstance(parameters, list | tuple)
            and parameters
            and all(isinstance(p, pika.connection.Parameters) for p in parameters)
        ):
            nodes = [copy.copy(p) for p in parameters]
        else:
            raise ConfigurationError(
                "expected an AMQP URL, pika connection parameters, or a list of them"
            )

        def pick(value: Any, name: str, default: Any) -> Any:
            return value if value is not None else options.get(name, default)

        self.prefetch: int = pick(prefetch, "prefetch", 100)
        self.confirm_timeout: float = pick(confirm_timeout, "confirm_timeout", 30.0)
        self.operation_timeout: float = pick(operation_timeout, "operation_timeout", 30.0)
        self.default_visibility_timeout = pick(visibility_timeout, "visibility_timeout", 30.0)
        self.idle_release: float = pick(idle_release, "idle_release", 30.0)
        beat = pick(heartbeat, "heartbeat", None)
        for node in nodes:
            node.heartbeat = beat if beat is not None else (node.heartbeat or 30)
        if self.prefetch < 1:
            raise ConfigurationError("prefetch must be at least 1")
        #: The nodes tried in turn (a cluster's, or one); ``parameters`` is the first.
        self.nodes: tuple[Any, ...] = tuple(nodes)
        self.parameters = nodes[0]
        self._io = ConnectionThread(
            nodes, reconnect_delay=reconnect_delay, max_reconnect_delay=max_reconnect_delay
        )
        self._lock = threading.Lock()
        self._subscriptions: dict[str, QueueSubscription] = {}
        self._settings: dict[str, tuple[float, int | None, bool]] = {}
        self._known_queues: set[str] = set()
        self._known_exchanges: set[str] = set()
        self._delay_routes: set[int] = set()
        self._filtered: set[tuple[str, str]] = set()  # (queue, topic) declared with filter_events
        # The filter lock is an exclusive queue, which this backend's threads share.
        self._filter_lock = threading.Lock()
        # A finalizer on the connection thread (not on self) lets an abandoned backend be collected.
        self._finalizer = weakref.finalize(self, self._io.close)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RabbitMQBackend:
        """Build from ``amqp://user:pass@host:5672/vhost`` (or ``amqps://``).

        pika's query options (``heartbeat``, ``connection_attempts``…) and
        melange's (``prefetch``, ``confirm_timeout``, ``operation_timeout``,
        ``visibility_timeout``, ``idle_release``) may be given in the query.

        Raises:
            ConfigurationError: the URL is not an AMQP URL or has a bad option.
        """
        return cls(url, **options)

    # -- topology ---------------------------------------------------------------------

    def _run(self, steps: list[Step], *, queue: str | None = None, topic: str | None = None) -> Any:
        try:
            return self._io.run_steps(steps, self.operation_timeout)
        except (pika_errors.AMQPError, OSError) as e:
            raise translate(e, queue=queue, topic=topic) from e

    def _remember(self, key: TopologyKey, steps: list[Step]) -> None:
        with self._io.topology_lock:
            self._io.topology[key] = steps

    def _forget(self, match: Callable[[TopologyKey], bool]) -> None:
        with self._io.topology_lock:
            for key in [k for k in self._io.topology if match(k)]:
                del self._io.topology[key]

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        """Declare a durable fanout exchange.

        Raises:
            ConfigurationError: an exchange of that name exists with another type.
            BackendConnectionError: RabbitMQ cannot be reached.
        """
        check_rabbitmq_name(topic_name)
        steps = [declare_exchange(topic_name)]
        self._run(steps, topic=topic_name)
        self._remember(TopologyKey(Declared.EXCHANGE, topic_name), steps)
        self._known_exchanges.add(topic_name)
        return TopicWrapper(topic_name)

    def get_queue(self, queue_name: str) -> QueueWrapper:
        """Check that the queue exists (a passive declare) and return it.

        Raises:
            QueueNotFoundError: the queue does not exist.
            BackendConnectionError: RabbitMQ cannot be reached.
        """
        check_rabbitmq_name(queue_name)
        self._run([declare_queue(queue_name, None, passive=True)], queue=queue_name)
        self._known_queues.add(queue_name)
        return QueueWrapper(queue_name)

    def queue_depth(self, queue: QueueWrapper) -> int:
        """Return how many messages the queue holds ready (not counting unacknowledged ones).

        Raises:
            QueueNotFoundError: the queue does not exist.
        """
        name = queue.unwrap()
        [reply] = self._run([declare_queue(name, None, passive=True)], queue=name)
        count: int = reply.method.message_count
        return count

    def queue_stats(self, queue: QueueWrapper) -> QueueStats:
        """Return the queue's ready count; AMQP 0-9-1 does not tell in-flight or delayed ones.

        Raises:
            QueueNotFoundError: the queue does not exist.
        """
        return QueueStats(ready=self.queue_depth(queue))

    def visibility_timeout_of(self, queue: QueueWrapper) -> float | None:
        """Return the visibility timeout this backend emulates for the queue, if it was declared.

        RabbitMQ has none of its own: it is what ``declare_queue`` set in this
        process; for a queue declared elsewhere, ``None`` (the dispatcher's
        own setting then rules, and the emulation follows its extensions).
        """
        with self._lock:
            settings = self._settings.get(queue.unwrap())
        return None if settings is None else settings[0]

    def _ensure_queue(self, name: str, arguments: dict[str, Any] | None) -> None:
        """Declare a queue with melange's arguments; with none, accept one that exists as it is."""
        steps = [declare_queue(name, arguments or QUORUM)]
        try:
            self._io.run_steps(steps, self.operation_timeout)
        except pika_errors.ChannelClosedByBroker as e:
            if arguments is not None or e.reply_code != _PRECONDITION_FAILED:
                raise translate(e, queue=name) from e
            # It exists with other arguments (classic, or another dead-letter setup).
            steps = [declare_queue(name, None, passive=True)]
            self._run(steps, queue=name)
        except (pika_errors.AMQPError, OSError) as e:
            raise translate(e, queue=name) from e
        self._remember(TopologyKey(Declared.QUEUE, name), steps)
        self._known_queues.add(name)

    def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        visibility_timeout: float | None = None,
        max_receive_count: int | None = None,
        filter_events: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Declare a quorum queue (and its dead-letter queue) bound to the topics' exchanges.

        With a dead-letter queue, ``max_receive_count`` becomes the queue's
        ``x-delivery-limit``. Without one, an existing queue is used as it is.

        ``filter_events`` (manifests): from the topics bound in this call, the
        queue gets only messages with one of these manifests. Topic publishes
        carry the manifest as routing key; the queue is bound, instead of to
        the topic, to a direct exchange of its own bound to the topic, once per
        manifest (``_filters``). Declaring again with another list replaces it
        with no gap in delivery, whichever process bound the earlier one;
        ``None`` leaves a filtered subscription filtered.

        Raises:
            ConfigurationError: the queue exists with other arguments; ``filter_events``
                is not a non-empty list of manifests that can be routing keys.
            BackendConnectionError: RabbitMQ cannot be reached.
            BackendError: another process held the filter's lock past ``operation_timeout``.
            InvalidNameError: a name RabbitMQ cannot take.
        """
        check_rabbitmq_name(queue_name)
        if dead_letter_queue_name is not None:
            check_rabbitmq_name(dead_letter_queue_name)
        manifests = checked_manifests(filter_events)
        arguments = None
        limit = None
        if dead_letter_queue_name is not None:
            limit = max_receive_count or self.default_max_receive_count
            arguments = queue_arguments(dead_letter_queue_name, limit)
            self._ensure_queue(dead_letter_queue_name, None)
        self._ensure_queue(queue_name, arguments)
        for topic in topics_to_bind:
            name = topic.unwrap()
            if manifests is None:
                binding = self._subscribe(queue_name, name)
            else:
                binding = self._subscribe_filtered(queue_name, name, manifests)
            self._remember(TopologyKey(Declared.EXCHANGE, name), [declare_exchange(name)])
            self._remember(TopologyKey(Declared.BINDING, queue_name, name), binding)
            self._known_exchanges.add(name)
        with self._lock:
            visibility, earlier_limit, dead_letters = self._settings.get(
                queue_name, (self.default_visibility_timeout, None, False)
            )
            if visibility_timeout is not None:
                visibility = visibility_timeout
            if dead_letter_queue_name is None:  # declared without: it keeps what it had
                limit = earlier_limit
            else:
                dead_letters = True
            self._settings[queue_name] = (visibility, limit, dead_letters)
            subscription = self._subscriptions.get(queue_name)
        if subscription is not None:
            self._configure(subscription)
        dead_letter = QueueWrapper(dead_letter_queue_name) if dead_letter_queue_name else None
        return QueueWrapper(queue_name), dead_letter

    def _subscribe(self, queue: str, topic: str) -> list[Step]:
        """Bind the queue to the topic, or to its filter exchange if it has one; return the steps.

        Declaring without ``filter_events`` leaves a filter in place, as on SQS.
        """
        exchange = filter_names(topic, queue).exchange
        try:
            self._io.run_steps([declare_exchange(topic), probe(exchange)], self.operation_timeout)
            steps = [ride(exchange, topic)]
        except pika_errors.ChannelClosedByBroker as e:
            if e.reply_code != NOT_FOUND:
                raise translate(e, topic=topic) from e
            steps = [bind(queue, topic)]
        except (pika_errors.AMQPError, OSError) as e:
            raise translate(e, topic=topic) from e
        self._run(steps, queue=queue, topic=topic)
        return steps

    def _subscribe_filtered(self, queue: str, topic: str, manifests: frozenset[str]) -> list[Step]:
        """Make the queue's filter on the topic exactly ``manifests``; return the steps to replay.

        Raises:
            BackendError: another process held the filter's lock past ``operation_timeout``.
        """
        names = filter_names(topic, queue)
        steps = [declare_exchange(topic), *filter_steps(names, topic, queue, manifests)]
        deadline = time.monotonic() + self.operation_timeout
        with self._filter_lock:
            while True:
                try:
                    self._io.run_steps(steps, self.operation_timeout)
                    break
                except pika_errors.ChannelClosedByBroker as e:
                    if e.reply_code != _RESOURCE_LOCKED:
                        self._give_back(names.lock)
                        raise translate(e, queue=queue, topic=topic) from e
                    if time.monotonic() > deadline:
                        raise BackendError(
                            f"the filter of queue {queue!r} on topic {topic!r} stayed locked"
                            f" by another connection ({names.lock!r}) for"
                            f" {self.operation_timeout:g} s"
                        ) from e
                    time.sleep(_LOCK_PAUSE)
                except (pika_errors.AMQPError, OSError) as e:
                    # The connection went: the broker drops its exclusive queue, the lock.
                    raise translate(e, queue=queue, topic=topic) from e
            self._filtered.add((queue, topic))
        return filter_path(names.exchange, topic, queue, manifests)

    def _give_back(self, lock: str) -> None:
        """Delete the filter lock after a step failed on its channel (another's lock stays)."""
        try:
            self._io.run_steps([release(lock)], self.operation_timeout)
        except (pika_errors.AMQPError, OSError, BackendError) as e:
            # Held by this connection, it blocks other processes' declares until it closes.
            log.warning("could not give back the filter lock %r: %s", lock, e)

    def delete_queue(self, queue: QueueWrapper) -> None:
        """Delete the queue, its bindings and its messages.

        Raises:
            BackendConnectionError: RabbitMQ cannot be reached.
        """
        name = queue.unwrap()
        with self._lock:
            subscription = self._subscriptions.pop(name, None)
            self._settings.pop(name, None)
        self._known_queues.discard(name)
        # Its filter exchanges are auto-delete: they go with the queue's bindings.
        with self._filter_lock:
            self._filtered = {pair for pair in self._filtered if pair[0] != name}
        self._forget(lambda key: key.kind in _PER_QUEUE and key.name == name)
        if subscription is not None:
            self._io.call_soon(lambda: self._drop_subscription(subscription))
        self._run([delete_queue(name)], queue=name)

    def delete_topic(self, topic: TopicWrapper) -> None:
        """Delete the exchange and its bindings, and the filter exchanges this backend made for it.

        Raises:
            BackendConnectionError: RabbitMQ cannot be reached.
        """
        name = topic.unwrap()
        with self._filter_lock:
            filters = [filter_names(name, q).exchange for q, t in self._filtered if t == name]
            self._filtered = {pair for pair in self._filtered if pair[1] != name}
        self._known_exchanges.discard(name)
        self._forget(
            lambda key: (
                key.name == name
                if key.kind is Declared.EXCHANGE
                else key.kind is Declared.BINDING and key.source == name
            )
        )
        self._run([*map(delete_exchange, filters), delete_exchange(name)], topic=name)

    # -- publishing -------------------------------------------------------------------

    def _send(self, items: list[Outgoing], messages: Sequence[Message]) -> None:
        batch = PublishBatch(len(items))
        self._io.publish(items, batch)
        failures = batch.wait(self.confirm_timeout)
        for index in batch.unrouted:
            report_unrouted(self, messages[index], items[index][0])
        if not failures:
            return
        if len(items) == 1:
            raise failures[0]
        raise BatchPublishError([(messages[i], str(failures[i])) for i in sorted(failures)])

    def _check_queue(self, name: str) -> None:
        if name not in self._known_queues:
            self.get_queue(name)

    def _check_topic(self, name: str) -> None:
        if name not in self._known_exchanges:
            # A publish to a missing exchange would close the shared confirm channel.
            self._run([declare_exchange(name, passive=True)], topic=name)
            self._known_exchanges.add(name)

    def publish_to_topic(
        self,
        message: Message,
        topic: TopicWrapper,
        extra_attributes: dict[str, Any] | None = None,
    ) -> None:
        """Publish persistently to the topic's exchange and wait for the confirm.

        ``extra_attributes`` are added to the AMQP headers; the routing key is
        the manifest, for the queues subscribed with ``filter_events``. When no
        queue takes the message, the broker returns it and ``report_unrouted``
        tells (``message_unrouted``); that is not an error.

        Raises:
            TopicNotFoundError: the exchange does not exist.
            PublishError: the broker did not confirm the message.
        """
        name = topic.unwrap()
        self._check_topic(name)
        self._send(
            [
                outgoing(
                    message,
                    name,
                    routing_key_of(message.manifest),
                    on_return=OnReturn.REPORT,
                    extra_headers=extra_attributes,
                )
            ],
            (message,),
        )

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        """Publish persistently to one queue (default exchange, mandatory) and wait for the confirm.

        Raises:
            QueueNotFoundError: the queue does not exist.
            PublishError: the broker did not confirm the message.
        """
        name = queue.unwrap()
        self._check_queue(name)
        self._send([outgoing(message, "", name)], (message,))

    def publish_batch_to_queue(self, messages: Sequence[Message], queue: QueueWrapper) -> None:
        """Publish many messages with all their confirms in flight; each one is checked.

        Raises:
            QueueNotFoundError: the queue does not exist.
            BatchPublishError: some messages were not confirmed; it lists them.
        """
        if not messages:
            return
        name = queue.unwrap()
        self._check_queue(name)
        self._send([outgoing(m, "", name) for m in messages], messages)

    def publish_batch_to_topic(self, messages: Sequence[Message], topic: TopicWrapper) -> None:
        """Publish many messages to a topic with all their confirms in flight.

        Each one no queue took is reported, as by ``publish_to_topic``.

        Raises:
            TopicNotFoundError: the exchange does not exist.
            BatchPublishError: some messages were not confirmed; it lists them.
        """
        if not messages:
            return
        name = topic.unwrap()
        self._check_topic(name)
        items = [
            outgoing(m, name, routing_key_of(m.manifest), on_return=OnReturn.REPORT)
            for m in messages
        ]
        self._send(items, messages)

    def publish_delayed_to_queue(self, message: Message, queue: QueueWrapper, delay: float) -> None:
        """Publish a message that reaches the queue after ``delay`` seconds (rounded up).

        It waits in a holding queue whose TTL dead-letters it into the queue.

        Raises:
            QueueNotFoundError: the queue does not exist.
            PublishError: the broker did not confirm the message.
            UnsupportedOperationError: over ``max_delay_seconds`` (a TTL's limit, ~49.7 days).
        """
        if delay > self.max_delay_seconds:
            raise UnsupportedOperationError(
                f"RabbitMQ delays a message at most {self.max_delay_seconds:.0f} s, not {delay} s"
            )
        name = queue.unwrap()
        self._check_queue(name)
        if delay <= 0:
            self._send([outgoing(message, "", name)], (message,))
            return
        self._send_delayed(message, name, delay, receives=0)

    def _send_delayed(self, message: Message, queue: str, delay: float, *, receives: int) -> None:
        ttl = delay_bucket_ms(delay)
        route, steps = delay_route(ttl)
        if ttl not in self._delay_routes:
            self._run(steps, queue=route, topic=route)
            self._remember(TopologyKey(Declared.DELAY, route), steps)
            self._delay_routes.add(ttl)
        item = outgoing(message, route, queue, receives=receives)
        self._send([item], (message,))

    # -- consuming --------------------------------------------------------------------

    def _subscription(self, name: str) -> QueueSubscription:
        subscription = self._subscriptions.get(name)
        if subscription is None:
            with self._lock:
                subscription = self._subscriptions.get(name)
                if subscription is None:
                    subscription = QueueSubscription(
                        self._io,
                        name,
                        prefetch=self.prefetch,
                        visibility_timeout=self.default_visibility_timeout,
                        idle_release=self.idle_release,
                    )
                    self._configure(subscription)
                    self._subscriptions[name] = subscription
                    self._io.observers.append(subscription)
        return subscription

    def _configure(self, subscription: QueueSubscription) -> None:
        settings = self._settings.get(subscription.queue)
        if settings is not None:
            visibility, limit, dead_letters = settings
            subscription.visibility_timeout = visibility
            subscription.max_receive_count = limit
            subscription.dead_letters = dead_letters

    def _drop_subscription(self, subscription: QueueSubscription) -> None:
        if subscription in self._io.observers:
            self._io.observers.remove(subscription)
        subscription.discard()

    def retrieve_messages(
        self,
        queue: QueueWrapper,
        *,
        max_messages: int = 10,
        wait_seconds: float = 0.0,
        visibility_timeout: float | None = None,
    ) -> list[Message]:
        """Receive up to ``max_messages`` (10), waiting up to ``wait_seconds`` (0) for the first.

        Each delivery is decoded on its own: one that cannot be read comes back
        undecodable (its ``DECODE_ERROR`` header says why), never as an error.
        ``visibility_timeout`` requeues these that many seconds from now
        instead of after the queue's emulated visibility timeout.

        Raises:
            QueueNotFoundError: the queue does not exist.
            InvalidArgumentError: ``max_messages`` below 1.
            BackendConnectionError: RabbitMQ cannot be reached.
        """
        checked_max_messages(max_messages)
        name = queue.unwrap()
        subscription = self._subscription(name)
        if not subscription.active:
            try:
                subscription.start(self.operation_timeout)
            except (pika_errors.AMQPError, OSError) as e:
                raise translate(e, queue=name) from e
        messages = []
        limit = subscription.max_receive_count if subscription.dead_letters else None
        for receipt, delivery in subscription.take(max_messages, wait_seconds, visibility_timeout):
            message = to_message(receipt, delivery)
            if limit is not None and message.receive_count > limit:
                # Counted across releases: the broker's own limit restarts on each new copy.
                subscription.settle([receipt], REJECT)
                continue
            messages.append(message)
        return messages

    def acknowledge(self, message: Message) -> None:
        """Acknowledge on the channel the message came from; a stale receipt is a no-op.

        Raises:
            ForeignMessageError: the message was not received from this backend.
        """
        receipt = receipt_of(message)
        receipt.subscription.settle((receipt,), ACK)

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        """Acknowledge several messages, with ``multiple=True`` where the delivery tags allow."""
        groups: dict[QueueSubscription, list[Receipt]] = {}
        for message in messages:
            receipt = receipt_of(message)
            groups.setdefault(receipt.subscription, []).append(receipt)
        for subscription, receipts in groups.items():
            subscription.settle(receipts, ACK)

    def extend_visibility(self, message: Message, seconds: float) -> None:
        """Requeue a received message ``seconds`` from now rather than at its visibility timeout.

        Thread-safe. A message acknowledged, released or requeued already (or
        received before a reconnect) is left alone.

        Raises:
            ForeignMessageError: the message was not received from this backend.
        """
        receipt = receipt_of(message)
        receipt.subscription.extend(receipt, seconds)

    def release(self, message: Message, delay: float = 0.0) -> None:
        """Hand a received message back, to come again after ``delay`` seconds.

        Without a delay it is requeued (the broker counts the receive); with
        one, a copy carrying the receive count goes through a holding queue and
        the original is acknowledged once the copy is confirmed. A message at
        its queue's ``max_receive_count`` goes to the dead-letter queue instead.
        """
        receipt = receipt_of(message)
        subscription = receipt.subscription
        limit = subscription.max_receive_count
        if subscription.dead_letters and limit is not None and message.receive_count >= limit:
            subscription.settle((receipt,), REJECT)
            return
        if delay <= 0:
            subscription.settle((receipt,), REQUEUE)
            return
        generation, owned = subscription.claim((receipt,))
        if not owned:
            return  # already requeued (visibility timeout or lost channel)
        try:
            self._send_delayed(message, subscription.queue, delay, receives=message.receive_count)
        except BackendError as e:
            log.warning("could not delay %s (%s); requeueing it now", message.message_id, e)
            subscription.settle_claimed(generation, owned, REQUEUE)
            return
        subscription.settle_claimed(generation, owned, ACK)

    def browse_messages(self, queue: QueueWrapper, limit: int = 10) -> list[Message]:
        """Return up to ``limit`` messages of ``queue`` without adding a delivery to any.

        Each is put back at the tail of the queue as an exact copy before the
        original is acknowledged (``_browse``); the messages returned carry no
        receipt. ``melange dlq peek`` reads dead letters this way.

        Raises:
            QueueNotFoundError: the queue does not exist.
            BackendConnectionError: RabbitMQ cannot be reached.
        """
        name = queue.unwrap()
        try:
            deliveries = browse(self.current_node, name, limit)
        except (pika_errors.AMQPError, OSError) as e:
            raise translate(e, queue=name) from e
        return [to_message(None, delivery) for delivery in deliveries]  # type: ignore[arg-type]

    @property
    def current_node(self) -> Any:
        """Return pika's parameters of the node connected to (or tried next), one of ``nodes``."""
        return self._io.parameters

    def close_connection(self) -> None:
        """Stop consuming (buffered messages go back uncounted) and close; idempotent."""
        super().close_connection()
        self._finalizer()
