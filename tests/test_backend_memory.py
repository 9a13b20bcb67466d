from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from melange.aio import AsyncMessagingBackend
from melange.backends import from_url
from melange.backends.memory import InMemoryMessagingBackend
from melange.models import Message
from melange.testing import AsyncBackendContract, AsyncInMemoryBackend, BackendContract, receive


class TestInMemoryBackend(BackendContract, AsyncBackendContract):
    @pytest.fixture
    def backend(self) -> Iterator[InMemoryMessagingBackend]:
        with InMemoryMessagingBackend() as backend:
            yield backend


def test_from_url_builds_an_in_memory_backend() -> None:
    backend = from_url("memory://?visibility_timeout=2")
    assert isinstance(backend, InMemoryMessagingBackend)
    queue, _ = backend.declare_queue("q")
    backend.publish_to_queue(Message(content="x"), queue)
    assert receive(backend, queue, 1)[0].content == "x"


def test_testing_module_is_the_same_backend() -> None:
    from melange.backends import testing

    assert testing.InMemoryMessagingBackend is InMemoryMessagingBackend


def test_backend_out_of_scope_is_collected() -> None:
    import gc
    import weakref

    backend = InMemoryMessagingBackend()
    backend.declare_queue("q")
    ref = weakref.ref(backend)
    del backend
    gc.collect()
    assert ref() is None


def test_link_synchronously_delivers_on_publish() -> None:
    from melange import Consumer, MessagePublisher, listener
    from melange.testing import link_synchronously
    from tests.events import OrderCreated, OrderPaid

    seen: list[str] = []

    class Shipping(Consumer):
        @listener
        def on_created(self, event: OrderCreated) -> None:
            seen.append(f"created {event.order_id}")
            publisher.publish(OrderPaid(order_id=event.order_id))

        @listener
        def on_paid(self, event: OrderPaid) -> None:
            seen.append(f"paid {event.order_id}")

    backend = InMemoryMessagingBackend()
    publisher = MessagePublisher(backend)
    link_synchronously("shipping", [Shipping()], backend)
    publisher.publish(OrderCreated(order_id="o-1"))
    assert seen == ["created o-1", "paid o-1"]
    assert backend.queue_depth(backend.get_queue("shipping")) == 0


@pytest.mark.parametrize("old_path", ["melange.backends.memory", "melange.backends.testing"])
def test_link_synchronously_at_its_old_path_is_the_same_function(old_path: str) -> None:
    import importlib

    from melange.testing import link_synchronously

    module = importlib.import_module(old_path)
    with pytest.warns(DeprecationWarning, match="melange.testing"):
        assert module.link_synchronously is link_synchronously


class TestNativeAsyncInMemoryBackend(AsyncBackendContract):
    """``melange.testing.AsyncInMemoryBackend``: an async backend with no bridge."""

    @pytest.fixture
    def backend(self) -> Iterator[InMemoryMessagingBackend]:
        with InMemoryMessagingBackend() as backend:
            yield backend

    def async_backend(self, backend: Any) -> AsyncMessagingBackend:
        return AsyncInMemoryBackend(backend)
