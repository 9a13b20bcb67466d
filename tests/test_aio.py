"""melange.aio: the async publisher and dispatcher on every broker."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel

from melange import Consumer, Message, MessagePublisher, RetryPolicy, listener
from melange.aio import AsyncMessageDispatcher, AsyncMessagePublisher, BridgedBackend, from_url
from melange.context import current_message
from melange.dead_letters import ERROR_STAGE, ERROR_TYPE
from melange.dispatcher import MessageDispatcher
from melange.exceptions import ConfigurationError
from melange.idempotency.memory import InMemoryIdempotencyStore
from melange.middleware import ConsumerCall, Middleware
from melange.models import SAGA_TYPE, QueueWrapper
from melange.outcomes import CallResult, OutcomeKind
from melange.saga import InMemorySagaStore, Saga, SagaStatus, starts
from melange.testing import unique_name

_T = TypeVar("_T")


class Ordered(BaseModel):
    number: int


class Shipped(BaseModel):
    number: int


def run(coroutine: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(coroutine)


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
        pytest.param("sqs", marks=pytest.mark.sqs),
    ]
)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each broker, real where it is one: RabbitMQ's server, moto's SNS/SQS over HTTP."""
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    if request.param == "rabbitmq":
        return str(request.getfixturevalue("rabbitmq_node").url)
    return str(request.getfixturevalue("moto").url)


@pytest.fixture
def backend(url: str) -> Iterator[BridgedBackend]:
    """Each broker: for what a broker's settling, releasing and dead-lettering decide."""
    backend = from_url(url)
    yield backend
    backend.sync.close_connection()


@pytest.fixture(params=["memory", "sqlite"])
def local_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BridgedBackend]:
    """The brokers in this process and on disk: for the dispatcher's own mechanics."""
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'broker.db'}"
    backend = from_url(url)
    yield backend
    backend.sync.close_connection()


async def declared(
    backend: BridgedBackend, *consumers: Consumer, **options: Any
) -> tuple[AsyncMessageDispatcher, str]:
    queue = unique_name("q")
    visibility = options.pop("visibility", 5)
    dispatcher = AsyncMessageDispatcher(backend, consumers, **options)
    await dispatcher.declare(queue, visibility_timeout=visibility)
    return dispatcher, queue


class Recording(Consumer):
    def __init__(self, seconds: float = 0.0) -> None:
        super().__init__()
        self.seconds = seconds
        self.seen: list[int] = []
        self.running = 0
        self.peak = 0

    @listener
    async def on_ordered(self, event: Ordered) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.seconds)
        finally:
            self.running -= 1
        self.seen.append(event.number)


def test_publish_and_consume_with_an_async_listener(backend: BridgedBackend) -> None:
    async def scenario() -> list[int]:
        consumer = Recording()
        dispatcher, queue = await declared(backend, consumer)
        publisher = AsyncMessagePublisher(backend)
        await publisher.publish_batch([Ordered(number=n) for n in range(4)], queue=queue)
        await publisher.publish(Ordered(number=4))  # by type, to the topic the queue follows
        handled = await dispatcher.consume_loop(queue, max_messages=5, idle_timeout=10)
        assert handled == 5
        assert dispatcher.outcomes[OutcomeKind.ACK] == 5
        assert await backend.retrieve_messages(await backend.get_queue(queue)) == []
        return sorted(consumer.seen)

    assert run(scenario()) == [0, 1, 2, 3, 4]


def test_fifty_sleeping_handlers_run_together(local_backend: BridgedBackend) -> None:
    backend = local_backend

    async def scenario() -> tuple[int, float]:
        consumer = Recording(seconds=0.5)
        dispatcher, queue = await declared(backend, consumer, batch_size=10)
        await AsyncMessagePublisher(backend).publish_batch(
            [Ordered(number=n) for n in range(50)], queue=queue
        )
        began = time.monotonic()
        await dispatcher.consume_loop(queue, max_messages=50, max_concurrency=50)
        return consumer.peak, time.monotonic() - began

    peak, took = run(scenario())
    print(f"50 handlers of 0.5 s: {took:.2f} s")
    assert peak == 50  # all in flight at once: about 0.5 s, not 25 s


class Mixed(Consumer):
    """A plain listener that sleeps and an async one, on the same consumer."""

    def __init__(self) -> None:
        super().__init__()
        self.sync_window: tuple[float, float] = (0.0, 0.0)
        self.async_done: list[float] = []
        self.threads: set[str] = set()

    @listener
    def on_ordered(self, event: Ordered) -> None:
        self.threads.add(threading.current_thread().name)
        began = time.monotonic()
        time.sleep(1.0)
        self.sync_window = (began, time.monotonic())

    @listener
    async def on_shipped(self, event: Shipped) -> None:
        await asyncio.sleep(0.05)
        self.async_done.append(time.monotonic())


