"""``AsyncInMemoryBackend``: a native asyncio backend, for tests and for proving the async API.

It serves the in-memory broker's queues straight from the event loop: every
call is a coroutine that never blocks and uses no thread (the broker's own
operations do no I/O), and a receive that must wait sleeps on the loop until
a publish wakes it. Give it an ``InMemoryMessagingBackend`` to share queues
with synchronous code in the same process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from melange.aio import AsyncMessagingBackend
from melange.backends.interfaces import QueueStats
from melange.backends.memory import InMemoryMessagingBackend
from melange.models import Message, QueueWrapper, TopicWrapper

__all__ = ["AsyncInMemoryBackend"]

#: The longest a waiting receive sleeps before looking again (delayed and returned messages).
_LOOK_AGAIN_SECONDS = 0.05


class AsyncInMemoryBackend(AsyncMessagingBackend):
    """The in-memory broker's semantics (SQS-like), as a native ``AsyncMessagingBackend``."""

    messaging_system = "melange_memory"
    max_delay_seconds = None

    def __init__(self, broker: InMemoryMessagingBackend | None = None) -> None:
        self.broker = broker if broker is not None else InMemoryMessagingBackend()
        self.default_visibility_timeout = self.broker.default_visibility_timeout
        self.default_max_receive_count = self.broker.default_max_receive_count
        # Per event loop and queue: an asyncio.Event belongs to the loop it first waited on.
        self._arrivals: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Event] = {}
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> AsyncInMemoryBackend:
        """Build from ``memory://`` (the in-memory backend's options)."""
        return cls(InMemoryMessagingBackend.from_url(url))

    async def declare_topic(self, topic_name: str) -> TopicWrapper:
        return self.broker.declare_topic(topic_name)

    async def get_queue(self, queue_name: str) -> QueueWrapper:
        return self.broker.get_queue(queue_name)

    async def declare_queue(
        self,
        queue_name: str,
        *topics_to_bind: TopicWrapper,
        dead_letter_queue_name: str | None = None,
        visibility_timeout: float | None = None,
        max_receive_count: int | None = None,
        **kwargs: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        return self.broker.declare_queue(
            queue_name,
            *topics_to_bind,
            dead_letter_queue_name=dead_letter_queue_name,
            visibility_timeout=visibility_timeout,
            max_receive_count=max_receive_count,
            **kwargs,
        )

    async def retrieve_messages(
        self,
        queue: QueueWrapper,
        *,
        max_messages: int = 10,
        wait_seconds: float = 0.0,
        visibility_timeout: float | None = None,
    ) -> list[Message]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        arrived = self._arrival_of(queue, loop)
        while True:
            arrived.clear()
            got = self.broker.retrieve_messages(
                queue, max_messages=max_messages, visibility_timeout=visibility_timeout
            )
            remaining = deadline - loop.time()
            if got or remaining <= 0 or self._closed:
                return got
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), min(remaining, _LOOK_AGAIN_SECONDS))

    def _arrival_of(self, queue: QueueWrapper, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        """Return the event a publish to ``queue`` sets (from any thread)."""
        key = (loop, queue.unwrap())
        arrived = self._arrivals.get(key)
        if arrived is None:
            arrived = self._arrivals[key] = asyncio.Event()

            def wake() -> None:
                if not loop.is_closed():
                    loop.call_soon_threadsafe(arrived.set)

            self.broker.subscribe_to_publish(queue, wake)
        return arrived

    async def publish_to_topic(
        self,
        message: Message,
        topic: TopicWrapper,
        extra_attributes: dict[str, Any] | None = None,
    ) -> None:
        self.broker.publish_to_topic(message, topic, extra_attributes)

    async def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        self.broker.publish_to_queue(message, queue, **kwargs)

    async def publish_batch_to_queue(
        self, messages: Sequence[Message], queue: QueueWrapper
    ) -> None:
        self.broker.publish_batch_to_queue(messages, queue)

    async def publish_batch_to_topic(
        self, messages: Sequence[Message], topic: TopicWrapper
    ) -> None:
        self.broker.publish_batch_to_topic(messages, topic)

    async def publish_delayed_to_queue(
        self, message: Message, queue: QueueWrapper, delay: float
    ) -> None:
        self.broker.publish_delayed_to_queue(message, queue, delay)

    async def acknowledge(self, message: Message) -> None:
        self.broker.acknowledge(message)

    async def acknowledge_batch(self, messages: Sequence[Message]) -> None:
        self.broker.acknowledge_batch(messages)

    async def release(self, message: Message, delay: float = 0.0) -> None:
        self.broker.release(message, delay)

    async def extend_visibility(self, message: Message, seconds: float) -> None:
        self.broker.extend_visibility(message, seconds)

    async def extend_visibility_batch(self, messages: Sequence[Message], seconds: float) -> None:
        self.broker.extend_visibility_batch(messages, seconds)

    async def visibility_timeout_of(self, queue: QueueWrapper) -> float | None:
        return self.broker.visibility_timeout_of(queue)

    async def queue_stats(self, queue: QueueWrapper) -> QueueStats:
        return self.broker.queue_stats(queue)

    async def queue_depth(self, queue: QueueWrapper) -> int:
        return self.broker.queue_depth(queue)

    async def delete_queue(self, queue: QueueWrapper) -> None:
        self.broker.delete_queue(queue)
        name = queue.unwrap()
        for key in [key for key in self._arrivals if key[1] == name]:
            del self._arrivals[key]

    async def delete_topic(self, topic: TopicWrapper) -> None:
        self.broker.delete_topic(topic)

    @property
    def closed(self) -> bool:
        return self._closed

    async def close_connection(self) -> None:
        self._closed = True
        self.broker.close_connection()
