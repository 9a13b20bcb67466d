from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from melange import (
    Consumer,
    Message,
    MessageDispatcher,
    MessagePublisher,
    QueuePublisher,
    TopicPublisher,
    listener,
)
from melange._trace_headers import MAX_TRACE_LENGTH, is_trace_value
from melange.backends.memory import InMemoryMessagingBackend
from melange.context import handling
from melange.exceptions import ConfigurationError, InvalidArgumentError, QueueNotFoundError
from melange.models import DECODE_ERROR
from melange.testing import receive
from tests.events import InvoiceSent, OrderCreated, OrderPaid


@pytest.fixture
def backend() -> Iterator[InMemoryMessagingBackend]:
    with InMemoryMessagingBackend() as backend:
        yield backend


def test_an_event_goes_to_the_topic_named_after_its_manifest(
    backend: InMemoryMessagingBackend,
) -> None:
    queue, _ = backend.declare_queue("q", backend.declare_topic("billing.invoice-sent"))
    sent = MessagePublisher(backend).publish(InvoiceSent(invoice_id="i-1"))
    [received] = receive(backend, queue, 1)
    assert received.message_id == sent.message_id
    assert received.manifest == "billing.invoice-sent"


def test_every_message_carries_correlation_causation_and_time(
    backend: InMemoryMessagingBackend,
) -> None:
    backend.declare_queue("q")
    before = datetime.now(UTC)
    message = MessagePublisher(backend).publish(OrderPaid(order_id="1"), queue="q")
    published_at = datetime.fromisoformat(message.metadata["published_at"])
    assert published_at.tzinfo is not None
    assert published_at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert before <= published_at <= datetime.now(UTC)
    assert message.metadata["correlation_id"] == message.message_id
    assert message.metadata["causation_id"] == message.message_id


def test_user_headers_travel_as_strings(backend: InMemoryMessagingBackend) -> None:
    queue, _ = backend.declare_queue("q")
    MessagePublisher(backend).publish(
        OrderPaid(order_id="1"), queue="q", headers={"tenant": "acme", "priority": 5}
    )
    [received] = receive(backend, queue, 1)
    assert received.metadata["tenant"] == "acme"
    assert received.metadata["priority"] == "5"


def test_publishing_while_handling_copies_correlation_and_names_the_cause(
    backend: InMemoryMessagingBackend,
) -> None:
    publisher = MessagePublisher(backend)

    class Shipping(Consumer):
        @listener
        def on_paid(self, event: OrderPaid) -> None:
            publisher.publish(InvoiceSent(invoice_id=event.order_id), queue="invoices")

    backend.declare_queue("invoices")
    dispatcher = MessageDispatcher(backend, consumers=[Shipping()])
    dispatcher.declare("shipping")
    cause = publisher.publish(OrderPaid(order_id="o-9"), headers={"correlation_id": "saga-1"})
    dispatcher.consume_loop("shipping", idle_timeout=0)
    [effect] = receive(backend, backend.get_queue("invoices"), 1)
    assert effect.metadata["correlation_id"] == "saga-1"
    assert effect.metadata["causation_id"] == cause.message_id
    assert effect.message_id != cause.message_id


HOSTILE_TRACE = {
    "long correlation": {"correlation_id": "c" * 100_000},
    "unprintable correlation": {"correlation_id": "a\x00b"},
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TRACE))
def test_inherited_trace_headers_are_bounded(backend: InMemoryMessagingBackend, case: str) -> None:
    headers = HOSTILE_TRACE[case]
    cause = Message(content="{}", message_id="m" * 5000, metadata=headers)
    with handling(cause):
        effect = MessagePublisher(backend).build_message({"a": 1})
    for key in ("correlation_id", "causation_id"):
        assert is_trace_value(effect.metadata[key])
        assert len(effect.metadata[key]) <= MAX_TRACE_LENGTH
    with handling(cause):  # the same stand-in every time: the messages stay linked
        again = MessagePublisher(backend).build_message({"a": 2})
    assert again.metadata["correlation_id"] == effect.metadata["correlation_id"]


