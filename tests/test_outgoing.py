"""One outgoing message: ``Outgoing`` from publish to the backend, on both publishers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator

import pytest
from pydantic import BaseModel

from melange import Message, MessagePublisher, Middleware
from melange.aio import AsyncMessagePublisher
from melange.backends.memory import InMemoryMessagingBackend
from melange.exceptions import ConfigurationError
from melange.middleware import Publishing, hold_publishes
from melange.outgoing import Destination, DestinationKind, Outgoing
from melange.testing import AsyncInMemoryBackend, PublishRecorder


class OrderPlaced(BaseModel):
    order_id: str


@pytest.fixture
def broker() -> Iterator[InMemoryMessagingBackend]:
    with InMemoryMessagingBackend() as backend:
        yield backend


def contents(broker: InMemoryMessagingBackend, queue: str) -> list[str]:
    got = broker.retrieve_messages(broker.get_queue(queue), max_messages=10)
    return sorted(m.content for m in got)


def test_outgoing_reads_back_what_it_wrote_as_json() -> None:
    message = Message(content="{}", manifest="OrderPlaced", metadata={"k": "v", "b": b"\xff"})
    where = Destination(DestinationKind.QUEUE, "orders")
    sent = Outgoing(destination=where, delay=5.0, message=message, due_at=12.5)
    back = Outgoing.from_json(sent.to_json())
    assert (back.built, back.where, back.delay, back.due_at) == (message, where, 5.0, 12.5)


def test_an_outgoing_event_goes_to_its_manifest_topic_unless_told() -> None:
    by_type = Outgoing(message=Message(content="{}", manifest="OrderPlaced"))
    assert by_type.where == Destination(DestinationKind.TOPIC, "OrderPlaced")
    with pytest.raises(ConfigurationError, match="manifest"):
        _ = Outgoing(message=Message(content="{}")).where
    with pytest.raises(ConfigurationError, match="not built"):
        _ = Outgoing(event=OrderPlaced(order_id="1")).built
    publisher = MessagePublisher(InMemoryMessagingBackend())
    with pytest.raises(ConfigurationError, match="delay"):
        publisher.publish(OrderPlaced(order_id="1"), topic="t", delay=1.0)
    with pytest.raises(ConfigurationError, match="delay"):
        publisher.send(Message(content="{}", manifest="M"), delay=1.0)  # a delay needs a queue
    with pytest.raises(ConfigurationError, match="not both"):
        Destination.requested("t", "q")


def test_the_async_publisher_sends_on_a_native_async_backend(
    broker: InMemoryMessagingBackend,
) -> None:
    broker.declare_queue("by-type", broker.declare_topic("OrderPlaced"))
    broker.declare_queue("direct")

    async def scenario() -> list[Message]:
        publisher = AsyncMessagePublisher(AsyncInMemoryBackend(broker))
        first = await publisher.publish(OrderPlaced(order_id="1"))
        await publisher.publish(OrderPlaced(order_id="2"), queue="direct", delay=0.2)
        batch = await publisher.publish_batch([OrderPlaced(order_id=n) for n in "34"])
        await publisher.send(publisher.build_message(OrderPlaced(order_id="5")), queue="direct")
        return [first, *batch]

    sent = asyncio.run(scenario())
    assert contents(broker, "by-type") == sorted(m.content for m in sent)
    assert contents(broker, "direct") == ['{"order_id":"5"}']  # the delayed one is not due yet
    assert {m.metadata["correlation_id"] for m in sent} == {m.message_id for m in sent}


class Stamp(Middleware):
    """A sync-only send hook: under the async publisher it runs on a worker thread."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    def send_message(self, publishing: Publishing, call_next: Callable[[], None]) -> None:
        self.threads.append(threading.current_thread().name)
        publishing.message = publishing.built.with_changes(
            metadata={**publishing.built.metadata, "stamped": "yes"}
        )
        call_next()


class AsyncStamp(Middleware):
    """A send hook with an async twin: awaited on the loop, no thread."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    async def send_message_async(
        self, publishing: Publishing, call_next: Callable[[], Awaitable[None]]
    ) -> None:
        self.threads.append(threading.current_thread().name)
        await call_next()


def test_send_hooks_run_under_the_async_publisher_with_or_without_a_twin(
    broker: InMemoryMessagingBackend,
) -> None:
    broker.declare_queue("by-type", broker.declare_topic("OrderPlaced"))
    stamp, twin, recorder = Stamp(), AsyncStamp(), PublishRecorder()

    async def scenario() -> str:
        publisher = AsyncMessagePublisher(
            AsyncInMemoryBackend(broker), middleware=[stamp, twin, recorder]
        )
        await publisher.publish(OrderPlaced(order_id="1"))
        return threading.current_thread().name

    loop_thread = asyncio.run(scenario())
    [received] = broker.retrieve_messages(broker.get_queue("by-type"))
    assert received.metadata["stamped"] == "yes"
    assert len(stamp.threads) == 1
    assert stamp.threads != [loop_thread]
    assert twin.threads == [loop_thread]
    assert recorder.published(OrderPlaced) == [OrderPlaced(order_id="1")]


def test_an_async_publish_held_is_sent_by_release_async_or_dropped(
    broker: InMemoryMessagingBackend,
) -> None:
    broker.declare_queue("direct")

    async def scenario() -> None:
        publisher = AsyncMessagePublisher(AsyncInMemoryBackend(broker))
        with hold_publishes() as held:
            await publisher.publish(OrderPlaced(order_id="kept"), queue="direct")
            assert contents(broker, "direct") == []
            with pytest.raises(ConfigurationError, match="release_async"):
                held.release()  # on the loop: it would have to block it
            [kept] = await held.release_async()  # still held: the refusal sent nothing
            assert kept.content == '{"order_id":"kept"}'
        with hold_publishes() as held:
            await publisher.publish(OrderPlaced(order_id="sent"), queue="direct")
            [sent] = await held.release_async()
            assert sent.content == '{"order_id":"sent"}'
        with hold_publishes():
            await publisher.publish(OrderPlaced(order_id="dropped"), queue="direct")

    asyncio.run(scenario())
    assert contents(broker, "direct") == ['{"order_id":"kept"}', '{"order_id":"sent"}']


def test_a_sync_publish_held_goes_out_on_release_in_order(
    broker: InMemoryMessagingBackend,
) -> None:
    broker.declare_queue("direct")
    publisher = MessagePublisher(broker)
    with hold_publishes() as held:
        publisher.publish(OrderPlaced(order_id="1"), queue="direct")
        publisher.publish(OrderPlaced(order_id="2"), queue="direct", delay=0.0)
        assert [o.where.name for o in held.held] == ["direct", "direct"]
        assert contents(broker, "direct") == []
        held.release()
    got = broker.retrieve_messages(broker.get_queue("direct"))
    assert [m.content for m in got] == ['{"order_id":"1"}', '{"order_id":"2"}']
