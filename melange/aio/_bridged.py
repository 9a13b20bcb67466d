"""``BridgedBackend``: an async backend over a synchronous one, its calls run in threads.

Every call runs the synchronous backend's method on a small thread pool of
the backend's own and awaits it, in a copy of the caller's context (so a
publish from a handler keeps its correlation). The event loop never waits
on the broker. docs/asyncio.md says why melange bridges rather than uses
async drivers, with figures.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from melange._bridge import in_thread
from melange.aio._interface import AsyncMessagingBackend
from melange.backends import from_url as sync_from_url
from melange.backends.interfaces import MessagingBackend, QueueStats
from melange.exceptions import InvalidArgumentError
from melange.models import Message, QueueWrapper, TopicWrapper

__all__ = ["BridgedBackend", "from_url"]

_T = TypeVar("_T")


class BridgedBackend(AsyncMessagingBackend):
    """``sync``'s methods as coroutines; ``threads`` bounds the broker calls in flight."""

    def __init__(self, sync: MessagingBackend, *, threads: int = 8) -> None:
        if threads < 1:
            raise InvalidArgumentError(f"threads must be at least 1, not {threads!r}")
        self.sync = sync
        self.default_visibility_timeout = sync.default_visibility_timeout
        self.default_max_receive_count = sync.default_max_receive_count
        self.max_message_size = sync.max_message_size
        self.messaging_system = sync.messaging_system
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="melange-aio")
        self._closed = False
        self._close_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"BridgedBackend({self.sync!r})"

    async def run(self, function: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """Run ``function(*args, **kwargs)`` on this backend's threads, in the caller's context."""
        return await in_thread(self._pool, function, *args, **kwargs)

    async def declare_topic(self, topic_name: str) -> TopicWrapper:
        return await self.run(self.sync.declare_topic, topic_name)

    async def get_queue(self, queue_name: str) -> QueueWrapper:
        return await self.run(self.sync.get_queue, queue_name)

    async def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        visibility_timeout: float | None = None,
        max_receive_count: int | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        return await self.run(
            self.sync.declare_queue,
            queue_name,
            *topics_to_bind,
            dead_letter_queue_name=dead_letter_queue_name,
            visibility_timeout=visibility_timeout,
            max_receive_count=max_receive_count,
            **kwargs,
        )

    async def retrieve_messages(self, queue: QueueWrapper, **kwargs: Any) -> list[Message]:
        return await self.run(self.sync.retrieve_messages, queue, **kwargs)

    async def publish_to_topic(
        self,
        message: Message,
        topic: TopicWrapper,
        extra_attributes: dict[str, Any] | None = None,
    ) -> None:
        await self.run(self.sync.publish_to_topic, message, topic, extra_attributes)

    async def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        await self.run(self.sync.publish_to_queue, message, queue, **kwargs)

    async def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper
    ) -> None:
        await self.run(self.sync.publish_batch_to_queue, messages, queue)

    async def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper
    ) -> None:
        await self.run(self.sync.publish_batch_to_topic, messages, topic)

    async def publish_delayed_to_queue(
        self, message: Message, queue: QueueWrapper, delay: float
    ) -> None:
        await self.run(self.sync.publish_delayed_to_queue, message, queue, delay)

    async def acknowledge(self, message: Message) -> None:
        await self.run(self.sync.acknowledge, message)

    async def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        await self.run(self.sync.acknowledge_batch, messages)

    async def release(self, message: Message, delay: float = 0.0) -> None:
        await self.run(self.sync.release, message, delay)

    async def extend_visibility(self, message: Message, seconds: float) -> None:
        await self.run(self.sync.extend_visibility, message, seconds)

    async def extend_visibility_batch(self, messages: Sequence[Message], seconds: float) -> None:
        await self.run(self.sync.extend_visibility_batch, messages, seconds)

    async def visibility_timeout_of(self, queue: QueueWrapper) -> float | None:
        return await self.run(self.sync.visibility_timeout_of, queue)

    async def queue_stats(self, queue: QueueWrapper) -> QueueStats:
        return await self.run(self.sync.queue_stats, queue)

    async def delete_queue(self, queue: QueueWrapper) -> None:
        await self.run(self.sync.delete_queue, queue)

    async def delete_topic(self, topic: TopicWrapper) -> None:
        await self.run(self.sync.delete_topic, topic)

    @property
    def closed(self) -> bool:
        return self._closed

    async def close_connection(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        await in_thread(self._pool, self.sync.close_connection)
        self._pool.shutdown(wait=False)


def from_url(url: str, *, threads: int = 8) -> BridgedBackend:
    """Build the async backend for a URL, as ``melange.backends.from_url`` does the sync one.

    Raises:
        ConfigurationError: the scheme is not known, or a bad option.
        MissingExtraError: the backend's driver is not installed.
    """
    return BridgedBackend(sync_from_url(url), threads=threads)
