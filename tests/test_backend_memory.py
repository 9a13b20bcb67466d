from __future__ import annotations

from collections.abc import Iterator

import pytest

from melange.backends import from_url
from melange.backends.memory import InMemoryMessagingBackend
from melange.models import Message
from tests.conformance import BackendContract, receive


class TestInMemoryBackend(BackendContract):
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
