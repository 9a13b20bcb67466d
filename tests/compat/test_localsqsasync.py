"""Melange 7.3's AsyncLocalSQSBackend tests, on moto's SNS/SQS server."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from melange.compat import AsyncLocalSQSBackend, Message, MessageDto
from tests.compat.conftest import unique
from tests.compat.test_localsqs import is_fifo
from tests.servers.moto import MotoServer

pytestmark = pytest.mark.sqs


@pytest.fixture
def async_backend(moto: MotoServer) -> Iterator[AsyncLocalSQSBackend]:
    backend = AsyncLocalSQSBackend(
        host=f"http://{moto.host}", port=moto.port, wait_time_seconds=1, visibility_timeout=10
    )
    yield backend
    asyncio.run(backend.aclose())


async def drain(backend: AsyncLocalSQSBackend, queue: Any, batch_ack: bool = False) -> list[Any]:
    got: list[Any] = []
    while True:
        batch = [m async for m in backend.retrieve_messages(queue)]
        if not batch:
            return got
        got += batch
        if batch_ack:
            await backend.acknowledge_batch(batch)
        else:
            for message in batch:
                await backend.acknowledge(message)


def test_create_fifo_queue(async_backend: AsyncLocalSQSBackend) -> None:
    async def scenario() -> dict[str, str]:
        queue, _ = await async_backend.declare_queue(unique("test-queue") + ".fifo")
        return await async_backend.get_queue_attributes(queue)

    assert is_fifo(asyncio.run(scenario()))


def test_create_fifo_queue_with_dlq(async_backend: AsyncLocalSQSBackend) -> None:
    async def scenario() -> list[dict[str, str]]:
        queue, dead_letter = await async_backend.declare_queue(
            unique("test-queue") + ".fifo", dead_letter_queue_name=unique("dlq") + ".fifo"
        )
        assert dead_letter is not None
        return [await async_backend.get_queue_attributes(q) for q in (queue, dead_letter)]

    assert all(is_fifo(a) for a in asyncio.run(scenario()))


def test_create_a_non_fifo_queue(async_backend: AsyncLocalSQSBackend) -> None:
    async def scenario() -> dict[str, str]:
        queue, _ = await async_backend.declare_queue(unique("test-queue"))
        return await async_backend.get_queue_attributes(queue)

    assert not is_fifo(asyncio.run(scenario()))


def test_create_normal_queue_with_dlq(async_backend: AsyncLocalSQSBackend) -> None:
    async def scenario() -> list[dict[str, str]]:
        queue, dead_letter = await async_backend.declare_queue(
            unique("test-queue"), dead_letter_queue_name=unique("dlq")
        )
        assert dead_letter is not None
        return [await async_backend.get_queue_attributes(q) for q in (queue, dead_letter)]

    assert not any(is_fifo(a) for a in asyncio.run(scenario()))


def test_send_messages_through_a_fifo_queue_and_make_sure_they_are_always_ordered(
    async_backend: AsyncLocalSQSBackend,
) -> None:
    sent = [f"my-message-{i}" for i in range(20)]

    async def scenario() -> list[str]:
        queue, _ = await async_backend.declare_queue(unique("test-queue") + ".fifo")
        dtos = [
            MessageDto(Message.create(c, "my-event-type", 40), "my-app", str(uuid.uuid4()))
            for c in sent
        ]
        for first in range(0, 20, 10):
            await async_backend.publish_to_queue_batch(dtos[first : first + 10], queue)
        return [m.content for m in await drain(async_backend, queue)]

    assert asyncio.run(scenario()) == sent


def test_send_messages_through_a_fifo_queue_and_make_sure_they_are_always_ordered_by_batch(
    async_backend: AsyncLocalSQSBackend,
) -> None:
    sent = [f"my-message-{i}" for i in range(20)]

    async def scenario() -> list[str]:
        queue, _ = await async_backend.declare_queue(unique("test-queue") + ".fifo")
        for content in sent:
            await async_backend.publish_to_queue(
                Message.create(content, "my-event-type", 40),
                queue,
                message_group_id="my-app",
                message_deduplication_id=str(uuid.uuid4()),
            )
        return [m.content for m in await drain(async_backend, queue)]

    assert asyncio.run(scenario()) == sent


@pytest.mark.skip(reason="skipped in Melange 7.3 too; moto does not hold a FIFO group back")
def test_not_acknowledging_any_of_the_messages_on_a_fifo_queue_will_delay_the_delivery_of_the_rest(
    async_backend: AsyncLocalSQSBackend,
) -> None:
    """The sync test of the same name, which moto cannot run, stands for this one."""


def test_send_messages_through_a_non_fifo_queue_does_not_guarantee_order(
    async_backend: AsyncLocalSQSBackend,
) -> None:
    sent = {f"my-message-{i}" for i in range(100)}

    async def scenario() -> list[str]:
        queue, _ = await async_backend.declare_queue(unique("test-queue"))
        dtos = [MessageDto(Message.create(c, "my-event-type", 40)) for c in sorted(sent)]
        await async_backend.publish_to_queue_batch(dtos, queue)
        return [m.content for m in await drain(async_backend, queue, batch_ack=True)]

    got = asyncio.run(scenario())
    assert len(got) == 100
    assert set(got) == sent


def test_backend_declare_a_queue_for_a_topic_filtering_the_events_it_sends_to_certain_queues(
    async_backend: AsyncLocalSQSBackend,
) -> None:
    async def received(queue: Any, expected: int) -> list[str | None]:
        got: list[Any] = []
        for _ in range(30):
            batch = [m async for m in async_backend.retrieve_messages(queue)]
            got += batch
            if batch:
                await async_backend.acknowledge_batch(batch)
            if len(got) >= expected and not batch:
                break
        return sorted(m.manifest for m in got)

    async def scenario() -> list[list[str | None]]:
        topic = await async_backend.declare_topic(unique("dev-topic"))
        q1, _ = await async_backend.declare_queue(
            unique("q1"), topic, filter_events=["MyBananaEvent"]
        )
        q2, _ = await async_backend.declare_queue(
            unique("q2"), topic, filter_events=["MyNonBananaEvent"]
        )
        q3, _ = await async_backend.declare_queue(unique("q3"), topic)
        content = json.dumps({"value": "banana"})
        for manifest in ("MyBananaEvent", "MyNonBananaEvent"):
            await async_backend.publish_to_topic(Message.create(content, manifest, 40), topic)
        return [await received(q1, 1), await received(q2, 1), await received(q3, 2)]

    assert asyncio.run(scenario()) == [
        ["MyBananaEvent"],
        ["MyNonBananaEvent"],
        ["MyBananaEvent", "MyNonBananaEvent"],
    ]