def test_a_sleeping_sync_listener_stalls_neither_the_loop_nor_async_ones(
    local_backend: BridgedBackend,
) -> None:
    backend = local_backend

    async def scenario() -> tuple[Mixed, float]:
        consumer = Mixed()
        dispatcher, queue = await declared(backend, consumer, batch_size=10)
        publisher = AsyncMessagePublisher(backend)
        await publisher.publish(Ordered(number=0), queue=queue)
        await publisher.publish_batch([Shipped(number=n) for n in range(5)], queue=queue)
        gaps: list[float] = []
        stop = asyncio.Event()

        async def heartbeat() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        beating = asyncio.create_task(heartbeat())
        await dispatcher.consume_loop(queue, max_messages=6, max_concurrency=6)
        stop.set()
        await beating
        return consumer, max(gaps)

    consumer, largest_gap = run(scenario())
    print(f"largest gap of the loop while consuming: {largest_gap * 1000:.1f} ms")
    began, ended = consumer.sync_window
    assert len(consumer.async_done) == 5
    assert all(began < done < ended for done in consumer.async_done)
    assert threading.main_thread().name not in consumer.threads
    assert largest_gap < 0.25  # a handler on the loop would have blocked it for 1 s


class Following(Consumer):
    """Publishes a follow-up from an async listener; records the message each one saw."""

    def __init__(self, publisher: AsyncMessagePublisher, out: QueueWrapper) -> None:
        super().__init__()
        self.publisher = publisher
        self.out = out
        self.saw: dict[int, str] = {}

    @listener
    async def on_ordered(self, event: Ordered) -> None:
        await asyncio.sleep(0.01 * (5 - event.number))  # they finish in another order
        current = current_message()
        assert current is not None
        self.saw[event.number] = current.message_id
        await self.publisher.publish(Shipped(number=event.number), queue=self.out)


def test_each_concurrent_handler_sees_its_own_message_and_its_publishes_follow_it(
    local_backend: BridgedBackend,
) -> None:
    backend = local_backend

    async def scenario() -> None:
        publisher = AsyncMessagePublisher(backend)
        out, _ = await backend.declare_queue(unique_name("out"))
        consumer = Following(publisher, out)
        dispatcher, queue = await declared(backend, consumer)
        sent = await publisher.publish_batch([Ordered(number=n) for n in range(5)], queue=queue)
        await dispatcher.consume_loop(queue, max_messages=5, max_concurrency=5)
        by_number = {json.loads(m.content)["number"]: m for m in sent}
        assert consumer.saw == {n: m.message_id for n, m in by_number.items()}
        followers = await backend.retrieve_messages(out, max_messages=10, wait_seconds=1)
        assert len(followers) == 5
        for follower in followers:
            cause = by_number[json.loads(follower.content)["number"]]
            assert follower.metadata["causation_id"] == cause.message_id
            assert follower.metadata["correlation_id"] == cause.metadata["correlation_id"]

    run(scenario())


