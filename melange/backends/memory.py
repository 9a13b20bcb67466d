"""An in-process broker with SQS semantics, for tests and single-process apps."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from melange.backends.interfaces import (
    MessagingBackend,
    QueueStats,
    checked_filter_events,
    checked_max_messages,
)
from melange.backends.naming import check_plain_name
from melange.backends.routing import report_unrouted
from melange.exceptions import (
    ForeignMessageError,
    QueueNotFoundError,
    TopicNotFoundError,
)
from melange.models import Message, QueueWrapper, TopicWrapper

__all__ = ["InMemoryMessagingBackend"]

_monotonic = time.monotonic


@dataclass(slots=True)
class _Receipt:
    queue: str
    token: int


@dataclass(slots=True)
class _Queue:
    name: str
    visibility_timeout: float
    max_receive_count: int
    dead_letter_queue: str | None = None
    ready: deque[tuple[Message, int]] = field(default_factory=deque)
    # token -> (deadline, message, receive count); deadlines only grow, so the
    # oldest in-flight message is always first.
    in_flight: dict[int, tuple[float, Message, int]] = field(default_factory=dict)
    # (due, seq, message, receive count): delayed publishes and released messages.
    delayed: list[tuple[float, int, Message, int]] = field(default_factory=list)
    on_publish: list[Callable[[], None]] = field(default_factory=list)


class InMemoryMessagingBackend(MessagingBackend):
    """A thread-safe broker in this process's memory.

    Topics fan out to every subscribed queue. A received message is hidden for
    the queue's visibility timeout; unacknowledged, it comes back with its
    receive count raised, and after ``max_receive_count`` receives it moves to
    the dead-letter queue. A publish to a topic with no subscribed queue is
    reported (``message_unrouted`` and a warning), as is one that every
    subscribed queue's ``filter_events`` keeps out. Nothing survives the process.
    """

    messaging_system = "melange_memory"
    max_delay_seconds = None

    default_visibility_timeout = 30.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._topics: dict[str, set[str]] = {}
        self._queues: dict[str, _Queue] = {}
        self._tokens = itertools.count(1)
        self._waiting = 0
        self._linked = False  # whether some queue has publish callbacks
        # (topic, queue) -> the manifests that subscription lets through (filter_events).
        self._filters: dict[tuple[str, str], frozenset[str]] = {}
        # topic -> its queues, each with its filter or None; cleared on changes.
        self._fanout: dict[str, list[tuple[_Queue, frozenset[str] | None]]] = {}

    @classmethod
    def from_url(cls, url: str) -> InMemoryMessagingBackend:
        """Build from ``memory://`` (optionally ``?visibility_timeout=SECONDS``)."""
        query = parse_qs(urlsplit(url).query)
        backend = cls()
        if "visibility_timeout" in query:
            backend.default_visibility_timeout = float(query["visibility_timeout"][0])
        return backend

    # -- topology -------------------------------------------------------------

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        check_plain_name(topic_name, self.messaging_system)
        with self._lock:
            self._topics.setdefault(topic_name, set())
        return TopicWrapper(topic_name)

    def get_queue(self, queue_name: str) -> QueueWrapper:
        check_plain_name(queue_name, self.messaging_system)
        with self._lock:
            if queue_name not in self._queues:
                raise QueueNotFoundError(f"queue {queue_name!r} does not exist")
        return QueueWrapper(queue_name)

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
        """Get or create a queue, subscribe it to topics, and attach a dead-letter queue.

        ``filter_events`` (manifests): from the topics bound in this call, the
        queue gets only messages with one of these manifests; declaring again
        with another list replaces it; ``None`` leaves a subscription as it is.

        Raises:
            ConfigurationError: ``filter_events`` is not a non-empty list of manifests.
            InvalidNameError: a name the backend cannot take.
        """
        check_plain_name(queue_name, self.messaging_system)
        if dead_letter_queue_name is not None:
            check_plain_name(dead_letter_queue_name, self.messaging_system)
        manifests = checked_filter_events(filter_events)
        with self._lock:
            queue = self._declare(queue_name)
            if visibility_timeout is not None:
                queue.visibility_timeout = visibility_timeout
            if max_receive_count is not None:
                queue.max_receive_count = max_receive_count
            dead_letter = None
            if dead_letter_queue_name is not None:
                self._declare(dead_letter_queue_name)
                queue.dead_letter_queue = dead_letter_queue_name
                dead_letter = QueueWrapper(dead_letter_queue_name)
            for topic in topics_to_bind:
                self._topics.setdefault(topic.unwrap(), set()).add(queue_name)
                if manifests is not None:
                    self._filters[(topic.unwrap(), queue_name)] = manifests
            self._fanout.clear()
        return QueueWrapper(queue_name), dead_letter

    def _declare(self, name: str) -> _Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = _Queue(name, self.default_visibility_timeout, self.default_max_receive_count)
            self._queues[name] = queue
        return queue

    def delete_queue(self, queue: QueueWrapper) -> None:
        name = queue.unwrap()
        with self._lock:
            self._queues.pop(name, None)
            for subscribers in self._topics.values():
                subscribers.discard(name)
            self._filters = {key: m for key, m in self._filters.items() if key[1] != name}
            self._fanout.clear()

    def delete_topic(self, topic: TopicWrapper) -> None:
        name = topic.unwrap()
        with self._lock:
            self._topics.pop(name, None)
            self._filters = {key: m for key, m in self._filters.items() if key[0] != name}
            self._fanout.clear()

    # -- publishing -------------------------------------------------------------

    def publish_to_topic(
        self,
        message: Message,
        topic: TopicWrapper,
        extra_attributes: dict[str, Any] | None = None,
    ) -> None:
        with self._lock:
            queues = []
            for queue, manifests in self._subscribers(topic):
                if manifests is None or message.manifest in manifests:
                    queue.ready.append((message, 0))
                    queues.append(queue)
            if self._waiting:
                self._arrived.notify_all()
        if not queues:
            report_unrouted(self, message, topic.obj)
        elif self._linked:
            self._after_publish(queues)

    def publish_batch_to_topic(self, messages: Sequence[Message], topic: TopicWrapper) -> None:
        everyone = False  # some queue takes every message
        routed: set[int] = set()  # else, the indexes of those some queue took
        with self._lock:
            queues = []
            for queue, manifests in self._subscribers(topic):
                if manifests is None:
                    queue.ready.extend([(message, 0) for message in messages])
                    everyone = True
                    queues.append(queue)
                    continue
                kept = [n for n, m in enumerate(messages) if m.manifest in manifests]
                if kept:
                    queue.ready.extend([(messages[n], 0) for n in kept])
                    routed.update(kept)
                    queues.append(queue)
            self._wake()
        if not everyone:
            for n, message in enumerate(messages):
                if n not in routed:
                    report_unrouted(self, message, topic.obj)
        self._after_publish(queues)

    def _subscribers(self, topic: TopicWrapper) -> list[tuple[_Queue, frozenset[str] | None]]:
        queues = self._fanout.get(topic.obj)
        if queues is None:
            subscribers = self._topics.get(topic.obj)
            if subscribers is None:
                raise TopicNotFoundError(f"topic {topic.obj!r} does not exist")
            queues = self._fanout[topic.obj] = [
                (self._queues[name], self._filters.get((topic.obj, name))) for name in subscribers
            ]
        return queues

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        with self._lock:
            target = self._queue(queue)
            target.ready.append((message, 0))
            if self._waiting:
                self._arrived.notify_all()
        if self._linked:
            self._after_publish((target,))

    def publish_batch_to_queue(self, messages: Sequence[Message], queue: QueueWrapper) -> None:
        with self._lock:
            target = self._queue(queue)
            target.ready.extend((message, 0) for message in messages)
            self._wake()
        self._after_publish((target,))

    def publish_delayed_to_queue(self, message: Message, queue: QueueWrapper, delay: float) -> None:
        with self._lock:
            target = self._queue(queue)
            due = _monotonic() + max(delay, 0.0)
            heapq.heappush(target.delayed, (due, next(self._tokens), message, 0))
            self._wake()

    def _wake(self) -> None:
        if self._waiting:  # notify_all costs more than the publish itself
            self._arrived.notify_all()

    def _after_publish(self, queues: Iterable[_Queue]) -> None:
        for queue in queues:
            if queue.on_publish:
                for callback in list(queue.on_publish):
                    callback()

    # -- receiving ------------------------------------------------------------

    def retrieve_messages(
        self,
        queue: QueueWrapper,
        *,
        max_messages: int = 10,
        wait_seconds: float = 0.0,
        visibility_timeout: float | None = None,
    ) -> list[Message]:
        checked_max_messages(max_messages)
        deadline = _monotonic() + wait_seconds
        with self._lock:
            while True:
                target = self._queue(queue)
                now = _monotonic()
                next_due = self._make_due_visible(target, now)
                if target.ready:
                    return self._take(target, max_messages, now, visibility_timeout)
                remaining = deadline - now
                if remaining <= 0:
                    return []
                self._waiting += 1
                try:
                    self._arrived.wait(min(remaining, max(next_due - now, 0.001)))
                finally:
                    self._waiting -= 1

    def _take(
        self, queue: _Queue, max_messages: int, now: float, visibility_timeout: float | None
    ) -> list[Message]:
        taken = []
        ready, in_flight = queue.ready, queue.in_flight
        hidden_for = queue.visibility_timeout if visibility_timeout is None else visibility_timeout
        deadline = now + hidden_for
        name = queue.name
        for _ in range(min(max_messages, len(ready))):
            message, count = ready.popleft()
            count += 1
            token = next(self._tokens)
            in_flight[token] = (deadline, message, count)
            taken.append(message.received(count, _Receipt(name, token)))
        return taken

    def _make_due_visible(self, queue: _Queue, now: float) -> float:
        """Move expired in-flight and due delayed messages back; return the next due time."""
        in_flight = queue.in_flight
        while in_flight:
            token, (due, message, count) = next(iter(in_flight.items()))
            if due > now:
                break
            del in_flight[token]
            self._return(queue, message, count)
        delayed = queue.delayed
        while delayed and delayed[0][0] <= now:
            _, _, message, count = heapq.heappop(delayed)
            self._return(queue, message, count)
        next_due = now + 3600.0
        if in_flight:
            next_due = min(next_due, next(iter(in_flight.values()))[0])
        if delayed:
            next_due = min(next_due, delayed[0][0])
        return next_due

    def _return(self, queue: _Queue, message: Message, count: int) -> None:
        dead_letter = self._queues.get(queue.dead_letter_queue or "")
        if count >= queue.max_receive_count and dead_letter is not None:
            dead_letter.ready.append((message, 0))
        else:
            queue.ready.append((message, count))

    def acknowledge(self, message: Message) -> None:
        receipt = _receipt(message)
        with self._lock:
            queue = self._queues.get(receipt.queue)
            if queue is not None:
                queue.in_flight.pop(receipt.token, None)

    def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        with self._lock:
            for message in messages:
                receipt = message.receipt
                queue = self._queues.get(receipt.queue)
                if queue is not None:
                    queue.in_flight.pop(receipt.token, None)

    def extend_visibility(self, message: Message, seconds: float) -> None:
        """Keep a received message hidden for ``seconds`` from now, if it is still held."""
        with self._lock:
            taken = self._take_in_flight(message)
            if taken is None:
                return  # acknowledged, released, or handed out again
            queue, entry = taken
            deadline = _monotonic() + max(seconds, 0.0)
            if queue.in_flight:  # re-inserted last, so no earlier than the last deadline
                deadline = max(deadline, next(reversed(queue.in_flight.values()))[0])
            queue.in_flight[message.receipt.token] = (deadline, *entry[1:])
            self._wake()

    def release(self, message: Message, delay: float = 0.0) -> None:
        with self._lock:
            taken = self._take_in_flight(message)
            if taken is None:
                return  # already expired and handed out again
            queue, (_, original, count) = taken
            due = _monotonic() + max(delay, 0.0)
            heapq.heappush(queue.delayed, (due, next(self._tokens), original, count))
            self._wake()

    def _take_in_flight(self, message: Message) -> tuple[_Queue, tuple[float, Message, int]] | None:
        """Take a received message out of its queue's in-flight set (lock held), if there."""
        receipt = _receipt(message)
        queue = self._queues.get(receipt.queue)
        if queue is None:
            return None
        entry = queue.in_flight.pop(receipt.token, None)
        return None if entry is None else (queue, entry)

    # -- inspection and helpers ---------------------------------------------------

    def queue_depth(self, queue: QueueWrapper) -> int:
        """Return how many messages the queue holds, visible or not."""
        with self._lock:
            target = self._queue(queue)
            return len(target.ready) + len(target.in_flight) + len(target.delayed)

    def visibility_timeout_of(self, queue: QueueWrapper) -> float:
        """Return the queue's visibility timeout.

        Raises:
            QueueNotFoundError: the queue does not exist.
        """
        with self._lock:
            return self._queue(queue).visibility_timeout

    def queue_stats(self, queue: QueueWrapper) -> QueueStats:
        """Return the queue's ready, in-flight and delayed counts.

        Raises:
            QueueNotFoundError: the queue does not exist.
        """
        now = _monotonic()
        with self._lock:
            target = self._queue(queue)
            expired = sum(1 for deadline, _, _ in target.in_flight.values() if deadline <= now)
            due = sum(1 for when, _, _, _ in target.delayed if when <= now)
            return QueueStats(
                ready=len(target.ready) + expired + due,
                in_flight=len(target.in_flight) - expired,
                delayed=len(target.delayed) - due,
            )

    def subscribe_to_publish(self, queue: QueueWrapper, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every publish that lands in ``queue``."""
        with self._lock:
            self._queue(queue).on_publish.append(callback)
            self._linked = True

    def _queue(self, queue: QueueWrapper) -> _Queue:
        try:
            return self._queues[queue.unwrap()]
        except KeyError:
            raise QueueNotFoundError(f"queue {queue.unwrap()!r} does not exist") from None


def _receipt(message: Message) -> _Receipt:
    receipt = message.receipt
    if not isinstance(receipt, _Receipt):
        raise ForeignMessageError("expected a message received from this backend")
    return receipt


def __getattr__(name: str) -> Any:
    """Keep ``link_synchronously`` importable from here; it lives in ``melange.testing``."""
    if name == "link_synchronously":
        import warnings

        from melange.testing import link_synchronously

        warnings.warn(
            "import link_synchronously from melange.testing",
            DeprecationWarning,
            stacklevel=2,
        )
        return link_synchronously
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