def test_a_bad_saga_id_is_not_inherited(backend: InMemoryMessagingBackend) -> None:
    for saga_id, saga_type in (("s" * 300, "OrderSaga"), ("s-1", "T" * 300), ("s\n1", "OrderSaga")):
        cause = Message(content="{}", metadata={"saga_id": saga_id, "saga_type": saga_type})
        with handling(cause):
            effect = MessagePublisher(backend).build_message({"a": 1})
        assert "saga_id" not in effect.metadata
        assert "saga_type" not in effect.metadata
    cause = Message(content="{}", metadata={"saga_id": "s-1", "saga_type": "OrderSaga"})
    with handling(cause):
        effect = MessagePublisher(backend).build_message({"a": 1})
    assert (effect.metadata["saga_id"], effect.metadata["saga_type"]) == ("s-1", "OrderSaga")


def test_melanges_own_headers_cannot_be_published(backend: InMemoryMessagingBackend) -> None:
    backend.declare_queue("q")
    with pytest.raises(InvalidArgumentError, match="x-melange-decode-error"):
        MessagePublisher(backend).publish({"a": 1}, queue="q", headers={DECODE_ERROR: "x"})
    sent = MessagePublisher(backend).publish(
        {"a": 1}, queue="q", headers={"x-melange-serializer": "1"}
    )
    assert sent.metadata["x-melange-serializer"] == "1"  # the one a producer may set


def test_topic_and_queue_together_is_an_error(backend: InMemoryMessagingBackend) -> None:
    with pytest.raises(ConfigurationError):
        MessagePublisher(backend).publish(OrderPaid(order_id="1"), topic="t", queue="q")


def test_a_dict_needs_a_destination(backend: InMemoryMessagingBackend) -> None:
    with pytest.raises(ConfigurationError, match="topic= or queue="):
        MessagePublisher(backend).publish({"a": 1})
    backend.declare_queue("q")
    message = MessagePublisher(backend).publish({"a": 1}, queue="q")
    assert message.manifest is None


def test_publishing_to_a_missing_queue_raises(backend: InMemoryMessagingBackend) -> None:
    with pytest.raises(QueueNotFoundError):
        MessagePublisher(backend).publish(OrderPaid(order_id="1"), queue="nowhere")


def test_delay_holds_a_message_back(backend: InMemoryMessagingBackend) -> None:
    queue, _ = backend.declare_queue("q")
    MessagePublisher(backend).publish(OrderPaid(order_id="1"), queue="q", delay=0.5)
    assert backend.retrieve_messages(queue) == []
    assert len(receive(backend, queue, 1, timeout=5)) == 1
    with pytest.raises(ConfigurationError):
        MessagePublisher(backend).publish(OrderPaid(order_id="1"), topic="t", delay=1)


def test_publish_batch_groups_by_topic(backend: InMemoryMessagingBackend) -> None:
    created, _ = backend.declare_queue("created", backend.declare_topic("OrderCreated"))
    paid, _ = backend.declare_queue("paid", backend.declare_topic("OrderPaid"))
    events: list[Any] = [OrderCreated(order_id=str(i)) for i in range(3)]
    events += [OrderPaid(order_id="p")]
    messages = MessagePublisher(backend).publish_batch(events)
    assert len(messages) == 4
    assert len(receive(backend, created, 3)) == 3
    assert len(receive(backend, paid, 1)) == 1


def test_the_two_argument_publishers(backend: InMemoryMessagingBackend) -> None:
    queue, _ = backend.declare_queue("q", backend.declare_topic("news"))
    QueuePublisher(backend).publish("q", OrderPaid(order_id="1"))
    TopicPublisher(backend).publish("news", OrderPaid(order_id="2"))
    got = sorted(m.content for m in receive(backend, queue, 2))
    assert len(got) == 2
    assert all(isinstance(m, str) for m in got)


def test_message_ids_are_unique_uuid4_strings() -> None:
    import uuid

    ids = {Message(content="").message_id for _ in range(1000)}
    assert len(ids) == 1000
    assert all(uuid.UUID(i).version == 4 for i in ids)
    assert all(uuid.UUID(i).variant == uuid.RFC_4122 for i in ids)
    assert all(str(uuid.UUID(i)) == i for i in ids)
    with pytest.raises(TypeError):
        Message(content="", message_id=None)  # type: ignore[arg-type]
