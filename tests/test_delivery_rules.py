"""Delivery rules of the consume loop, on the in-memory backend, and consumers never bypassed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from melange import Consumer, Message, MessageDispatcher, MessagePublisher, RetryPolicy, listener
from melange.backends.memory import InMemoryMessagingBackend
from melange.exceptions import IdempotencyError, ListenerDefinitionError
from melange.idempotency import InMemoryIdempotencyStore
from melange.idempotency.base import Claim
from melange.models import QueueWrapper, TopicWrapper
from melange.testing import wait_until
from tests.events import OrderCreated, OrderPaid


class Slow(Consumer):
    def __init__(self, seconds: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seconds = seconds
        self.handled: list[str] = []
        self.started = threading.Event()
        self.lock = threading.Lock()

    @listener
    def on_created(self, event: OrderCreated) -> None:
        self.started.set()
        time.sleep(self.seconds)
        with self.lock:
            self.handled.append(event.order_id)


@pytest.fixture
def backend() -> Iterator[InMemoryMessagingBackend]:
    with InMemoryMessagingBackend() as backend:
        yield backend


def publish(backend: InMemoryMessagingBackend, *order_ids: str) -> None:
    publisher = MessagePublisher(backend)
    for order_id in order_ids:
        publisher.publish(OrderCreated(order_id=order_id))


def test_a_handler_longer_than_the_visibility_timeout_runs_once(
    backend: InMemoryMessagingBackend,
) -> None:
    slow = Slow(1.5)
    workers = [MessageDispatcher(backend, consumers=[slow]) for _ in range(2)]
    for worker in workers:
        worker.declare("billing", visibility_timeout=0.5)
    publish(backend, "o-1")
    stop = threading.Event()
    threads = [
        threading.Thread(target=w.consume_loop, args=("billing",), kwargs={"stop_event": stop})
        for w in workers
    ]
    for thread in threads:
        thread.start()
    try:
        assert wait_until(lambda: slow.handled != [], timeout=10)
        time.sleep(1.0)  # longer than the visibility timeout: nothing may come back
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert slow.handled == ["o-1"]
    assert backend.queue_depth(backend.get_queue("billing")) == 0
    assert backend.queue_depth(backend.get_queue("billing-dlq")) == 0


def test_a_finished_message_is_acknowledged_while_the_next_handler_runs(
    backend: InMemoryMessagingBackend,
) -> None:
    class Mixed(Consumer):
        @listener
        def on_paid(self, event: OrderPaid) -> None:
            pass

        @listener
        def on_created(self, event: OrderCreated) -> None:
            time.sleep(2.5)

    dispatcher = MessageDispatcher(backend, consumers=[Mixed()])
    dispatcher.declare("billing", visibility_timeout=5)
    publisher = MessagePublisher(backend)
    publisher.publish(OrderPaid(order_id="fast"))
    publisher.publish(OrderCreated(order_id="slow"))
    worker = threading.Thread(
        target=dispatcher.consume_loop, args=("billing",), kwargs={"max_messages": 2}
    )
    worker.start()
    queue = backend.get_queue("billing")
    # The fast one is acknowledged long before the slow handler ends.
    assert wait_until(lambda: backend.queue_depth(queue) == 1, timeout=1.5)
    worker.join()
    assert backend.queue_depth(queue) == 0


def test_stopping_releases_the_unstarted_messages_at_once(
    backend: InMemoryMessagingBackend,
) -> None:
    slow = Slow(0.5)
    dispatcher = MessageDispatcher(backend, consumers=[slow], batch_size=10)
    dispatcher.declare("billing", visibility_timeout=60)
    publish(backend, *(f"o-{n}" for n in range(5)))
    stop = threading.Event()
    worker = threading.Thread(
        target=dispatcher.consume_loop, args=("billing",), kwargs={"stop_event": stop}
    )
    worker.start()
    assert slow.started.wait(5)
    stop.set()
    worker.join(timeout=5)
    assert slow.handled == ["o-0"]  # the message in hand was finished
    # The other four are visible again now, not after the 60 s visibility timeout.
    again = backend.retrieve_messages(backend.get_queue("billing"), max_messages=10)
    assert sorted(m.content for m in again) == sorted(
        MessagePublisher(backend).build_message(OrderCreated(order_id=f"o-{n}")).content
        for n in range(1, 5)
    )


def test_a_claim_in_progress_elsewhere_is_released_and_run_once_it_ends(
    backend: InMemoryMessagingBackend,
) -> None:
    slow = Slow(0)
    store = InMemoryIdempotencyStore()
    dispatcher = MessageDispatcher(
        backend,
        consumers=[slow],
        idempotency=store,
        retry=RetryPolicy(max_deliveries=2, backoff_seconds=0, jitter=0),
    )
    dispatcher.declare("billing", visibility_timeout=0.4, max_receive_count=20)
    message = MessagePublisher(backend).publish(OrderCreated(order_id="o-1"))
    # Another worker holds the claim (it died; its lease ends in 0.3 s).
    assert store.claim(slow.consumer_id, message.message_id, 0.3) is Claim.ACQUIRED
    assert dispatcher.consume_loop("billing", max_messages=1) == 1
    assert slow.handled == []  # not skipped, not run: released for later
    dispatcher.consume_loop("billing", idle_timeout=1.5)
    assert slow.handled == ["o-1"]
    assert backend.queue_depth(backend.get_queue("billing-dlq")) == 0


class Flaky(InMemoryIdempotencyStore):
    """A store whose connection drops for ``outage`` seconds after the first claim."""

    def __init__(self, outage: float) -> None:
        super().__init__()
        self.outage = outage
        self.down_until = 0.0
        self.errors = 0

    def _check(self) -> None:
        if time.monotonic() < self.down_until:
            self.errors += 1
            raise IdempotencyError("connection refused")

    def claim(self, consumer_id: str, message_id: str, lease_seconds: float | None = None) -> Claim:
        self._check()
        claim = super().claim(consumer_id, message_id, lease_seconds)
        if not self.down_until:
            self.down_until = time.monotonic() + self.outage
        return claim

    def complete(self, consumer_id: str, message_id: str) -> None:
        self._check()
        super().complete(consumer_id, message_id)


def test_a_store_outage_neither_crashes_nor_dead_letters_nor_uses_retries(
    backend: InMemoryMessagingBackend,
) -> None:
    slow = Slow(0)
    store = Flaky(outage=1.0)
    dispatcher = MessageDispatcher(
        backend, consumers=[slow], idempotency=store, retry=RetryPolicy.none()
    )
    dispatcher.declare("billing", visibility_timeout=0.5)
    publish(backend, *(f"o-{n}" for n in range(5)))
    assert dispatcher.consume_loop("billing", idle_timeout=0.5) == 5
    assert store.errors > 0
    assert sorted(slow.handled) == [f"o-{n}" for n in range(5)]
    assert backend.queue_depth(backend.get_queue("billing-dlq")) == 0
    assert backend.queue_depth(backend.get_queue("billing")) == 0


class OwnQueue(QueueWrapper):
    pass


class OwnTopic(TopicWrapper):
    pass


def test_queue_or_topic_is_the_callers_choice_not_a_type_check(
    backend: InMemoryMessagingBackend,
) -> None:
    queue, _ = backend.declare_queue("direct")
    topic_queue, _ = backend.declare_queue("fanned", backend.declare_topic("t"))
    publisher = MessagePublisher(backend)
    # A backend may hand out its own wrapper types; the argument name decides.
    publisher.publish(OrderPaid(order_id="q"), queue=OwnQueue(queue.unwrap()))
    publisher.publish(OrderPaid(order_id="t"), topic=OwnTopic("t"))
    assert [m.content for m in backend.retrieve_messages(queue)] == ['{"order_id":"q"}']
    assert [m.content for m in backend.retrieve_messages(topic_queue)] == ['{"order_id":"t"}']


def test_a_topic_nobody_subscribes_to_is_reported(backend: InMemoryMessagingBackend) -> None:
    from melange import signals

    unrouted: list[tuple[str, str]] = []

    def on_unrouted(sender: Any, **kw: Any) -> None:
        unrouted.append((kw["topic"], kw["message"].message_id))

    with signals.message_unrouted.connected_to(on_unrouted):
        sent = MessagePublisher(backend).publish(OrderPaid(order_id="nobody"))
        backend.declare_queue("listening", backend.declare_topic("OrderPaid"))
        MessagePublisher(backend).publish(OrderPaid(order_id="somebody"))
    assert unrouted == [("OrderPaid", sent.message_id)]


# -- consumers are never bypassed ---------------------------------------------------------


def test_an_override_of_handle_is_honoured(backend: InMemoryMessagingBackend) -> None:
    seen: list[tuple[str, str]] = []

    class Audit(Consumer):
        def handle(self, event: Any, message: Message) -> None:
            seen.append((type(event).__name__, message.message_id))

    class Wrapped(Consumer):
        @listener
        def on_created(self, event: OrderCreated) -> None:
            seen.append(("listener", event.order_id))

        def handle(self, event: Any, message: Message) -> None:
            seen.append(("wrapped", event.order_id))
            super().handle(event, message)

    dispatcher = MessageDispatcher(backend, consumers=[Wrapped(), Audit()])
    dispatcher.declare("billing")
    sent = MessagePublisher(backend).publish(OrderCreated(order_id="o-1"))
    assert dispatcher.consume_loop("billing", idle_timeout=0) == 1
    assert seen == [("wrapped", "o-1"), ("listener", "o-1"), ("OrderCreated", sent.message_id)]


def test_a_consumer_written_the_original_way_works(backend: InMemoryMessagingBackend) -> None:
    processed: list[tuple[str, str]] = []

    class Original(Consumer):
        def process(self, message: Any, envelope: Message) -> None:
            processed.append((message.order_id, envelope.manifest))

        def accepts(self, manifest: str | None) -> bool:  # type: ignore[override]
            return manifest == "OrderCreated"

    dispatcher = MessageDispatcher(backend, consumers=[Original()])
    dispatcher.declare("billing", topics=["OrderCreated", "OrderPaid"])
    dispatcher.serializers.event_types.register(OrderCreated)
    dispatcher.serializers.event_types.register(OrderPaid)
    publisher = MessagePublisher(backend)
    publisher.publish(OrderCreated(order_id="o-1"))
    publisher.publish(OrderPaid(order_id="o-1"))
    assert dispatcher.consume_loop("billing", idle_timeout=0) == 2
    assert processed == [("o-1", "OrderCreated")]


def test_ambiguous_consumers_fail_when_defined() -> None:
    with pytest.raises(ListenerDefinitionError, match="both process"):

        class Both(Consumer):
            def process(self, message: Any) -> None: ...

            @listener
            def on_created(self, event: OrderCreated) -> None: ...

    with pytest.raises(ListenerDefinitionError, match="nothing would handle"):

        class AcceptsOnly(Consumer):
            def accepts(self, manifest: str | None) -> bool:  # type: ignore[override]
                return True


class Counting(InMemoryMessagingBackend):
    """The in-memory broker, noting each extension and release in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    def extend_visibility(self, message: Message, seconds: float) -> None:
        time.sleep(0.01)  # wide enough for a release to try to slip in
        self.calls.append(("extend", message.message_id))
        super().extend_visibility(message, seconds)

    def release(self, message: Message, delay: float = 0.0) -> None:
        self.calls.append(("release", message.message_id))
        super().release(message, delay)


def test_no_extension_runs_after_a_message_is_released() -> None:
    from melange.consuming.holding import HeldMessages

    backend = Counting()
    queue, _ = backend.declare_queue("q", visibility_timeout=0.6)
    for n in range(20):
        backend.publish_to_queue(Message(content=str(n)), queue)
    batch = backend.retrieve_messages(queue, max_messages=20)
    with HeldMessages(backend, visibility_timeout=0.6) as held:
        held.hold(batch)
        time.sleep(0.25)  # the keeper is extending every 0.2 s
        for message in batch:
            held.drop(message)
            backend.release(message, 30)
        time.sleep(0.5)
    for message in batch:
        mine = [kind for kind, message_id in backend.calls if message_id == message.message_id]
        assert mine[-1] == "release", mine
    assert backend.retrieve_messages(queue) == []  # every release delay held
