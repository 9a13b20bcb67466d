"""The consume loop: deserialize, route to consumers, acknowledge, retry, dead-letter."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from melange import signals
from melange.backends.interfaces import MessagingBackend
from melange.consumers import Consumer
from melange.context import _current
from melange.dead_letters import DeadLetterer, Stage
from melange.exceptions import SerializationError, UnknownManifestError
from melange.idempotency.base import IdempotencyStore
from melange.manifests import manifest_of
from melange.models import Message, QueueWrapper
from melange.policies import AckPolicy, RetryPolicy
from melange.serializers import SerializerRegistry

__all__ = ["MessageDispatcher", "SimpleMessageDispatcher"]

ExceptionHook = Callable[[BaseException], None]
_POLL_SECONDS = 1.0
_REMEMBERED_PARTIALS = 10_000


# (consumer, its bound handler for one event class, whether it takes the message)
_Route = tuple[Consumer, Callable[..., Any], bool]


@dataclass(slots=True)
class _QueueState:
    name: str
    wrapper: QueueWrapper
    dead_letters: DeadLetterer


class MessageDispatcher:
    """Pulls messages from a queue and hands each event to the consumers that accept it.

    By default (``AckPolicy.AFTER_SUCCESS``) a message is acknowledged only
    when every accepting consumer succeeded. A failing consumer is retried as
    ``retry`` says, then the message goes to the dead-letter queue with its
    original content and the headers ``error_type``, ``error_message``,
    ``attempts`` and ``source_queue``. A message that cannot be deserialized
    is dead-lettered at once; one that no listener accepts is acknowledged
    and reported as skipped. With an ``idempotency`` store a redelivered
    message runs each consumer once.
    """

    def __init__(
        self,
        backend: MessagingBackend,
        consumers: Iterable[Consumer] | None = None,
        *,
        serializers: SerializerRegistry | None = None,
        idempotency: IdempotencyStore | None = None,
        ack_policy: AckPolicy = AckPolicy.AFTER_SUCCESS,
        retry: RetryPolicy | None = None,
        batch_size: int = 10,
    ) -> None:
        self.backend = backend
        self.serializers = serializers if serializers is not None else SerializerRegistry()
        self.idempotency = idempotency
        self.ack_policy = ack_policy
        self.retry = retry if retry is not None else RetryPolicy()
        self.batch_size = batch_size
        self._consumers: list[Consumer] = []
        self._routes: dict[type, tuple[_Route, ...]] = {}
        self._queues: dict[str, _QueueState] = {}
        self._partials: OrderedDict[str, set[str]] = OrderedDict()
        self._lock = threading.Lock()
        for consumer in consumers or ():
            self.attach_consumer(consumer)

    # -- consumers and topology ----------------------------------------------------

    def attach_consumer(self, consumer: Consumer) -> None:
        """Add a consumer; its event classes (and their known subclasses) become readable."""
        with self._lock:
            self._consumers.append(consumer)
            self._routes = {}
        self._register_event_types()

    def unattach_consumer(self, consumer: Consumer) -> None:
        """Remove a consumer; its events are skipped from now on unless another accepts them."""
        with self._lock:
            self._consumers.remove(consumer)
            self._routes = {}

    @property
    def consumers(self) -> tuple[Consumer, ...]:
        """Return the attached consumers."""
        return tuple(self._consumers)

    def event_types(self) -> list[type]:
        """Return every class some consumer accepts: its listener types and their subclasses."""
        seen: dict[type, None] = {}
        pending = [t for consumer in self._consumers for t in consumer.accepted_types()]
        while pending:
            cls = pending.pop()
            if cls in seen or cls.__module__ == "builtins":
                continue
            seen[cls] = None
            pending.extend(cls.__subclasses__())
        return list(seen)

    def topics(self) -> list[str]:
        """Return the manifest topics a queue of this dispatcher subscribes to."""
        return sorted({manifest_of(cls) for cls in self.event_types()})

    def declare(
        self,
        queue: str,
        *,
        topics: Iterable[str] = (),
        dead_letter_queue_name: str | None = None,
        **queue_options: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Create ``queue`` and its dead-letter queue, subscribed to every accepted event's topic.

        Safe to call again. ``topics`` adds subscriptions by name; other options
        (``visibility_timeout``, ``max_receive_count``…) go to ``declare_queue``.
        By default the broker's own dead-letter limit is one receive beyond the
        retry policy's, so the dispatcher dead-letters first, with the error headers.
        """
        self._register_event_types()
        names = sorted(set(self.topics()) | set(topics))
        wrappers = [self.backend.declare_topic(name) for name in names]
        queue_options.setdefault("max_receive_count", self.retry.max_deliveries + 1)
        dead_letter_name = dead_letter_queue_name or f"{queue}-dlq"
        wrapper, dead_letter = self.backend.declare_queue(
            queue, *wrappers, dead_letter_queue_name=dead_letter_name, **queue_options
        )
        state = _QueueState(
            queue, wrapper, DeadLetterer(self.backend, queue, dead_letter_name, dead_letter)
        )
        with self._lock:
            self._queues[queue] = state
        return wrapper, dead_letter

    # -- consuming ---------------------------------------------------------------------

    def consume_loop(
        self,
        queue: str,
        *,
        max_messages: int | None = None,
        idle_timeout: float | None = None,
        stop_event: threading.Event | None = None,
        on_exception: ExceptionHook | None = None,
        after_consume: Callable[[], None] | None = None,
    ) -> int:
        """Consume from ``queue`` until told to stop; return how many messages were handled.

        Stops after ``max_messages``, after ``idle_timeout`` seconds without a
        message (0: as soon as the queue is empty), or when ``stop_event`` is
        set. ``on_exception`` is called with each exception a handler raises;
        ``after_consume`` after each message.

        Raises:
            QueueNotFoundError: the queue does not exist.
            BackendError: the backend failed.
        """
        state = self._queue_state(queue)
        handled = 0
        idle_since = time.monotonic()
        while not (stop_event is not None and stop_event.is_set()):
            wanted = self.batch_size
            if max_messages is not None:
                if handled >= max_messages:
                    break
                wanted = min(wanted, max_messages - handled)
            wait = _POLL_SECONDS
            if idle_timeout is not None:
                wait = min(wait, max(0.0, idle_timeout - (time.monotonic() - idle_since)))
            batch = self.backend.retrieve_messages(
                state.wrapper, max_messages=wanted, wait_seconds=wait
            )
            if not batch:
                if idle_timeout is not None and time.monotonic() - idle_since >= idle_timeout:
                    break
                continue
            self.dispatch_batch(
                batch, queue, on_exception=on_exception, after_consume=after_consume
            )
            handled += len(batch)
            idle_since = time.monotonic()
        return handled

    def dispatch_batch(
        self,
        batch: Sequence[Message],
        queue: str,
        *,
        on_exception: ExceptionHook | None = None,
        after_consume: Callable[[], None] | None = None,
    ) -> None:
        """Handle messages received from ``queue`` and acknowledge them as the policy says."""
        state = self._queue_state(queue)
        policy = self.ack_policy
        if policy is AckPolicy.BEFORE_HANDLE:
            self.backend.acknowledge_batch(batch)
        done: list[Message] = []
        for message in batch:
            if self._dispatch(message, state, on_exception):
                done.append(message)
            if after_consume is not None:
                after_consume()
        if done and policy is not AckPolicy.BEFORE_HANDLE:
            self.backend.acknowledge_batch(done)

    def _dispatch(
        self, message: Message, state: _QueueState, on_exception: ExceptionHook | None
    ) -> bool:
        """Handle one message; return whether it may be acknowledged."""
        if signals.message_received.receivers:
            signals.message_received.send(self, message=message, queue=state.name)
        try:
            event = self._deserialize(message)
        except UnknownManifestError as e:
            return self._skip(message, state, str(e))
        except SerializationError as e:
            if on_exception is not None:
                on_exception(e)
            return state.dead_letters.send(message, e, Stage.DESERIALIZE, attempts=0)
        consumers = self._routes.get(type(event))
        if consumers is None:
            consumers = self._route(type(event))
        if not consumers:
            return self._skip(message, state, f"no listener accepts {type(event).__qualname__}")
        failure = self._run_consumers(consumers, event, message, on_exception)
        if failure is None:
            if signals.message_processed.receivers:
                signals.message_processed.send(self, message=message, event=event, queue=state.name)
            return self.ack_policy is not AckPolicy.MANUAL
        return self._after_failure(message, state, failure)

    def _deserialize(self, message: Message) -> Any:
        serializers = self.serializers
        try:
            return serializers.deserialize(message.content, message.manifest, message.serializer_id)
        except UnknownManifestError:
            # A subclass of an accepted class may have been defined since attach.
            if not self._register_event_types():
                raise
            return serializers.deserialize(message.content, message.manifest, message.serializer_id)

    def _run_consumers(
        self,
        routes: tuple[_Route, ...],
        event: Any,
        message: Message,
        on_exception: ExceptionHook | None,
    ) -> BaseException | None:
        done_before = self._partials.pop(message.message_id, None) if self._partials else None
        failure: BaseException | None = None
        succeeded: set[str] = set(done_before or ())
        token = _current.set(message)
        try:
            for route in routes:
                consumer = route[0]
                if done_before and consumer.consumer_id in done_before:
                    continue
                error = self._run_one(route, event, message, on_exception)
                if error is None:
                    succeeded.add(consumer.consumer_id)
                else:
                    failure = error
        finally:
            _current.reset(token)
        if failure is not None and succeeded:
            self._remember_partial(message.message_id, succeeded)
        return failure

    def _run_one(
        self,
        route: _Route,
        event: Any,
        message: Message,
        on_exception: ExceptionHook | None,
    ) -> BaseException | None:
        consumer, handler, takes_message = route
        store = self.idempotency
        if store is not None:
            try:
                if not store.claim(consumer.consumer_id, message.message_id):
                    if signals.message_skipped.receivers:
                        signals.message_skipped.send(
                            self, message=message, consumer=consumer, reason="duplicate"
                        )
                    return None
            except Exception as e:  # the store is down: retry later rather than run twice
                return self._report(e, message, consumer, on_exception)
        error: BaseException | None = None
        for _ in range(self.retry.immediate_attempts):
            try:
                if takes_message:
                    handler(event, message)
                else:
                    handler(event)
            except Exception as e:
                error = self._report(e, message, consumer, on_exception)
            else:
                error = None
                break
        if store is not None:
            if error is None:
                store.complete(consumer.consumer_id, message.message_id)
            else:
                store.release(consumer.consumer_id, message.message_id)
        return error

    def _report(
        self,
        error: Exception,
        message: Message,
        consumer: Consumer,
        on_exception: ExceptionHook | None,
    ) -> Exception:
        if signals.message_failed.receivers:
            signals.message_failed.send(self, message=message, consumer=consumer, error=error)
        if on_exception is not None:
            on_exception(error)
        return error

    def _after_failure(self, message: Message, state: _QueueState, error: BaseException) -> bool:
        policy = self.ack_policy
        if policy is AckPolicy.MANUAL:
            return False
        delivery = message.receive_count
        attempts = max(delivery, 1) * self.retry.immediate_attempts
        last_delivery = delivery == 0 or delivery >= self.retry.max_deliveries
        if policy is AckPolicy.AFTER_SUCCESS and not last_delivery:
            self.backend.release(message, self.retry.delay_for(delivery))
            return False
        sent = state.dead_letters.send(message, error, Stage.HANDLE, attempts=attempts)
        if not sent and policy is not AckPolicy.BEFORE_HANDLE:
            # Nowhere to put it: keep it on the queue rather than lose it.
            self.backend.release(message, self.retry.max_backoff_seconds)
        return sent

    def _skip(self, message: Message, state: _QueueState, reason: str) -> bool:
        if signals.message_skipped.receivers:
            signals.message_skipped.send(self, message=message, queue=state.name, reason=reason)
        return self.ack_policy is not AckPolicy.MANUAL

    # -- helpers ----------------------------------------------------------------------

    def _route(self, event_type: type) -> tuple[_Route, ...]:
        routes = []
        for consumer in self._consumers:
            found = consumer.handler_for(event_type)
            if found is not None:
                routes.append((consumer, *found))
        accepting = tuple(routes)
        with self._lock:
            self._routes[event_type] = accepting
        return accepting

    def _register_event_types(self) -> bool:
        """Make every accepted class readable; return whether any was new."""
        known = self.serializers.event_types
        added = False
        for cls in self.event_types():
            manifest = manifest_of(cls)
            if manifest not in known:
                known.register(cls)
                added = True
        return added

    def _remember_partial(self, message_id: str, succeeded: set[str]) -> None:
        self._partials[message_id] = succeeded
        while len(self._partials) > _REMEMBERED_PARTIALS:
            self._partials.popitem(last=False)

    def _queue_state(self, queue: str) -> _QueueState:
        state = self._queues.get(queue)
        if state is None:
            wrapper = self.backend.get_queue(queue)
            name = f"{queue}-dlq"
            state = _QueueState(queue, wrapper, DeadLetterer(self.backend, queue, name, None))
            with self._lock:
                self._queues[queue] = state
        return state


class SimpleMessageDispatcher(MessageDispatcher):
    """A dispatcher for one consumer, as in the original library.

    Without a backend it uses ``MELANGE_BACKEND_URL``, else ``sqlite:///melange.db``.
    """

    def __init__(
        self,
        consumer: Consumer,
        serializer_registry: SerializerRegistry | None = None,
        backend: MessagingBackend | None = None,
        **options: Any,
    ) -> None:
        if backend is None:
            from melange.backends import default_backend_url, from_url

            backend = from_url(default_backend_url())
        super().__init__(backend, [consumer], serializers=serializer_registry, **options)
