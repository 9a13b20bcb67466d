"""Melange 7's dispatcher tests, on melange.compat's in-memory backend."""

from __future__ import annotations

from melange.compat import (
    InMemoryMessagingBackend,
    Message,
    MessagingBackendFactory,
    SerializerRegistry,
    SimpleMessageDispatcher,
)
from tests.compat.fixtures import (
    BananaConsumer,
    BananaHappened,
    Calls,
    ExceptionaleConsumer,
    NoBananaConsumer,
    SerializerStub,
    serializer_settings,
)


def two_bananas() -> InMemoryMessagingBackend:
    backend = InMemoryMessagingBackend()
    queue = MessagingBackendFactory(backend).init_queue("queue", dlq_name="queue-dlq")
    for _ in range(2):
        content = SerializerStub().serialize(BananaHappened("apple"))
        backend.publish_to_queue(Message.create(content, None, 40), queue)
    return backend


def left_in(backend: InMemoryMessagingBackend, name: str) -> int:
    stats = backend.queue_stats(backend.get_queue(name))
    return (stats.ready or 0) + (stats.in_flight or 0) + (stats.delayed or 0)


def test_consume_on_queue_with_messages() -> None:
    backend, calls = two_bananas(), Calls()
    registry = SerializerRegistry(serializer_settings)
    SimpleMessageDispatcher(
        BananaConsumer(calls), serializer_registry=registry, backend=backend
    ).consume_event("queue")
    assert [e.somevalue for e in calls.events] == ["apple", "apple"]
    assert left_in(backend, "queue") == 0  # both acknowledged


def test_consume_on_queue_but_no_consumer_interested_in_the_messages() -> None:
    backend, calls = two_bananas(), Calls()
    registry = SerializerRegistry(serializer_settings)
    SimpleMessageDispatcher(
        NoBananaConsumer(calls), serializer_registry=registry, backend=backend
    ).consume_event("queue")
    assert calls.events == []
    assert left_in(backend, "queue") == 0  # acknowledged all the same


def test_if_a_consumer_raises_an_exception_the_message_is_not_acknowledged() -> None:
    backend, calls = two_bananas(), Calls()
    registry = SerializerRegistry(serializer_settings)
    SimpleMessageDispatcher(
        ExceptionaleConsumer(calls), serializer_registry=registry, backend=backend
    ).consume_event("queue")
    assert len(calls.events) == 2  # once each: Melange 7 ran a consumer once per delivery
    assert left_in(backend, "queue") == 2  # back in the queue for a later delivery
    assert left_in(backend, "queue-dlq") == 0
