"""The backend contract in its async form: what every ``AsyncMessagingBackend`` must do.

Mix ``AsyncBackendContract`` into a test class that provides the ``backend``
fixture (the synchronous backend, as for ``BackendContract``); its tests
bridge it with ``melange.aio.BridgedBackend`` and drive it from an event
loop, checking each call's result and that none blocks the loop. A native
async backend overrides ``async_backend`` to build itself instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from melange.aio import AsyncMessagingBackend, BridgedBackend
from melange.backends.interfaces import MessagingBackend
from melange.exceptions import (
    InvalidArgumentError,
    QueueNotFoundError,
    UnsupportedOperationError,
)
from melange.models import Message, QueueWrapper
from melange.testing._waiting import unique_name

__all__ = ["AsyncBackendContract"]

Scenario = Callable[[AsyncMessagingBackend], Coroutine[Any, Any, None]]


async def received(
    backend: AsyncMessagingBackend, queue: QueueWrapper, expected: int, timeout: float = 10.0
) -> list[Message]:
    """Receive (without acknowledging) until ``expected`` messages came or ``timeout`` passed."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        wait = min(1.0, max(0.0, deadline - time.monotonic()))
        got += await backend.retrieve_messages(queue, max_messages=10, wait_seconds=wait)
    return got


