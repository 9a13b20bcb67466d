"""``AsyncMessagingBackend``: the backend interface, awaitable, for asyncio code."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any, Self

from melange.backends.interfaces import BackendCapabilities, QueueStats
from melange.exceptions import ConfigurationError, UnsupportedOperationError
from melange.models import Message, QueueWrapper, TopicWrapper

__all__ = ["AsyncMessagingBackend", "require_async_backend"]


class AsyncMessagingBackend(BackendCapabilities, abc.ABC):
    """The methods of ``melange.backends.interfaces.MessagingBackend``, as coroutines.

    Names, arguments and meaning are those of the synchronous interface (see
    docs/backends.md); only the waiting differs: no call blocks the
    event loop. An async backend is an async context manager.
    """

    @classmethod
    def from_url(cls, url: str) -> Self:
        """Build the backend from a URL (``melange.aio.from_url`` bridges any sync one).

        Raises:
            ConfigurationError: a bad URL or option; the default: no URL form.
        """
        raise ConfigurationError(f"{cls.__qualname__} cannot be built from a URL ({url!r})")

    @abc.abstractmethod
    async def declare_topic(self, topic_name: str) -> TopicWrapper:
        """Get or create a topic."""

    @abc.abstractmethod
    async def get_queue(self, queue_name: str) -> QueueWrapper:
        """Get an existing queue; never creates one (``QueueNotFoundError``)."""

    @abc.abstractmethod
    async def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        visibility_timeout: float | None = None,
        max_receive_count: int | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Get or create a queue, subscribe it to topics, and attach a dead-letter queue."""

    @abc.abstractmethod
    async def retrieve_messages(
        self,
        queue: QueueWrapper,
        *,
        max_messages: int = 10,
        wait_seconds: float = 0.0,
        visibility_timeout: float | None = None,
    ) -> list[Message]:
        """Receive the messages available now (possibly none).

        At most ``max_messages``, waiting up to ``wait_seconds`` for one, hidden
        ``visibility_timeout`` seconds (``None``: the queue's).
        """

    async def yield_messages(
        self,
        queue: QueueWrapper,
        *,
        max_messages: int = 10,
        wait_seconds: float = 1.0,
        visibility_timeout: float | None = None,
    ) -> AsyncIterator[Message]:
        """Yield messages as they arrive, until the backend is closed."""
        while not self.closed:
            for message in await self.retrieve_messages(
                queue,
                max_messages=max_messages,
                wait_seconds=wait_seconds,
                visibility_timeout=visibility_timeout,
            ):
                yield message

    @abc.abstractmethod
    async def publish_to_topic(
        self,
        message: Message,
        topic: TopicWrapper,
        extra_attributes: dict[str, Any] | None = None,
    ) -> None:
        """Publish a message to every queue subscribed to the topic."""

    @abc.abstractmethod
    async def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        """Publish a message to one queue."""

    @abc.abstractmethod
    async def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper
    ) -> None:
        """Publish several messages to one queue."""

    @abc.abstractmethod
    async def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper
    ) -> None:
        """Publish several messages to one topic."""

    @abc.abstractmethod
    async def publish_delayed_to_queue(
        self, message: Message, queue: QueueWrapper, delay: float
    ) -> None:
        """Publish a message that becomes visible ``delay`` seconds from now."""

    @abc.abstractmethod
    async def acknowledge(self, message: Message) -> None:
        """Mark a received message done so it is never delivered again."""

    @abc.abstractmethod
    async def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        """Acknowledge several received messages."""

    @abc.abstractmethod
    async def release(self, message: Message, delay: float = 0.0) -> None:
        """Hand a received message back, to be delivered again after ``delay`` seconds."""

    @abc.abstractmethod
    async def extend_visibility(self, message: Message, seconds: float) -> None:
        """Keep a received message hidden for ``seconds`` from now."""

    async def extend_visibility_batch(self, messages: Sequence[Message], seconds: float) -> None:
        """Keep several received messages hidden for ``seconds`` from now.

        The default extends each, going on past a failure and raising the first one.
        """
        first_error: Exception | None = None
        for message in messages:
            try:
                await self.extend_visibility(message, seconds)
            except Exception as e:  # the others must still be extended
                first_error = first_error or e
        if first_error is not None:
            raise first_error

    async def visibility_timeout_of(self, queue: QueueWrapper) -> float | None:
        """Return the queue's visibility timeout as the broker has it; ``None``: cannot tell."""
        return None

    @abc.abstractmethod
    async def queue_stats(self, queue: QueueWrapper) -> QueueStats:
        """Return how many messages the queue holds ready, in flight and delayed."""

    async def queue_depth(self, queue: QueueWrapper) -> int:
        """Return how many messages the queue holds, not yet acknowledged (from ``queue_stats``)."""
        stats = await self.queue_stats(queue)
        return sum(n for n in (stats.ready, stats.in_flight, stats.delayed) if n is not None)

    async def browse_messages(self, queue: QueueWrapper, limit: int = 10) -> list[Message]:
        """Return up to ``limit`` messages without receiving them (the default cannot)."""
        raise UnsupportedOperationError(f"{type(self).__name__} cannot browse a queue")

    @abc.abstractmethod
    async def delete_queue(self, queue: QueueWrapper) -> None:
        """Delete a queue and its subscriptions."""

    @abc.abstractmethod
    async def delete_topic(self, topic: TopicWrapper) -> None:
        """Delete a topic and its subscriptions."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """Return whether ``close_connection`` was called."""

    @abc.abstractmethod
    async def close_connection(self) -> None:
        """Release the broker connection; safe to call more than once."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close_connection()


def require_async_backend(backend: object) -> AsyncMessagingBackend:
    """Return ``backend`` if it is an ``AsyncMessagingBackend``.

    Raises:
        ConfigurationError: any other object (a sync backend, say).
    """
    if not isinstance(backend, AsyncMessagingBackend):
        raise ConfigurationError(
            "expected an AsyncMessagingBackend (melange.aio.from_url(...), BridgedBackend(...)"
            f" or a native one), not {type(backend).__qualname__}"
        )
    return backend
