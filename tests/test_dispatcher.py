from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from melange import (
    AckPolicy,
    Consumer,
    Message,
    MessageDispatcher,
    MessagePublisher,
    RetryPolicy,
    SimpleMessageDispatcher,
    listener,
    signals,
)
from melange.backends.memory import InMemoryMessagingBackend
from melange.exceptions import BackendConnectionError
from melange.idempotency import InMemoryIdempotencyStore
from melange.testing import receive
from tests.events import InvoiceSent, OrderCreated, OrderPaid

FAST_RETRY = RetryPolicy(immediate_attempts=2, max_deliveries=3, backoff_seconds=0, jitter=0)


class Billing(Consumer):
    def __init__(self, fail_times: int = 0, fail_on: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_times = fail_times
        self.fail_on = fail_on
        self.calls = 0
        self.effects: list[str] = []

    @listener
    def on_created(self, event: OrderCreated, message: Message) -> None:
        self.calls += 1
        if self.calls <= self.fail_times or event.order_id == self.fail_on:
            raise RuntimeError(f"cannot bill {event.order_id}")
        self.effects.append(event.order_id)


@pytest.fixture
def backend() -> Iterator[InMemoryMessagingBackend]:
    with InMemoryMessagingBackend() as backend:
        yield backend


def make(
    backend: InMemoryMessagingBackend, *consumers: Consumer, **options: Any
) -> MessageDispatcher:
    options.setdefault("retry", FAST_RETRY)
    dispatcher = MessageDispatcher(backend, consumers=list(consumers), **options)
    dispatcher.declare("billing", visibility_timeout=5)
    return dispatcher


def dead_letters(backend: InMemoryMessagingBackend) -> list[Message]:
    return backend.retrieve_messages(backend.get_queue("billing-dlq"), max_messages=100)


def test_the_issue_example_runs_end_to_end(backend: InMemoryMessagingBackend) -> None:
    billing = Billing()
    dispatcher = make(backend, billing)
    MessagePublisher(backend).publish(OrderCreated(order_id="o-1", total=Decimal("9.90")))
    assert dispatcher.consume_loop("billing", max_messages=1) == 1
    assert billing.effects == ["o-1"]
    assert backend.queue_depth(backend.get_queue("billing")) == 0


def test_declare_creates_queue_dead_letter_queue_and_subscriptions(
    backend: InMemoryMessagingBackend,
) -> None:
    dispatcher = make(backend, Billing())
    assert "OrderCreated" in dispatcher.topics()
    assert "ExpressOrderCreated" in dispatcher.topics()  # a subclass the process knows
    queue, dead_letter = dispatcher.declare("billing")  # idempotent
    assert dead_letter == backend.get_queue("billing-dlq")
    assert queue == backend.get_queue("billing")


def test_dead_letter_queue_name_can_be_chosen(backend: InMemoryMessagingBackend) -> None:
    dispatcher = MessageDispatcher(backend, consumers=[Billing()])
    _, dead_letter = dispatcher.declare("invoices", dead_letter_queue_name="invoices-failed")
    assert dead_letter == backend.get_queue("invoices-failed")


def test_failing_twice_then_succeeding_runs_the_effect_once(
    backend: InMemoryMessagingBackend,
) -> None:
    billing = Billing(fail_times=2)
    dispatcher = make(backend, billing, retry=RetryPolicy(immediate_attempts=3, backoff_seconds=0))
    MessagePublisher(backend).publish(OrderCreated(order_id="o-2"))
    dispatcher.consume_loop("billing", idle_timeout=0.2)
    assert billing.calls == 3
    assert billing.effects == ["o-2"]
    assert dead_letters(backend) == []
    assert backend.queue_depth(backend.get_queue("billing")) == 0


def test_retries_go_through_delayed_redelivery(backend: InMemoryMessagingBackend) -> None:
    billing = Billing(fail_times=3)  # exhausts the 2 immediate attempts of delivery 1 and 1 of 2
    dispatcher = make(backend, billing)
    MessagePublisher(backend).publish(OrderCreated(order_id="o-3"))
    dispatcher.consume_loop("billing", idle_timeout=0.3)
    assert billing.calls == 4
    assert billing.effects == ["o-3"]
    assert dead_letters(backend) == []


def test_a_handler_that_always_fails_is_dead_lettered_after_exactly_the_attempts(
    backend: InMemoryMessagingBackend,
) -> None:
    billing = Billing(fail_on="poison")
    dispatcher = make(backend, billing)
    publisher = MessagePublisher(backend)
    poison = publisher.publish(OrderCreated(order_id="poison"))
    for n in range(5):
        publisher.publish(OrderCreated(order_id=f"ok-{n}"))
    dispatcher.consume_loop("billing", idle_timeout=0.3)
    assert billing.calls == FAST_RETRY.max_attempts + 5
    assert billing.effects == [f"ok-{n}" for n in range(5)]
    [dead] = dead_letters(backend)
    assert dead.message_id == poison.message_id
    assert dead.content == poison.content
    assert dead.manifest == poison.manifest
    assert dead.metadata["attempts"] == str(FAST_RETRY.max_attempts)
    assert dead.metadata["error_type"] == "builtins.RuntimeError"
    assert dead.metadata["error_message"] == "cannot bill poison"
    assert dead.metadata["source_queue"] == "billing"
    assert dead.metadata["correlation_id"] == poison.metadata["correlation_id"]
    assert backend.queue_depth(backend.get_queue("billing")) == 0


@pytest.mark.parametrize(
    ("content", "manifest", "serializer_id", "error"),
    [
        ("{not json", "OrderCreated", 3, "DeserializationError"),
        ('{"order_id": "x"}', "OrderCreated", 9999, "UnknownSerializerError"),
        ('{"total": "not a number"}', "OrderCreated", 3, "MessageValidationError"),
        ("{not json", None, 1, "DeserializationError"),
    ],
)
def test_unreadable_messages_are_dead_lettered_with_their_original_content(
    backend: InMemoryMessagingBackend,
    content: str,
    manifest: str | None,
    serializer_id: int,
    error: str,
) -> None:
    billing = Billing()
    dispatcher = make(backend, billing)
    bad = Message(content=content, manifest=manifest, serializer_id=serializer_id)
    backend.publish_to_queue(bad, backend.get_queue("billing"))
    assert dispatcher.consume_loop("billing", idle_timeout=0) == 1
    [dead] = dead_letters(backend)
    assert dead.content == content
    assert dead.message_id == bad.message_id
    assert dead.metadata["error_type"].endswith(error)
    assert dead.metadata["error_stage"] == "deserialize"
    assert dead.metadata["attempts"] == "0"
    assert billing.calls == 0
    assert backend.queue_depth(backend.get_queue("billing")) == 0


def test_a_manifest_no_listener_accepts_is_acknowledged_and_skipped(
    backend: InMemoryMessagingBackend,
) -> None:
    skipped: list[str] = []

    def on_skip(sender: Any, **kw: Any) -> None:
        skipped.append(kw["reason"])

    dispatcher = make(backend, Billing())
    publisher = MessagePublisher(backend)
    with signals.message_skipped.connected_to(on_skip):
        publisher.publish(InvoiceSent(invoice_id="i-1"), queue="billing")
        assert dispatcher.consume_loop("billing", idle_timeout=0) == 1
    assert len(skipped) == 1
    assert "billing.invoice-sent" in skipped[0]
    assert dead_letters(backend) == []
    assert backend.queue_depth(backend.get_queue("billing")) == 0


def test_a_redelivered_message_runs_each_consumer_once(
    backend: InMemoryMessagingBackend,
) -> None:
    first, second = Billing(consumer_id="a"), Billing(consumer_id="b")
    store = InMemoryIdempotencyStore()
    dispatcher = make(backend, first, second, idempotency=store)
    message = MessagePublisher(backend).build_message(OrderCreated(order_id="dup"))
    queue = backend.get_queue("billing")
    backend.publish_to_queue(message, queue)
    backend.publish_to_queue(message, queue)  # the broker delivers it twice
    assert dispatcher.consume_loop("billing", idle_timeout=0) == 2
    assert (first.effects, second.effects) == (["dup"], ["dup"])


def test_idempotency_claim_is_released_when_the_handler_fails(
    backend: InMemoryMessagingBackend,
) -> None:
    billing = Billing(fail_times=2)
    store = InMemoryIdempotencyStore()
    dispatcher = make(
        backend,
        billing,
        idempotency=store,
        retry=RetryPolicy(immediate_attempts=1, max_deliveries=3, backoff_seconds=0),
    )
    MessagePublisher(backend).publish(OrderCreated(order_id="late"))
    dispatcher.consume_loop("billing", idle_timeout=0.3)
    assert billing.effects == ["late"]
    assert billing.calls == 3


def test_a_consumer_that_succeeded_is_not_rerun_when_another_fails(
    backend: InMemoryMessagingBackend,
) -> None:
    steady, flaky = Billing(consumer_id="steady"), Billing(consumer_id="flaky", fail_times=2)
    dispatcher = make(
        backend,
        steady,
        flaky,
        retry=RetryPolicy(immediate_attempts=1, max_deliveries=3, backoff_seconds=0),
    )
    MessagePublisher(backend).publish(OrderCreated(order_id="both"))
    dispatcher.consume_loop("billing", idle_timeout=0.3)
    assert steady.calls == 1
    assert flaky.effects == ["both"]


def test_ack_policy_after_handle_dead_letters_without_redelivery(
    backend: InMemoryMessagingBackend,
) -> None:
    billing = Billing(fail_on="x")
    dispatcher = make(backend, billing, ack_policy=AckPolicy.AFTER_HANDLE)
    MessagePublisher(backend).publish(OrderCreated(order_id="x"))
    dispatcher.consume_loop("billing", idle_timeout=0.2)
    assert billing.calls == FAST_RETRY.immediate_attempts
    assert [m.metadata["attempts"] for m in dead_letters(backend)] == ["2"]
    assert backend.queue_depth(backend.get_queue("billing")) == 0


def test_ack_policy_before_handle_acknowledges_first(backend: InMemoryMessagingBackend) -> None:
    depths: list[int] = []
    queue_holder: dict[str, Any] = {}

    class Peek(Consumer):
        @listener
        def on_created(self, event: OrderCreated) -> None:
            # The message was acknowledged before this ran: nothing is in flight.
            depths.append(backend.queue_depth(queue_holder["q"]))

    dispatcher = make(backend, Peek(), ack_policy=AckPolicy.BEFORE_HANDLE)
    queue_holder["q"] = backend.get_queue("billing")
    MessagePublisher(backend).publish(OrderCreated(order_id="first"))
    dispatcher.consume_loop("billing", idle_timeout=0)
    assert depths == [0]


def test_ack_policy_after_success_keeps_the_message_in_flight_while_handling(
    backend: InMemoryMessagingBackend,
) -> None:
    depths: list[int] = []

    class Peek(Consumer):
        @listener
        def on_created(self, event: OrderCreated) -> None:
            depths.append(backend.queue_depth(backend.get_queue("billing")))

    dispatcher = make(backend, Peek())
    MessagePublisher(backend).publish(OrderCreated(order_id="first"))
    dispatcher.consume_loop("billing", idle_timeout=0)
    assert depths == [1]
    assert backend.queue_depth(backend.get_queue("billing")) == 0


def test_ack_policy_manual_leaves_acknowledging_to_the_handler(
    backend: InMemoryMessagingBackend,
) -> None:
    class Manual(Consumer):
        @listener
        def on_created(self, event: OrderCreated, message: Message) -> None:
            if event.order_id == "ack-me":
                backend.acknowledge(message)

    dispatcher = make(backend, Manual(), ack_policy=AckPolicy.MANUAL)
    publisher = MessagePublisher(backend)
    publisher.publish(OrderCreated(order_id="ack-me"))
    publisher.publish(OrderCreated(order_id="leave-me"))
    dispatcher.consume_loop("billing", idle_timeout=0)
    assert backend.queue_depth(backend.get_queue("billing")) == 1


def test_consume_loop_stops_on_stop_event(backend: InMemoryMessagingBackend) -> None:
    dispatcher = make(backend, Billing())
    stop = threading.Event()
    worker = threading.Thread(
        target=dispatcher.consume_loop, args=("billing",), kwargs={"stop_event": stop}
    )
    worker.start()
    MessagePublisher(backend).publish(OrderCreated(order_id="s"))
    stop.set()
    worker.join(timeout=10)
    assert not worker.is_alive()


def test_on_exception_and_after_consume_hooks(backend: InMemoryMessagingBackend) -> None:
    errors: list[BaseException] = []
    consumed: list[int] = []
    dispatcher = make(backend, Billing(fail_on="bad"), ack_policy=AckPolicy.AFTER_HANDLE)
    MessagePublisher(backend).publish(OrderCreated(order_id="bad"))
    MessagePublisher(backend).publish(OrderCreated(order_id="good"))
    dispatcher.consume_loop(
        "billing",
        idle_timeout=0,
        on_exception=errors.append,
        after_consume=lambda: consumed.append(1),
    )
    assert [str(e) for e in errors] == ["cannot bill bad"] * FAST_RETRY.immediate_attempts
    assert len(consumed) == 2


def test_signals_follow_the_message(backend: InMemoryMessagingBackend) -> None:
    seen: list[str] = []
    dispatcher = make(backend, Billing(fail_on="bad"), retry=RetryPolicy.none())
    names = ["published", "received", "processed", "failed", "dead_lettered"]

    def recorder(name: str) -> Any:
        return lambda sender, **kw: seen.append(name)

    receivers = {name: recorder(name) for name in names}
    for name, receiver in receivers.items():
        getattr(signals, f"message_{name}").connect(receiver)
    try:
        MessagePublisher(backend).publish(OrderCreated(order_id="good"))
        MessagePublisher(backend).publish(OrderCreated(order_id="bad"))
        dispatcher.consume_loop("billing", idle_timeout=0)
    finally:
        for name, receiver in receivers.items():
            getattr(signals, f"message_{name}").disconnect(receiver)
    assert seen == [
        "published",
        "published",
        "received",
        "processed",
        "received",
        "failed",
        "dead_lettered",
    ]


def test_unattached_consumer_no_longer_receives(backend: InMemoryMessagingBackend) -> None:
    billing = Billing()
    dispatcher = make(backend, billing)
    dispatcher.unattach_consumer(billing)
    MessagePublisher(backend).publish(OrderCreated(order_id="gone"))
    dispatcher.consume_loop("billing", idle_timeout=0)
    assert billing.calls == 0
    other = Billing()
    dispatcher.attach_consumer(other)
    MessagePublisher(backend).publish(OrderCreated(order_id="back"))
    dispatcher.consume_loop("billing", idle_timeout=0)
    assert other.effects == ["back"]


def test_simple_dispatcher_takes_one_consumer(backend: InMemoryMessagingBackend) -> None:
    billing = Billing()
    dispatcher = SimpleMessageDispatcher(billing, backend=backend)
    dispatcher.declare("simple")
    MessagePublisher(backend).publish(OrderCreated(order_id="simple"))
    dispatcher.consume_loop("simple", idle_timeout=0)
    assert billing.effects == ["simple"]


@pytest.mark.parametrize("policy", [AckPolicy.AFTER_SUCCESS, AckPolicy.AFTER_HANDLE])
def test_missing_dead_letter_queue_keeps_the_message(
    backend: InMemoryMessagingBackend, policy: AckPolicy
) -> None:
    billing = Billing(fail_on="p")
    backend.declare_queue("bare")  # declared elsewhere, without a dead-letter queue
    dispatcher = MessageDispatcher(
        backend, consumers=[billing], retry=RetryPolicy.none(), ack_policy=policy
    )
    MessagePublisher(backend).publish(OrderCreated(order_id="p"), queue="bare")
    dispatcher.consume_loop("bare", idle_timeout=0)
    assert backend.queue_depth(backend.get_queue("bare")) == 1


def test_a_queue_only_receives_the_types_its_listeners_accept(
    backend: InMemoryMessagingBackend,
) -> None:
    make(backend, Billing())
    message = MessagePublisher(backend).publish(OrderPaid(order_id="not-billed"))
    assert message.manifest == "OrderPaid"
    assert receive(backend, backend.get_queue("billing"), 1, timeout=0.2) == []


def test_a_base_class_listener_receives_subclass_events_from_their_topics(
    backend: InMemoryMessagingBackend,
) -> None:
    from tests.events import OrderCancelled, OrderEvent

    seen: list[OrderEvent] = []

    class Audit(Consumer):
        @listener
        def on_any(self, event: OrderEvent) -> None:
            seen.append(event)

    dispatcher = MessageDispatcher(backend, consumers=[Audit()])
    dispatcher.declare("audit")
    publisher = MessagePublisher(backend)
    publisher.publish(OrderPaid(order_id="p"))
    publisher.publish(OrderCancelled(order_id="c", reason="r"))
    assert dispatcher.consume_loop("audit", idle_timeout=0) == 2
    assert seen == [OrderPaid(order_id="p"), OrderCancelled(order_id="c", reason="r")]


class Slow(Consumer):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.handled: list[str] = []

    @listener
    def on_created(self, event: OrderCreated) -> None:
        threading.Event().wait(self.seconds)
        self.handled.append(event.order_id)


def handle_with_two(backend: InMemoryMessagingBackend, consumer: Consumer, **options: Any) -> None:
    """Consume one OrderCreated with two dispatchers that did not declare the queue."""
    MessagePublisher(backend).publish(OrderCreated(order_id="o-1", total=Decimal(1)), queue="q")
    workers = [MessageDispatcher(backend, consumers=[consumer], **options) for _ in range(2)]
    stop = threading.Event()
    threads = [
        threading.Thread(target=w.consume_loop, args=("q",), kwargs={"stop_event": stop})
        for w in workers
    ]
    for thread in threads:
        thread.start()
    threading.Event().wait(2.5)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)


def test_the_queues_own_visibility_timeout_wins_over_a_longer_one_given(
    backend: InMemoryMessagingBackend, caplog: pytest.LogCaptureFixture
) -> None:
    backend.declare_queue("q", visibility_timeout=0.3)
    slow = Slow(seconds=1.2)
    handle_with_two(backend, slow, visibility_timeout=30)
    assert slow.handled == ["o-1"]
    assert "hides a message for 0.3 s, not the 30 s this dispatcher was given" in caplog.text


class Unreadable(InMemoryMessagingBackend):
    def visibility_timeout_of(self, queue: Any) -> float:
        raise BackendConnectionError("not allowed to read the queue's attributes")


def test_a_visibility_timeout_that_cannot_be_read_falls_back_to_the_one_given(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with Unreadable() as backend:
        backend.declare_queue("q", visibility_timeout=0.3)
        slow = Slow(seconds=1.2)
        handle_with_two(backend, slow, visibility_timeout=0.3)
        assert slow.handled == ["o-1"]
    assert "cannot read the visibility timeout of q" in caplog.text