class Failing(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    @listener
    async def on_ordered(self, event: Ordered) -> None:
        self.calls += 1
        raise RuntimeError(f"cannot take order {event.number}")


def test_a_failing_async_listener_is_retried_then_dead_lettered(backend: BridgedBackend) -> None:
    async def scenario() -> None:
        consumer = Failing()
        retry = RetryPolicy(immediate_attempts=2, max_deliveries=2, backoff_seconds=0.05, jitter=0)
        dispatcher, queue = await declared(backend, consumer, retry=retry)
        await AsyncMessagePublisher(backend).publish(Ordered(number=7), queue=queue)
        # SQS holds a retried message for a whole second: the idle window leaves
        # room for a loaded machine's slow visibility change and poll.
        await dispatcher.consume_loop(queue, idle_timeout=4)
        assert consumer.calls == 4  # 2 deliveries of 2 attempts
        dead = await backend.retrieve_messages(
            await backend.get_queue(f"{queue}-dlq"), max_messages=10, wait_seconds=1
        )
        assert [m.metadata[ERROR_TYPE] for m in dead] == ["builtins.RuntimeError"]
        assert dead[0].metadata[ERROR_STAGE] == "handle"
        assert dispatcher.outcomes[OutcomeKind.DEAD_LETTER] == 1

    run(scenario())


def test_bad_input_is_dead_lettered_with_its_original_content(backend: BridgedBackend) -> None:
    async def scenario() -> None:
        dispatcher, queue = await declared(backend, Recording())
        wrapper = await backend.get_queue(queue)
        bad = Message(content="{not json", manifest="tests.test_aio.Ordered")
        await backend.publish_to_queue(bad, wrapper)
        await dispatcher.consume_loop(queue, max_messages=1, idle_timeout=5)
        dead = await backend.retrieve_messages(
            await backend.get_queue(f"{queue}-dlq"), max_messages=10, wait_seconds=1
        )
        assert [m.content for m in dead] == ["{not json"]
        assert dead[0].metadata[ERROR_STAGE] == "deserialize"

    run(scenario())


def test_a_redelivered_message_runs_each_listener_once(backend: BridgedBackend) -> None:
    async def scenario() -> None:
        consumer = Recording()
        store = InMemoryIdempotencyStore()
        dispatcher, queue = await declared(backend, consumer, idempotency=store)
        [message] = await AsyncMessagePublisher(backend).publish_batch(
            [Ordered(number=1)], queue=queue
        )
        again = Message(
            content=message.content,
            message_id=message.message_id,
            manifest=message.manifest,
            metadata=message.metadata,
            serializer_id=message.serializer_id,
        )
        await backend.publish_to_queue(again, await backend.get_queue(queue))
        await dispatcher.consume_loop(queue, max_messages=2, max_concurrency=1)
        assert consumer.seen == [1]
        assert dispatcher.outcomes[OutcomeKind.SKIP] + dispatcher.outcomes[OutcomeKind.ACK] == 2

    run(scenario())


@pytest.mark.parametrize("how", ["stop event", "cancel"])
def test_stopping_finishes_what_runs_and_leaves_the_rest_queued(
    backend: BridgedBackend, how: str
) -> None:
    async def scenario() -> None:
        consumer = Recording(seconds=0.5)
        dispatcher, queue = await declared(backend, consumer, batch_size=3)
        await AsyncMessagePublisher(backend).publish_batch(
            [Ordered(number=n) for n in range(9)], queue=queue
        )
        stop = asyncio.Event()
        consuming = asyncio.create_task(
            dispatcher.consume_loop(queue, stop_event=stop, max_concurrency=3)
        )
        while consumer.running < 3:
            await asyncio.sleep(0.01)
        if how == "cancel":
            consuming.cancel()
            with pytest.raises(asyncio.CancelledError):
                await consuming
        else:
            stop.set()
            assert await consuming == 3
        assert len(consumer.seen) == 3  # the three in flight finished
        left = []
        wrapper = await backend.get_queue(queue)
        while batch := await backend.retrieve_messages(wrapper, max_messages=10, wait_seconds=1):
            left += batch
        assert len(left) == 6
        assert {m.receive_count for m in left} <= {1, 2}  # never started, or handed back

    run(scenario())


def test_the_sync_dispatcher_refuses_async_listeners(local_backend: BridgedBackend) -> None:
    backend = local_backend
    with pytest.raises(ConfigurationError, match="AsyncMessageDispatcher"):
        MessageDispatcher(backend.sync, [Recording()])


def test_the_async_api_refuses_a_sync_backend(local_backend: BridgedBackend) -> None:
    backend = local_backend
    with pytest.raises(ConfigurationError, match=r"melange\.aio\.from_url"):
        AsyncMessagePublisher(backend.sync)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"melange\.aio\.from_url"):
        AsyncMessageDispatcher(backend.sync, [Recording()])  # type: ignore[arg-type]


class ReserveStock(BaseModel):
    order_id: str


class StockReserved(BaseModel):
    order_id: str


class OrderState(BaseModel):
    order_id: str = ""
    awaited: int = 0


class AsyncOrderSaga(Saga[OrderState]):
    correlation = {Ordered: "number", StockReserved: "order_id"}  # noqa: RUF012
    inventory = "inventory"  # set per test: the brokers are shared by the session

    @starts
    async def on_ordered(self, event: Ordered) -> None:
        await asyncio.sleep(0.05)  # e.g. an async HTTP call
        self.state.order_id = str(event.number)
        self.state.awaited += 1
        self.send(ReserveStock(order_id=str(event.number)), queue=self.inventory)

    @listener
    async def on_reserved(self, event: StockReserved) -> None:
        await asyncio.sleep(0.01)
        self.state.awaited += 1
        self.complete()


