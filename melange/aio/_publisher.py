"""``AsyncMessagePublisher``: ``MessagePublisher``'s routing, headers and middleware, awaited."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from melange.aio._bridged import BridgedBackend
from melange.exceptions import ConfigurationError
from melange.middleware import Middleware
from melange.models import Message, QueueWrapper, TopicWrapper
from melange.publishers import MessagePublisher
from melange.serializers import SerializerRegistry

__all__ = ["AsyncMessagePublisher", "bridged"]


def bridged(backend: Any) -> BridgedBackend:
    """Return ``backend`` if it is a ``BridgedBackend``.

    Raises:
        ConfigurationError: any other object (a sync backend, say).
    """
    if not isinstance(backend, BridgedBackend):
        raise ConfigurationError(
            f"expected an async backend from melange.aio.from_url(...) or BridgedBackend(...),"
            f" not {type(backend).__qualname__}"
        )
    return backend


class AsyncMessagePublisher:
    """Publishes typed events without blocking the event loop.

    The same as ``MessagePublisher`` in every rule (routing by manifest,
    ``correlation_id``/``causation_id`` from the message being handled,
    ``hold_publishes``, middleware); the publishing runs on the backend's
    threads, in a copy of the caller's context.
    """

    def __init__(
        self,
        backend: BridgedBackend,
        serializers: SerializerRegistry | None = None,
        *,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        self.backend = bridged(backend)
        #: The synchronous publisher doing the work (usable from sync code too).
        self.sync = MessagePublisher(backend.sync, serializers, middleware=middleware)
        self.serializers = self.sync.serializers

    async def publish(
        self,
        event: Any,
        *,
        topic: str | TopicWrapper | None = None,
        queue: str | QueueWrapper | None = None,
        headers: Mapping[str, Any] | None = None,
        delay: float = 0.0,
    ) -> Message:
        """Publish one event and return the message sent (see ``MessagePublisher.publish``)."""
        return await self.backend.run(
            self.sync.publish, event, topic=topic, queue=queue, headers=headers, delay=delay
        )

    async def publish_batch(
        self,
        events: Iterable[Any],
        *,
        topic: str | TopicWrapper | None = None,
        queue: str | QueueWrapper | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> list[Message]:
        """Publish several events in as few broker calls as the backend allows."""
        return await self.backend.run(
            self.sync.publish_batch, list(events), topic=topic, queue=queue, headers=headers
        )

    async def send(
        self,
        message: Message,
        *,
        topic: str | TopicWrapper | None = None,
        queue: str | QueueWrapper | None = None,
        delay: float = 0.0,
    ) -> None:
        """Send a message built earlier as it is (see ``MessagePublisher.send``)."""
        await self.backend.run(self.sync.send, message, topic=topic, queue=queue, delay=delay)
