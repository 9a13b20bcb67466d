"""The contract every backend passes: subclass ``BackendContract`` with a ``backend`` fixture.

Class attributes tune timings for brokers that only take whole seconds.
"""

from __future__ import annotations

import time

import pytest

from melange.backends.interfaces import MessagingBackend
from melange.exceptions import (
    ForeignMessageError,
    InvalidArgumentError,
    QueueNotFoundError,
    UnsupportedOperationError,
)
from melange.models import DECODE_ERROR, Message, QueueWrapper
from melange.testing._waiting import receive, unique_name

__all__ = ["BackendContract"]


class BackendContract:
    """Tests every backend passes. Subclasses provide the ``backend`` fixture."""

    #: Visibility timeout the tests declare queues with (seconds).
    visibility_timeout: float = 1.0
    #: How long a test waits to be sure nothing arrives (seconds).
    quiet_period: float = 0.5
    #: Whether ``visibility_timeout_of`` tells (``False``: it returns ``None``, the default).
    tells_visibility_timeout: bool = True

    def declare(
        self, backend: MessagingBackend, *topics: str, dlq: bool = False, max_receives: int = 3
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        topic_wrappers = [backend.declare_topic(name) for name in topics]
        return backend.declare_queue(
            unique_name("q"),
            *topic_wrappers,
            dead_letter_queue_name=unique_name("dlq") if dlq else None,
            visibility_timeout=self.visibility_timeout,
            max_receive_count=max_receives,
        )

    def assert_empty(self, backend: MessagingBackend, queue: QueueWrapper) -> None:
        assert backend.retrieve_messages(queue, wait_seconds=self.quiet_period) == []

    # -- topology ----------------------------------------------------------------

    def test_declare_topic_is_idempotent(self, backend: MessagingBackend) -> None:
        name = unique_name("t")
        assert backend.declare_topic(name) == backend.declare_topic(name)

    def test_declared_queue_can_be_got(self, backend: MessagingBackend) -> None:
        name = unique_name("q")
        queue, dead_letter = backend.declare_queue(name)
        assert dead_letter is None
        assert backend.get_queue(name) == queue

    def test_declare_queue_twice_returns_the_same_queue(self, backend: MessagingBackend) -> None:
        name = unique_name("q")
        first, _ = backend.declare_queue(name)
        second, _ = backend.declare_queue(name)
        assert first == second

    def test_get_queue_never_creates(self, backend: MessagingBackend) -> None:
        name = unique_name("missing")
        with pytest.raises(QueueNotFoundError):
            backend.get_queue(name)
        with pytest.raises(QueueNotFoundError):
            backend.get_queue(name)

    def test_deleted_queue_is_gone(self, backend: MessagingBackend) -> None:
        name = unique_name("q")
        queue, _ = backend.declare_queue(name)
        backend.delete_queue(queue)
        with pytest.raises(QueueNotFoundError):
            backend.get_queue(name)

    def test_deleted_topic_no_longer_feeds_queues(self, backend: MessagingBackend) -> None:
        name = unique_name("t")
        queue, _ = self.declare(backend, name)
        backend.delete_topic(backend.declare_topic(name))
        topic = backend.declare_topic(name)  # a new topic, with no subscriptions
        backend.publish_to_topic(Message(content="after"), topic)
        self.assert_empty(backend, queue)

    def test_dead_letter_queue_is_declared(self, backend: MessagingBackend) -> None:
        _, dead_letter = self.declare(backend, dlq=True)
        assert dead_letter is not None
        self.assert_empty(backend, dead_letter)

    # -- moving messages -----------------------------------------------------------

    def test_topic_fans_out_to_every_subscribed_queue(self, backend: MessagingBackend) -> None:
        name = unique_name("t")
        first, _ = self.declare(backend, name)
        second, _ = self.declare(backend, name)
        backend.publish_to_topic(Message(content="hello"), backend.declare_topic(name))
        for queue in (first, second):
            [message] = receive(backend, queue, 1)
            assert message.content == "hello"

    def test_queue_subscribes_to_several_topics(self, backend: MessagingBackend) -> None:
        names = unique_name("a"), unique_name("b")
        queue, _ = self.declare(backend, *names)
        for name in names:
            backend.publish_to_topic(Message(content=name), backend.declare_topic(name))
        assert sorted(m.content for m in receive(backend, queue, 2)) == sorted(names)

    def test_redeclaring_keeps_earlier_subscriptions(self, backend: MessagingBackend) -> None:
        first, second = unique_name("a"), unique_name("b")
        queue_name = unique_name("q")
        backend.declare_queue(queue_name, backend.declare_topic(first))
        queue, _ = backend.declare_queue(queue_name, backend.declare_topic(second))
        for name in (first, second):
            backend.publish_to_topic(Message(content=name), backend.declare_topic(name))
        assert sorted(m.content for m in receive(backend, queue, 2)) == sorted((first, second))

    def test_publish_to_queue(self, backend: MessagingBackend) -> None:
        queue, _ = self.declare(backend)
        backend.publish_to_queue(Message(content="direct"), queue)
        [message] = receive(backend, queue, 1)
        assert message.content == "direct"
        assert message.receive_count == 1

    def test_message_fields_survive(self, backend: MessagingBackend) -> None:
        queue, _ = self.declare(backend)
        sent = Message(
            content='{"total": "9.90", "name": "Zoë ✓"}',
            metadata={"correlation_id": "c-1", "custom": "välue"},
            serializer_id=3,
            manifest="orders.created",
        )
        backend.publish_to_queue(sent, queue)
        [received] = receive(backend, queue, 1)
        assert received.message_id == sent.message_id
        assert received.content == sent.content
        assert received.manifest == "orders.created"
        assert received.serializer_id == 3
        assert received.metadata["correlation_id"] == "c-1"
        assert received.metadata["custom"] == "välue"

    def test_melanges_own_headers_set_by_a_producer_arrive_as_foreign(
        self, backend: MessagingBackend
    ) -> None:
        # Only melange writes x-melange-*: a producer's value must not mark or steer the message.
        queue, _ = self.declare(backend)
        forged = {DECODE_ERROR: "forged", "x-melange-receives": "999", "custom": "v"}
        backend.publish_to_queue(Message(content="{}", metadata=forged), queue)
        [received] = receive(backend, queue, 1)
        assert not any(key.startswith("x-melange-") for key in received.metadata)
        assert received.metadata["x-foreign-decode-error"] == "forged"
        assert received.metadata["x-foreign-receives"] == "999"
        assert received.metadata["custom"] == "v"
        assert received.receive_count == 1

    def test_message_without_manifest_survives(self, backend: MessagingBackend) -> None:
        queue, _ = self.declare(backend)
        backend.publish_to_queue(Message(content="{}"), queue)
        [received] = receive(backend, queue, 1)
        assert received.manifest is None
        assert received.serializer_id is None

    def test_acknowledged_message_is_not_delivered_again(self, backend: MessagingBackend) -> None:
        queue, _ = self.declare(backend)
        backend.publish_to_queue(Message(content="once"), queue)
        [message] = receive(backend, queue, 1)
        backend.acknowledge(message)
        time.sleep(self.visibility_timeout + 0.2)
        self.assert_empty(backend, queue)

    def test_acknowledge_batch(self, backend: MessagingBackend) -> None:
        queue, _ = self.declare(backend)
        backend.publish_batch_to_queue([Message(content=str(i)) for i in range(3)], queue)
        messages = receive(backend, queue, 3)
        backend.acknowledge_batch(messages)
        time.sleep(self.visibility_timeout + 0.2)
        self.assert_empty(backend, queue)

    def test_received_message_is_hidden_then_delivered_again(
        self, backend: MessagingBackend
    ) -> None:
        queue, _ = self.declare(backend)
        backend.publish_to_queue(Message(content="again"), queue)
        [first] = receive(backend, queue, 1)
        assert backend.retrieve_messages(queue, wait_seconds=0) == []
        [second] = receive(backend, queue, 1, timeout=self.visibility_timeout + 10)
        assert second.message_id == first.message_id
        assert (first.receive_count, second.receive_count) == (1, 2)

    def test_a_queue_tells_the_visibility_timeout_it_was_declared_with(
        self, backend: MessagingBackend
    ) -> None:
        name = unique_name("q")
        backend.declare_queue(name, visibility_timeout=7)
        backend.declare_queue(name)  # declared again without one: it keeps its own
        told = backend.visibility_timeout_of(backend.get_queue(name))
        assert told == (7 if self.tells_visibility_timeout else None)

    def test_extend_visibility_batch_keeps_held_messages_hidden(
        self, backend: MessagingBackend
    ) -> None:
        queue, _ = self.declare(backend)
        backend.publish_batch_to_queue([Message(content=str(n)) for n in range(3)], queue)
        received = receive(backend, queue, 3)
        backend.acknowledge(received[0])  # settled already: left alone
        backend.extend_visibility_batch(received, 3 * self.visibility_timeout)
        quiet_until = time.monotonic() + 1.5 * self.visibility_timeout
        while time.monotonic() < quiet_until:  # their own timeout would have shown them
            assert backend.retrieve_messages(queue, wait_seconds=0) == []
            time.sleep(0.1)
        again = receive(backend, queue, 2, timeout=3 * self.visibility_timeout + 10)
        assert sorted(m.content for m in again) == sorted(m.content for m in received[1:])

    def test_dead_letter_after_max_receives(self, backend: MessagingBackend) -> None:
        queue, dead_letter = self.declare(backend, dlq=True, max_receives=2)
        assert dead_letter is not None
        sent = Message(content="poison", manifest="m", metadata={"k": "v"})
        backend.publish_to_queue(sent, queue)
        counts = []
        for _ in range(2):
            [message] = receive(backend, queue, 1, timeout=self.visibility_timeout + 10)
            counts.append(message.receive_count)
        assert counts == [1, 2]
        time.sleep(self.visibility_timeout + 0.2)
        # As on SQS, the move happens when the source queue is next read.
        self.assert_empty(backend, queue)
        [dead] = receive(backend, dead_letter, 1, timeout=self.visibility_timeout + 10)
        assert (dead.message_id, dead.content, dead.manifest) == (sent.message_id, "poison", "m")
        assert dead.metadata["k"] == "v"

    def test_publish_batch_to_queue(self, backend: MessagingBackend) -> None:
        queue, _ = self.declare(backend)
        backend.publish_batch_to_queue([Message(content=str(i)) for i in range(25)], queue)
        assert sorted(int(m.content) for m in receive(backend, queue, 25)) == list(range(25))

    def test_publish_batch_to_topic(self, backend: MessagingBackend) -> None:
        name = unique_name("t")
        queue, _ = self.declare(backend, name)
        topic = backend.declare_topic(name)
        backend.publish_batch_to_topic([Message(content=str(i)) for i in range(12)], topic)
        assert sorted(int(m.content) for m in receive(backend, queue, 12)) == list(range(12))

    def test_delayed_message_is_invisible_until_its_delay(self, backend: MessagingBackend) -> None:
        queue, _ = self.declare(backend)
        delay = max(1.0, self.visibility_timeout)
        started = time.monotonic()
        backend.publish_delayed_to_queue(Message(content="later"), queue, delay)
        assert backend.retrieve_messages(queue, wait_seconds=0) == []
        [message] = receive(backend, queue, 1, timeout=delay + 10)
        assert message.content == "later"
        assert time.monotonic() - started >= delay * 0.9

    def test_released_message_comes_back_after_its_delay(self, backend: MessagingBackend) -> None:
        queue, _ = self.declare(backend)
        backend.publish_to_queue(Message(content="retry"), queue)
        [first] = receive(backend, queue, 1)
        backend.release(first, delay=1.0)
        [second] = receive(backend, queue, 1, timeout=self.visibility_timeout + 10)
        assert second.message_id == first.message_id
        assert second.receive_count == 2

    def test_released_message_without_delay_comes_back(self, backend: MessagingBackend) -> None:
        queue, _ = self.declare(backend)
        backend.publish_to_queue(Message(content="now"), queue)
        [first] = receive(backend, queue, 1)
        backend.release(first)
        [second] = receive(backend, queue, 1, timeout=self.visibility_timeout + 10)
        assert second.message_id == first.message_id

    def test_retrieve_respects_max_messages(self, backend: MessagingBackend) -> None:
        queue, _ = self.declare(backend)
        backend.publish_batch_to_queue([Message(content=str(i)) for i in range(5)], queue)
        batch = backend.retrieve_messages(queue, max_messages=2, wait_seconds=2)
        assert 1 <= len(batch) <= 2

    def test_yield_messages_yields_what_arrives(self, backend: MessagingBackend) -> None:
        queue, _ = self.declare(backend)
        backend.publish_batch_to_queue([Message(content=str(i)) for i in range(3)], queue)
        stream = iter(backend.yield_messages(queue, wait_seconds=1))
        got = sorted(next(stream).content for _ in range(3))
        assert got == ["0", "1", "2"]

    def test_queue_stats_count_ready_in_flight_and_delayed(self, backend: MessagingBackend) -> None:
        queue, _ = self.declare(backend)
        backend.publish_batch_to_queue([Message(content=str(i)) for i in range(3)], queue)
        backend.publish_delayed_to_queue(Message(content="later"), queue, 60)
        try:
            before = backend.queue_stats(queue)
        except UnsupportedOperationError:
            pytest.skip("an optional capability this backend does not have")
        assert before.ready == 3
        assert before.in_flight in (0, None)
        assert before.delayed in (1, None)
        [message] = backend.retrieve_messages(queue, max_messages=1, wait_seconds=5)
        after = backend.queue_stats(queue)
        if after.in_flight is not None:  # brokers that tell (AMQP 0-9-1 does not)
            assert (after.ready, after.in_flight) == (2, 1)
        backend.acknowledge(message)
        with pytest.raises(QueueNotFoundError):
            backend.queue_stats(QueueWrapper(self.missing_queue(backend)))

    def test_a_receive_may_set_its_own_visibility_timeout(self, backend: MessagingBackend) -> None:
        name = unique_name("q")
        queue, _ = backend.declare_queue(name, visibility_timeout=120)
        backend.publish_to_queue(Message(content="short"), queue)
        [first] = backend.retrieve_messages(
            queue, wait_seconds=5, visibility_timeout=self.visibility_timeout
        )
        [again] = receive(backend, queue, 1, timeout=self.visibility_timeout + 10)
        assert again.message_id == first.message_id
        assert again.receive_count == 2
        backend.acknowledge(again)

    def test_fewer_than_one_message_is_refused(self, backend: MessagingBackend) -> None:
        queue, _ = self.declare(backend)
        with pytest.raises(InvalidArgumentError):
            backend.retrieve_messages(queue, max_messages=0)

    def test_queue_depth_counts_what_was_published(self, backend: MessagingBackend) -> None:
        queue, _ = self.declare(backend)
        try:
            assert backend.queue_depth(queue) == 0
        except UnsupportedOperationError:
            pytest.skip("an optional capability this backend does not have")
        backend.publish_batch_to_queue([Message(content=str(i)) for i in range(2)], queue)
        assert backend.queue_depth(queue) == 2

    def test_delays_up_to_max_delay_seconds_and_no_further(self, backend: MessagingBackend) -> None:
        queue, _ = self.declare(backend)
        longest = backend.max_delay_seconds
        if longest == 0:
            with pytest.raises(UnsupportedOperationError):
                backend.publish_delayed_to_queue(Message(content="x"), queue, 1)
            return
        backend.publish_delayed_to_queue(Message(content="in reach"), queue, 60)
        if longest is not None:
            with pytest.raises(UnsupportedOperationError):
                backend.publish_delayed_to_queue(Message(content="too far"), queue, longest + 1)
        assert backend.retrieve_messages(queue, wait_seconds=0) == []

    def test_browsing_adds_no_delivery(self, backend: MessagingBackend) -> None:
        queue, _ = self.declare(backend)
        backend.publish_to_queue(Message(content="look"), queue)
        try:
            browsed = backend.browse_messages(queue, 5)
        except UnsupportedOperationError:
            return  # the documented default: peek receives and releases instead
        assert [m.content for m in browsed] == ["look"]
        [message] = receive(backend, queue, 1)
        assert message.receive_count == 1
        backend.acknowledge(message)

    def missing_queue(self, backend: MessagingBackend) -> object:
        """Return what a wrapper of a queue that does not exist holds on this backend."""
        name = unique_name("gone")
        queue, _ = backend.declare_queue(name)
        backend.delete_queue(queue)
        return queue.unwrap()

    def test_a_message_not_received_from_the_backend_is_refused(
        self, backend: MessagingBackend
    ) -> None:
        with pytest.raises(ForeignMessageError):
            backend.acknowledge(Message(content="never received"))

    def test_close_connection_is_idempotent(self, backend: MessagingBackend) -> None:
        backend.close_connection()
        backend.close_connection()