def test_a_saga_with_async_listeners_saves_its_state_and_sends_after_the_await(
    local_backend: BridgedBackend,
) -> None:
    backend = local_backend

    async def scenario() -> None:
        store = InMemorySagaStore()
        orders = unique_name("orders")
        saga = AsyncOrderSaga(store, MessagePublisher(backend.sync), queue=orders)
        saga.inventory = unique_name("inventory")
        try:
            dispatcher = AsyncMessageDispatcher(backend, [saga], max_concurrency=20)
            await dispatcher.declare(orders)
            inventory, _ = await backend.declare_queue(saga.inventory)
            publisher = AsyncMessagePublisher(backend)
            await publisher.publish_batch([Ordered(number=n) for n in range(20)], queue=orders)
            await dispatcher.consume_loop(orders, max_messages=20)
            commands = []
            while batch := await backend.retrieve_messages(inventory, max_messages=10):
                commands += batch
            assert len(commands) == 20
            assert all(m.metadata[SAGA_TYPE] == "AsyncOrderSaga" for m in commands)
            await publisher.publish_batch(
                [StockReserved(order_id=str(n)) for n in range(20)], queue=orders
            )
            await dispatcher.consume_loop(orders, max_messages=20)
            for n in range(20):
                record = store.find("AsyncOrderSaga", str(n))
                assert record is not None
                assert record.status is SagaStatus.COMPLETED
                assert json.loads(record.state)["awaited"] == 2
        finally:
            saga.close()

    run(scenario())


def test_an_async_handler_longer_than_the_visibility_timeout_runs_once(
    backend: BridgedBackend,
) -> None:
    async def scenario() -> None:
        consumer = Recording(seconds=2.5)
        dispatcher, queue = await declared(backend, consumer, visibility=1, max_concurrency=2)
        await AsyncMessagePublisher(backend).publish_batch(
            [Ordered(number=n) for n in range(2)], queue=queue
        )
        await dispatcher.consume_loop(queue, idle_timeout=2)  # a redelivery would come by then
        assert sorted(consumer.seen) == [0, 1]
        assert dispatcher.outcomes[OutcomeKind.ACK] == 2

    run(scenario())


class Around(Middleware):
    """Sync hooks only: under the async dispatcher they run on a worker thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def call_consumer(self, call: ConsumerCall, call_next: Callable[[], CallResult]) -> CallResult:
        self.calls.append(("before", threading.current_thread().name))
        result = call_next()
        self.calls.append(("after", threading.current_thread().name))
        return result


class AroundAsync(Middleware):
    """An async twin: it runs on the loop, no thread."""

    def __init__(self) -> None:
        self.threads: list[str] = []

    async def call_consumer_async(
        self, call: ConsumerCall, call_next: Callable[[], Awaitable[CallResult]]
    ) -> CallResult:
        self.threads.append(threading.current_thread().name)
        return await call_next()


def test_middleware_wraps_async_listeners_with_sync_hooks_or_async_twins(
    local_backend: BridgedBackend,
) -> None:
    backend = local_backend

    async def scenario() -> tuple[Around, AroundAsync, Recording]:
        around, twin, consumer = Around(), AroundAsync(), Recording()
        dispatcher, queue = await declared(backend, consumer, middleware=[around, twin])
        await AsyncMessagePublisher(backend).publish_batch(
            [Ordered(number=n) for n in range(3)], queue=queue
        )
        await dispatcher.consume_loop(queue, max_messages=3)
        return around, twin, consumer

    around, twin, consumer = run(scenario())
    assert sorted(consumer.seen) == [0, 1, 2]
    assert sorted(what for what, _ in around.calls) == ["after"] * 3 + ["before"] * 3
    assert all(name != "MainThread" for _, name in around.calls)
    assert twin.threads == ["MainThread"] * 3


def test_a_handler_outliving_the_shutdown_timeout_is_cancelled_and_its_message_returns(
    backend: BridgedBackend,
) -> None:
    async def scenario() -> None:
        consumer = Recording(seconds=60)
        dispatcher, queue = await declared(backend, consumer)
        await AsyncMessagePublisher(backend).publish(Ordered(number=1), queue=queue)
        stop = asyncio.Event()
        consuming = asyncio.create_task(
            dispatcher.consume_loop(queue, stop_event=stop, shutdown_timeout=0.5)
        )
        while consumer.running < 1:
            await asyncio.sleep(0.01)
        stop.set()
        assert await consuming == 0  # cancelled, not handled
        assert consumer.seen == []
        [back] = await backend.retrieve_messages(
            await backend.get_queue(queue), max_messages=10, wait_seconds=5
        )
        assert json.loads(back.content) == {"number": 1}
        assert dispatcher.outcomes[OutcomeKind.ACK] == 0

    run(scenario())
