"""Melange 7's backend helpers: the default backend, the factory, the in-memory backend."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, ClassVar

from melange.backends import memory
from melange.backends.interfaces import MessagingBackend
from melange.compat._deprecation import deprecated
from melange.compat._models import QueueWrapper, TopicWrapper
from melange.consumers import Consumer
from melange.dispatcher import MessageDispatcher
from melange.exceptions import ConfigurationError
from melange.models import QueueWrapper as CurrentQueue
from melange.models import TopicWrapper as CurrentTopic
from melange.serializers import SerializerRegistry
from melange.testing import link_synchronously as current_link

__all__ = [
    "BackendManager",
    "InMemoryMessagingBackend",
    "Melange7Handles",
    "MessagingBackendFactory",
    "link_synchronously",
]


class BackendManager:
    """Melange 7's process-wide default backend (every instance shares it)."""

    _default: ClassVar[MessagingBackend | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def set_default_backend(self, backend: MessagingBackend) -> None:
        """Make ``backend`` the default of publishers and dispatchers built without one.

        Raises:
            ConfigurationError: ``backend`` is not a ``MessagingBackend``.
        """
        if not isinstance(backend, MessagingBackend):
            raise ConfigurationError(f"invalid backend supplied: {backend!r}")
        with BackendManager._lock:
            BackendManager._default = backend

    def get_default_backend(self) -> MessagingBackend:
        """Return the default backend.

        Raises:
            ConfigurationError: none was set.
        """
        found = BackendManager._default
        if found is None:
            raise ConfigurationError(
                "no backend is registered: call BackendManager().set_default_backend first"
            )
        return found


def backend_or_default(backend: MessagingBackend | None) -> MessagingBackend:
    """Return ``backend``, or the ``BackendManager``'s default without one."""
    return backend if backend is not None else BackendManager().get_default_backend()


class Melange7Handles(MessagingBackend):
    """Hands out Melange 7's queue and topic handles (with ``unwrapped_obj``).

    A mixin: put it before the backend class it wraps.
    """

    def declare_topic(self, topic_name: str) -> TopicWrapper:
        """Create or get a topic."""
        return TopicWrapper(super().declare_topic(topic_name).obj)  # type: ignore[safe-super]

    def get_queue(self, queue_name: str) -> QueueWrapper:
        """Return an existing queue."""
        return QueueWrapper(super().get_queue(queue_name).obj)  # type: ignore[safe-super]

    def declare_queue(
        self, queue_name: str, *topics_to_bind: CurrentTopic, **kwargs: Any
    ) -> tuple[CurrentQueue, CurrentQueue | None]:
        """Create or get a queue (and its dead-letter queue) subscribed to the topics."""
        queue, dead_letter = super().declare_queue(  # type: ignore[safe-super]
            queue_name, *topics_to_bind, **kwargs
        )
        return QueueWrapper(queue.obj), None if dead_letter is None else QueueWrapper(
            dead_letter.obj
        )


class InMemoryMessagingBackend(Melange7Handles, memory.InMemoryMessagingBackend):
    """Melange 7's in-memory backend: melange's, with Melange 7's handles.

    Unlike 7.x's, a message is delivered once, not again on every publish.
    """

    def __init__(self) -> None:
        deprecated("InMemoryMessagingBackend", "melange.backends.memory.InMemoryMessagingBackend")
        super().__init__()


class MessagingBackendFactory:
    """Melange 7's factory: create topics, and queues subscribed to topics by name."""

    def __init__(self, backend: MessagingBackend | None = None) -> None:
        deprecated("MessagingBackendFactory", "backend.declare_queue or dispatcher.declare")
        self.backend = backend_or_default(backend)

    def init_queue(
        self,
        queue_name: str,
        topic_names_to_subscribe: Sequence[str] | None = None,
        dlq_name: str | None = None,
        **kwargs: Any,
    ) -> CurrentQueue:
        """Create the queue (and ``dlq_name``), subscribed to the topics (created if needed)."""
        topics = [self.init_topic(name) for name in topic_names_to_subscribe or ()]
        queue, _ = self.backend.declare_queue(
            queue_name, *topics, dead_letter_queue_name=dlq_name, **kwargs
        )
        return queue

    def init_topic(self, topic_name: str) -> CurrentTopic:
        """Create or get a topic."""
        return self.backend.declare_topic(topic_name)


def link_synchronously(
    queue_name: str,
    consumers: Sequence[Consumer],
    serializer_registry: SerializerRegistry,
    backend: memory.InMemoryMessagingBackend,
) -> MessageDispatcher:
    """Make every publish into ``queue_name`` run ``consumers`` before it returns (7.x's order)."""
    deprecated("link_synchronously", "melange.testing.link_synchronously")
    return current_link(queue_name, consumers, backend, serializers=serializer_registry)