class AsyncBackendContract:
    """Async tests every backend passes; subclasses provide the sync ``backend`` fixture."""

    #: Visibility timeout the tests declare queues with (seconds).
    visibility_timeout: float = 1.0
    #: Whether ``visibility_timeout_of`` tells (``False``: it returns ``None``, the default).
    tells_visibility_timeout: bool = True

    def async_backend(self, backend: Any) -> AsyncMessagingBackend:
        """Return the async backend under test, made from the ``backend`` fixture (bridged)."""
        return BridgedBackend(backend, threads=4)

    def run_async(self, backend: Any, scenario: Scenario) -> None:
        async def run() -> None:
            await scenario(self.async_backend(backend))

        asyncio.run(run())

    async def declare_async(
        self, backend: AsyncMessagingBackend, *topics: str, dlq: bool = False, receives: int = 3
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        wrappers = [await backend.declare_topic(name) for name in topics]
        return await backend.declare_queue(
            unique_name("q"),
            *wrappers,
            dead_letter_queue_name=unique_name("dlq") if dlq else None,
            visibility_timeout=self.visibility_timeout,
            max_receive_count=receives,
        )

    def test_async_publish_receive_acknowledge(self, backend: MessagingBackend) -> None:
        async def scenario(aio: AsyncMessagingBackend) -> None:
            queue, _ = await self.declare_async(aio)
            sent = Message(content="hello", manifest="m", metadata={"k": "v"})
            await aio.publish_to_queue(sent, queue)
            [got] = await received(aio, queue, 1)
            assert (got.message_id, got.content, got.metadata["k"]) == (
                sent.message_id,
                "hello",
                "v",
            )
            await aio.acknowledge(got)
            assert (
                await aio.retrieve_messages(queue, wait_seconds=self.visibility_timeout + 0.5) == []
            )

        self.run_async(backend, scenario)

    def test_async_topic_fans_out_to_every_queue(self, backend: MessagingBackend) -> None:
        async def scenario(aio: AsyncMessagingBackend) -> None:
            topic = unique_name("t")
            first, _ = await self.declare_async(aio, topic)
            second, _ = await self.declare_async(aio, topic)
            await aio.publish_to_topic(Message(content="news"), await aio.declare_topic(topic))
            for queue in (first, second):
                assert [m.content for m in await received(aio, queue, 1)] == ["news"]

        self.run_async(backend, scenario)

    def test_async_batches(self, backend: MessagingBackend) -> None:
        async def scenario(aio: AsyncMessagingBackend) -> None:
            topic = unique_name("t")
            queue, _ = await self.declare_async(aio, topic)
            await aio.publish_batch_to_queue([Message(content=str(n)) for n in range(3)], queue)
            await aio.publish_batch_to_topic(
                [Message(content=str(n)) for n in range(3, 5)], await aio.declare_topic(topic)
            )
            got = await received(aio, queue, 5)
            assert sorted(m.content for m in got) == ["0", "1", "2", "3", "4"]
            await aio.acknowledge_batch(got)
            assert (
                await aio.retrieve_messages(queue, wait_seconds=self.visibility_timeout + 0.5) == []
            )

        self.run_async(backend, scenario)

    def test_async_release_delay_and_extend(self, backend: MessagingBackend) -> None:
        async def scenario(aio: AsyncMessagingBackend) -> None:
            queue, _ = await self.declare_async(aio)
            await aio.publish_delayed_to_queue(Message(content="later"), queue, 1.0)
            assert await aio.retrieve_messages(queue, wait_seconds=0) == []
            [later] = await received(aio, queue, 1)
            await aio.release(later)
            [again] = await received(aio, queue, 1)
            assert (again.content, again.receive_count) == ("later", 2)
            await aio.extend_visibility(again, 3 * self.visibility_timeout)
            quiet = await aio.retrieve_messages(queue, wait_seconds=1.5 * self.visibility_timeout)
            assert quiet == []  # its own timeout would have shown it by now
            await aio.publish_to_queue(Message(content="kept"), queue)
            [kept] = await received(aio, queue, 1)
            await aio.extend_visibility_batch([again, kept], 3 * self.visibility_timeout)
            quiet = await aio.retrieve_messages(queue, wait_seconds=1.5 * self.visibility_timeout)
            assert quiet == []  # both extended together

        self.run_async(backend, scenario)

    def test_async_dead_letter_after_max_receives(self, backend: MessagingBackend) -> None:
        async def scenario(aio: AsyncMessagingBackend) -> None:
            queue, dead_letter = await self.declare_async(aio, dlq=True, receives=1)
            assert dead_letter is not None
            await aio.publish_to_queue(Message(content="poison"), queue)
            assert len(await received(aio, queue, 1)) == 1
            await asyncio.sleep(self.visibility_timeout + 0.2)
            assert await aio.retrieve_messages(queue, wait_seconds=0.5) == []
            assert [m.content for m in await received(aio, dead_letter, 1)] == ["poison"]

        self.run_async(backend, scenario)

    def test_async_queue_stats_and_missing_queues(self, backend: MessagingBackend) -> None:
        async def scenario(aio: AsyncMessagingBackend) -> None:
            name = unique_name("q")
            queue, _ = await aio.declare_queue(name, visibility_timeout=self.visibility_timeout)
            assert await aio.get_queue(name) == queue
            await aio.publish_batch_to_queue([Message(content="a"), Message(content="b")], queue)
            before = await aio.queue_stats(queue)
            assert before.ready == 2
            await received(aio, queue, 2)
            after = await aio.queue_stats(queue)
            assert after.ready == 0
            assert after.in_flight in {2, None}  # None: the broker cannot tell (RabbitMQ)
            missing = unique_name("missing")
            with pytest.raises(QueueNotFoundError):
                await aio.get_queue(missing)
            await aio.delete_queue(queue)
            with pytest.raises(QueueNotFoundError):
                await aio.get_queue(name)

        self.run_async(backend, scenario)

    def test_async_visibility_timeout_of_a_declared_queue(self, backend: MessagingBackend) -> None:
        async def scenario(aio: AsyncMessagingBackend) -> None:
            queue, _ = await aio.declare_queue(unique_name("q"), visibility_timeout=7)
            told = await aio.visibility_timeout_of(queue)
            assert told == (7 if self.tells_visibility_timeout else None)

        self.run_async(backend, scenario)

    def test_async_yield_messages_and_close(self, backend: MessagingBackend) -> None:
        async def scenario(aio: AsyncMessagingBackend) -> None:
            queue, _ = await self.declare_async(aio)
            await aio.publish_batch_to_queue([Message(content=str(n)) for n in range(3)], queue)
            seen = []
            async for message in aio.yield_messages(queue, wait_seconds=0.5):
                seen.append(message.content)
                await aio.acknowledge(message)
                if len(seen) == 3:
                    break
            assert sorted(seen) == ["0", "1", "2"]
            await aio.close_connection()
            await aio.close_connection()
            assert aio.closed

        self.run_async(backend, scenario)

    def test_async_waiting_never_blocks_the_loop(self, backend: MessagingBackend) -> None:
        async def scenario(aio: AsyncMessagingBackend) -> None:
            queue, _ = await self.declare_async(aio)
            gaps: list[float] = []

            async def heartbeat() -> None:
                last = time.monotonic()
                for _ in range(100):
                    await asyncio.sleep(0.01)
                    gaps.append(time.monotonic() - last)
                    last = time.monotonic()

            beating = asyncio.create_task(heartbeat())
            assert await aio.retrieve_messages(queue, wait_seconds=1.0) == []  # a long poll
            await beating
            assert max(gaps) < 0.25  # waiting on the loop would have stopped it for 1 s

        self.run_async(backend, scenario)

    def test_async_receive_options_are_named(self, backend: MessagingBackend) -> None:
        async def scenario(aio: AsyncMessagingBackend) -> None:
            queue, _ = await aio.declare_queue(unique_name("q"), visibility_timeout=120)
            with pytest.raises(InvalidArgumentError):
                await aio.retrieve_messages(queue, max_messages=0)
            await aio.publish_to_queue(Message(content="short"), queue)
            [first] = await aio.retrieve_messages(
                queue, max_messages=1, wait_seconds=5, visibility_timeout=self.visibility_timeout
            )
            [again] = await received(aio, queue, 1, timeout=self.visibility_timeout + 10)
            assert (again.message_id, again.receive_count) == (first.message_id, 2)
            await aio.acknowledge(again)

        self.run_async(backend, scenario)

    def test_async_queue_depth_and_longest_delay(self, backend: MessagingBackend) -> None:
        async def scenario(aio: AsyncMessagingBackend) -> None:
            queue, _ = await self.declare_async(aio)
            await aio.publish_batch_to_queue([Message(content=str(n)) for n in range(2)], queue)
            assert await aio.queue_depth(queue) == 2
            assert aio.max_delay_seconds == backend.max_delay_seconds
            longest = aio.max_delay_seconds
            if longest is not None and longest > 0:
                with pytest.raises(UnsupportedOperationError):
                    await aio.publish_delayed_to_queue(Message(content="far"), queue, longest + 1)

        self.run_async(backend, scenario)
