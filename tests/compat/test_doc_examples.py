"""Melange 7's documentation examples: the in-memory backend, and a consumer loop on SQS."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from melange.compat import (
    Consumer,
    InMemoryMessagingBackend,
    LocalSQSBackend,
    MessagingBackendFactory,
    PickleSerializer,
    QueuePublisher,
    SerializerRegistry,
    SimpleMessageDispatcher,
    link_synchronously,
)
from tests.compat.conftest import unique

pickle_only = {
    "serializers": {"pickle": PickleSerializer},
    "serializer_bindings": {},
    "default": "pickle",
}


def test_inmemory_messaging_backend() -> None:
    first: list[Any] = []
    second: list[Any] = []
    backend = InMemoryMessagingBackend()
    registry = SerializerRegistry(pickle_only)
    link_synchronously(
        "somequeue", [Consumer(first.append), Consumer(second.append)], registry, backend
    )
    QueuePublisher(registry, backend=backend).publish("somequeue", {"message": "Mary"})
    QueuePublisher(registry, backend=backend).publish("somequeue", {"message": "Ann"})
    # Each consumer saw each message once (Melange 7's re-sent every earlier one).
    assert first == second == [{"message": "Mary"}, {"message": "Ann"}]


@pytest.mark.sqs
def test_async_consumer(backend: LocalSQSBackend) -> None:
    queue_name = unique("testqueue")
    queue = MessagingBackendFactory(backend).init_queue(queue_name)
    state: list[Any] = []
    registry = SerializerRegistry(pickle_only)
    dispatcher = SimpleMessageDispatcher(
        Consumer(on_message=state.append), registry, backend=backend
    )
    loop = threading.Thread(target=dispatcher.consume_loop, args=(queue_name,), daemon=True)
    loop.start()
    try:
        QueuePublisher(registry, backend).publish(queue_name, {"value": 1})
        deadline = time.monotonic() + 60
        while not state and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        dispatcher.stop()
        loop.join(timeout=30)
    assert state == [{"value": 1}]
    assert not loop.is_alive()
    backend.delete_queue(queue)
