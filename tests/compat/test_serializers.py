"""Melange 7's publisher, pickle and registry tests."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from melange.compat import (
    InMemoryMessagingBackend,
    MessagingBackendFactory,
    PickleSerializer,
    QueuePublisher,
    SerializerRegistry,
    sort,
)
from tests.compat.fixtures import (
    BananaHappened,
    BaseMessage,
    MessageStubInterface,
    SerializerStub,
    serializer_settings,
)


@dataclass
class OrderResponse:
    order_id: uuid.UUID
    reference: str


def test_publish_a_message_to_a_queue() -> None:
    backend = InMemoryMessagingBackend()
    queue = MessagingBackendFactory(backend).init_queue("queue")
    publisher = QueuePublisher(
        backend=backend, serializer_registry=SerializerRegistry(serializer_settings)
    )
    publisher.publish("queue", {"some_content": "12345"})
    [message] = backend.retrieve_messages(queue)
    assert json.loads(message.content) == {"some_content": "12345"}
    assert message.serializer_id == 1  # a dict goes to JSON


def test_pickle_a_domain_event() -> None:
    serializer = PickleSerializer()
    event = OrderResponse(uuid.uuid4(), "REF88888")
    assert serializer.deserialize(serializer.serialize(event)) == event
    assert serializer.manifest(event) == "OrderResponse"


def test_sort() -> None:
    ordered = sort([(BaseMessage, SerializerStub), (MessageStubInterface, SerializerStub)])
    assert [cls for cls, _ in ordered] == [MessageStubInterface, BaseMessage]


def test_a() -> None:
    registry = SerializerRegistry(serializer_settings)
    assert isinstance(registry.find_serializer_for(BananaHappened(1)), SerializerStub)
