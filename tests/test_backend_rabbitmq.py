"""RabbitMQBackend against a real rabbitmq-server node (tests/servers/rabbitmq.py)."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from pydantic import BaseModel

from melange import Consumer, Message, MessageDispatcher, MessagePublisher, listener
from melange.backends import from_url
from melange.backends.rabbitmq import RabbitMQBackend
from melange.backends.rabbitmq_topology import delay_bucket_ms
from melange.dead_letters import ERROR_TYPE, SOURCE_QUEUE
from melange.exceptions import (
    BackendConnectionError,
    ConfigurationError,
    PublishError,
    QueueNotFoundError,
    TopicNotFoundError,
)
from melange.models import QueueWrapper, TopicWrapper
from melange.policies import RetryPolicy
from tests.conformance import BackendContract, receive, unique, wait_until
from tests.recorder import Numbered, Recorder
from tests.servers.rabbitmq import RabbitMQNode
from tests.support import free_port

pytestmark = pytest.mark.rabbitmq
ROOT = Path(__file__).resolve().parent.parent


class TestRabbitMQBackend(BackendContract):
    @pytest.fixture
    def backend(self, rabbitmq_node: RabbitMQNode) -> Iterator[RabbitMQBackend]:
        backend = RabbitMQBackend(rabbitmq_node.url)
        with backend:
            yield backend


@pytest.fixture
def backend(rabbitmq_node: RabbitMQNode) -> Iterator[RabbitMQBackend]:
    with RabbitMQBackend(rabbitmq_node.url, visibility_timeout=30) as backend:
        yield backend


class OrderCreated(BaseModel):
    order_id: str


class Recording(Consumer):
    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.seen: list[tuple[str, int]] = []

    @listener
    def on_created(self, event: OrderCreated, message: Message) -> None:
        self.seen.append((event.order_id, message.receive_count))
        if self.fail:
            raise RuntimeError(f"cannot handle {event.order_id}")


def raw_channel(node: RabbitMQNode) -> tuple[pika.BlockingConnection, object]:
    connection = pika.BlockingConnection(pika.URLParameters(node.url))
    return connection, connection.channel()


# -- end to end with the publisher and the dispatcher ------------------------------------


def test_a_topic_fans_out_to_two_queues_of_two_services(backend: RabbitMQBackend) -> None:
    billing, shipping = Recording(), Recording()
    services = [MessageDispatcher(backend, consumers=[c]) for c in (billing, shipping)]
    names = [unique("billing"), unique("shipping")]
    for dispatcher, name in zip(services, names, strict=True):
        dispatcher.declare(name)
    publisher = MessagePublisher(backend)
    sent = [publisher.publish(OrderCreated(order_id=str(i))) for i in range(5)]
    for dispatcher, name in zip(services, names, strict=True):
        assert dispatcher.consume_loop(name, max_messages=5, idle_timeout=10) == 5
    for consumer in (billing, shipping):
        assert sorted(consumer.seen) == [(str(i), 1) for i in range(5)]
    assert {m.manifest for m in sent} == {"OrderCreated"}


def test_a_handler_that_always_fails_ends_in_the_dead_letter_queue(
    backend: RabbitMQBackend,
) -> None:
    failing = Recording(fail=True)
    retry = RetryPolicy(immediate_attempts=1, max_deliveries=3, backoff_seconds=0.2, jitter=0)
    dispatcher = MessageDispatcher(backend, consumers=[failing], retry=retry)
    queue = unique("orders")
    _, dead_letter = dispatcher.declare(queue)
    assert dead_letter is not None
    sent = MessagePublisher(backend).publish(OrderCreated(order_id="o-1"), queue=queue)
    dispatcher.consume_loop(queue, max_messages=3, idle_timeout=15)
    # Released twice with a delay (holding queues), counted across releases.
    assert failing.seen == [("o-1", 1), ("o-1", 2), ("o-1", 3)]
    [dead] = receive(backend, dead_letter, 1)
    assert (dead.message_id, dead.content, dead.manifest) == (
        sent.message_id,
        sent.content,
        sent.manifest,
    )
    assert dead.metadata[ERROR_TYPE] == "builtins.RuntimeError"
    assert dead.metadata[SOURCE_QUEUE] == queue
    assert backend.retrieve_messages(backend.get_queue(queue), wait_seconds=1) == []


def test_a_release_at_the_limit_is_dead_lettered_by_the_broker(backend: RabbitMQBackend) -> None:
    queue, dead_letter = backend.declare_queue(
        unique("q"), dead_letter_queue_name=unique("dlq"), max_receive_count=2
    )
    assert dead_letter is not None
    sent = Message(content="bad", manifest="m", serializer_id=7, metadata={"k": "v"})
    backend.publish_to_queue(sent, queue)
    [first] = receive(backend, queue, 1)
    backend.release(first)
    [second] = receive(backend, queue, 1)
    assert second.receive_count == 2
    backend.release(second)
    [dead] = receive(backend, dead_letter, 1)
    assert dead == sent.with_changes(receive_count=1)


# -- durability and reconnection ------------------------------------------------------------


@pytest.mark.slow
def test_confirmed_publishes_survive_a_broker_restart(
    backend: RabbitMQBackend, rabbitmq_node: RabbitMQNode
) -> None:
    queue, _ = backend.declare_queue(unique("durable"), dead_letter_queue_name=unique("dlq"))
    messages = [Message(content=str(i)) for i in range(1000)]
    for first in range(0, 1000, 100):
        backend.publish_batch_to_queue(messages[first : first + 100], queue)
    rabbitmq_node.restart()  # SIGTERM by PID, then start again on the same data
    got: list[Message] = []
    deadline = time.monotonic() + 120
    while len(got) < 1000 and time.monotonic() < deadline:
        # At most `prefetch` messages are in flight per queue: acknowledge as we go.
        batch = backend.retrieve_messages(queue, max_messages=100, wait_seconds=1)
        backend.acknowledge_batch(batch)
        got.extend(batch)
    assert sorted(int(m.content) for m in got) == list(range(1000))
    assert {m.message_id for m in got} == {m.message_id for m in messages}
    assert backend.queue_depth(queue) == 0


@pytest.mark.slow
def test_a_publish_while_the_broker_is_down_raises(rabbitmq_node: RabbitMQNode) -> None:
    with RabbitMQBackend(rabbitmq_node.url, confirm_timeout=2) as backend:
        queue, _ = backend.declare_queue(unique("q"))
        rabbitmq_node.stop_node()
        try:
            with pytest.raises(PublishError):
                backend.publish_to_queue(Message(content="lost?"), queue)
        finally:
            rabbitmq_node.start()
        backend.confirm_timeout = 60  # long enough for the backoff to find the broker again
        backend.publish_to_queue(Message(content="after"), queue)
        assert [m.content for m in receive(backend, queue, 1, timeout=30)] == ["after"]


@pytest.mark.slow
def test_a_consumer_whose_connection_is_cut_reconnects_and_finishes(
    backend: RabbitMQBackend, rabbitmq_node: RabbitMQNode
) -> None:
    seen: list[str] = []

    class CutMidStream(Consumer):
        @listener
        def on_created(self, event: OrderCreated) -> None:
            seen.append(event.order_id)
            if len(seen) == 50:
                rabbitmq_node.ctl("close_all_connections", "test: cut mid-stream")

    dispatcher = MessageDispatcher(backend, consumers=[CutMidStream()])
    queue = unique("stream")
    dispatcher.declare(queue, visibility_timeout=60)
    MessagePublisher(backend).publish_batch(
        [OrderCreated(order_id=str(i)) for i in range(200)], queue=queue
    )
    deadline = time.monotonic() + 120
    while set(seen) != {str(i) for i in range(200)} and time.monotonic() < deadline:
        dispatcher.consume_loop(queue, idle_timeout=5)
    assert set(seen) == {str(i) for i in range(200)}
    # Only messages unacknowledged at the cut came twice (at-least-once, nothing lost).
    assert len(seen) - 200 <= backend.prefetch + dispatcher.batch_size
    assert backend.retrieve_messages(backend.get_queue(queue), wait_seconds=1) == []


@pytest.mark.slow
def test_a_consumer_killed_mid_handler_has_its_message_delivered_to_another(
    rabbitmq_node: RabbitMQNode, tmp_path: Path
) -> None:
    queue = unique("crash")
    with RabbitMQBackend(rabbitmq_node.url) as backend:
        MessageDispatcher(backend, consumers=[Recorder(os.devnull, hang=False)]).declare(queue)
        MessagePublisher(backend).publish(Numbered(number=7), queue=queue)

    def worker(out: Path, *extra: str) -> subprocess.Popen[bytes]:
        args = ["--url", rabbitmq_node.url, "--queue", queue, "--out", str(out), *extra]
        return subprocess.Popen(
            [sys.executable, "-m", "tests.rabbitmq_workers", *args],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    first_out, second_out = tmp_path / "first.txt", tmp_path / "second.txt"
    first = worker(first_out, "--hang")
    second = None
    try:
        assert wait_until(lambda: first_out.exists() and first_out.read_text() != "", 60)
        second = worker(second_out)
        time.sleep(2)  # the second consumer is up and gets nothing while the first holds it
        assert not second_out.exists()
        os.kill(first.pid, signal.SIGKILL)
        assert second.wait(timeout=60) == 0
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    number, receive_count, pid = second_out.read_text().split()
    assert (number, receive_count) == ("7", "2")  # the broker counted the crashed delivery
    assert int(pid) == second.pid != first.pid


# -- errors ---------------------------------------------------------------------------


def test_publishing_to_what_does_not_exist_raises(backend: RabbitMQBackend) -> None:
    with pytest.raises(QueueNotFoundError):
        backend.publish_to_queue(Message(content="x"), QueueWrapper(unique("ghost")))
    with pytest.raises(TopicNotFoundError):
        backend.publish_to_topic(Message(content="x"), TopicWrapper(unique("ghost")))
    with pytest.raises(QueueNotFoundError):
        backend.retrieve_messages(QueueWrapper(unique("ghost")))


def test_a_queue_or_exchange_deleted_behind_its_back_is_reported(
    backend: RabbitMQBackend, rabbitmq_node: RabbitMQNode
) -> None:
    queue, _ = backend.declare_queue(unique("q"))
    topic = backend.declare_topic(unique("t"))
    connection, channel = raw_channel(rabbitmq_node)
    channel.queue_delete(queue.unwrap())  # type: ignore[attr-defined]
    channel.exchange_delete(topic.unwrap())  # type: ignore[attr-defined]
    connection.close()
    with pytest.raises(QueueNotFoundError):  # returned as unroutable (mandatory)
        backend.publish_to_queue(Message(content="x"), queue)
    with pytest.raises(TopicNotFoundError):  # the broker closed the confirm channel
        backend.publish_to_topic(Message(content="x"), topic)
    other, _ = backend.declare_queue(unique("q"))
    backend.publish_to_queue(Message(content="still works"), other)
    assert [m.content for m in receive(backend, other, 1)] == ["still works"]


def test_redeclaring_with_another_delivery_limit_is_a_configuration_error(
    backend: RabbitMQBackend,
) -> None:
    name, dead_letter = unique("q"), unique("dlq")
    backend.declare_queue(name, dead_letter_queue_name=dead_letter, max_receive_count=3)
    with pytest.raises(ConfigurationError, match="x-delivery-limit"):
        backend.declare_queue(name, dead_letter_queue_name=dead_letter, max_receive_count=4)
    backend.declare_queue(name)  # no dead-letter settings: the queue is used as it is


def test_an_unreachable_broker_is_a_connection_error() -> None:
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    with RabbitMQBackend(url, operation_timeout=1, confirm_timeout=1) as backend:
        started = time.monotonic()
        with pytest.raises(BackendConnectionError, match="not reachable"):
            backend.declare_topic("t")
        assert time.monotonic() - started < 10


def test_bad_credentials_fail_fast(rabbitmq_node: RabbitMQNode) -> None:
    url = rabbitmq_node.url.replace("guest:guest", "guest:wrong")
    with RabbitMQBackend(url, operation_timeout=30) as backend:
        started = time.monotonic()
        with pytest.raises(BackendConnectionError):
            backend.declare_topic("t")
        assert time.monotonic() - started < 20


def test_ack_of_a_message_already_requeued_is_a_no_op(backend: RabbitMQBackend) -> None:
    queue, _ = backend.declare_queue(unique("q"), visibility_timeout=0.3)
    backend.publish_batch_to_queue([Message(content="a"), Message(content="b")], queue)
    first = receive(backend, queue, 2)
    time.sleep(1.0)  # both requeued by the visibility timeout
    backend.acknowledge_batch(first)  # stale: must not touch the new deliveries
    again = receive(backend, queue, 2)
    assert sorted(m.content for m in again) == ["a", "b"]
    assert {m.receive_count for m in again} == {2}
    backend.acknowledge_batch(again)
    assert backend.retrieve_messages(queue, wait_seconds=1) == []


# -- receive counts, buffers, threads ----------------------------------------------------------


def test_buffered_messages_go_back_uncounted_when_a_backend_closes(
    rabbitmq_node: RabbitMQNode,
) -> None:
    name = unique("q")
    with RabbitMQBackend(rabbitmq_node.url) as first:
        queue, _ = first.declare_queue(name, dead_letter_queue_name=unique("dlq"))
        first.publish_batch_to_queue([Message(content=str(i)) for i in range(20)], queue)
        [taken] = first.retrieve_messages(queue, max_messages=1, wait_seconds=5)
    with RabbitMQBackend(rabbitmq_node.url) as second:
        got = receive(second, second.get_queue(name), 20)
        counts = {m.content: m.receive_count for m in got}
        assert counts.pop(taken.content) == 2  # handed out once, never acknowledged
        assert set(counts.values()) == {1}  # only buffered: not a receive
        assert len(counts) == 19


def test_an_idle_buffer_is_handed_back_to_other_consumers(rabbitmq_node: RabbitMQNode) -> None:
    name = unique("q")
    with (
        RabbitMQBackend(rabbitmq_node.url, idle_release=0.5) as idle,
        RabbitMQBackend(rabbitmq_node.url) as other,
    ):
        queue, _ = idle.declare_queue(name)
        idle.publish_batch_to_queue([Message(content=str(i)) for i in range(10)], queue)
        [taken] = idle.retrieve_messages(queue, max_messages=1, wait_seconds=5)
        idle.acknowledge(taken)
        got = receive(other, other.get_queue(name), 9, timeout=15)
        assert sorted(m.content for m in got) == sorted(
            {str(i) for i in range(10)} - {taken.content}
        )
        assert {m.receive_count for m in got} == {1}


def test_two_threads_share_one_backend(backend: RabbitMQBackend) -> None:
    queue, _ = backend.declare_queue(unique("q"))
    received: list[Message] = []
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for i in range(300):
                backend.publish_to_queue(Message(content=str(i)), queue)
        except BaseException as e:
            errors.append(e)

    def consume() -> None:
        try:
            deadline = time.monotonic() + 60
            while len(received) < 300 and time.monotonic() < deadline:
                batch = backend.retrieve_messages(queue, max_messages=7, wait_seconds=0.5)
                backend.acknowledge_batch(batch)
                received.extend(batch)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert Counter(m.content for m in received) == Counter(str(i) for i in range(300))
    assert backend.retrieve_messages(queue, wait_seconds=1) == []


def test_an_abandoned_backend_is_collected_and_its_thread_ends(
    rabbitmq_node: RabbitMQNode,
) -> None:
    backend = RabbitMQBackend(rabbitmq_node.url)
    queue, _ = backend.declare_queue(unique("q"))
    backend.publish_to_queue(Message(content="x"), queue)
    assert receive(backend, queue, 1)
    ref = weakref.ref(backend)
    thread = backend._link._thread
    assert thread is not None
    assert thread.is_alive()
    del backend, queue
    gc.collect()
    assert ref() is None
    thread.join(15)
    assert not thread.is_alive()


@pytest.mark.slow
def test_heartbeats_go_on_while_a_handler_runs_long(rabbitmq_node: RabbitMQNode) -> None:
    # With a 1 s heartbeat the broker drops a connection that is silent for ~3 s;
    # the I/O thread keeps it alive while this thread is busy elsewhere.
    with RabbitMQBackend(rabbitmq_node.url, heartbeat=1) as backend:
        queue, _ = backend.declare_queue(unique("q"))
        backend.publish_to_queue(Message(content="slow"), queue)
        [message] = receive(backend, queue, 1)
        time.sleep(6)  # a long handler that never calls the backend
        backend.acknowledge(message)  # same channel: a lost connection would redeliver it
        assert backend.retrieve_messages(queue, wait_seconds=2) == []


def test_a_closed_backend_refuses_work(rabbitmq_node: RabbitMQNode) -> None:
    backend = RabbitMQBackend(rabbitmq_node.url)
    queue, _ = backend.declare_queue(unique("q"))
    backend.publish_to_queue(Message(content="x"), queue)
    [message] = receive(backend, queue, 1)
    backend.close_connection()
    backend.acknowledge(message)  # a no-op: closing handed it back
    with pytest.raises(PublishError):
        backend.publish_to_queue(Message(content="y"), queue)
    with pytest.raises(BackendConnectionError):
        backend.retrieve_messages(queue)
    with pytest.raises(BackendConnectionError):
        backend.declare_topic("t")
    with RabbitMQBackend(rabbitmq_node.url) as other:
        [again] = receive(other, queue, 1)
        assert (again.content, again.receive_count) == ("x", 2)


# -- configuration -----------------------------------------------------------------------


def test_from_url_and_options(rabbitmq_node: RabbitMQNode) -> None:
    backend = from_url(f"{rabbitmq_node.url}?prefetch=7&heartbeat=11&visibility_timeout=2.5")
    assert isinstance(backend, RabbitMQBackend)
    assert (backend.prefetch, backend.parameters.heartbeat) == (7, 11)
    assert backend.default_visibility_timeout == 2.5
    backend.close_connection()
    default = RabbitMQBackend.from_url("amqp://u:p@example.invalid:5673/vh")
    assert default.parameters.heartbeat == 30
    assert (default.parameters.host, default.parameters.port) == ("example.invalid", 5673)
    assert default.parameters.virtual_host == "vh"
    default.close_connection()
    secure = RabbitMQBackend.from_url("amqps://u:p@example.invalid/vh")
    assert secure.parameters.ssl_options is not None
    assert secure.parameters.port == 5671
    secure.close_connection()
    with pytest.raises(ConfigurationError):
        RabbitMQBackend.from_url("amqp://localhost/?colour=blue")
    with pytest.raises(ConfigurationError):
        RabbitMQBackend.from_url("redis://localhost")
    params = pika.ConnectionParameters("example.invalid", heartbeat=5)
    assert RabbitMQBackend(params, prefetch=3).parameters.heartbeat == 5
    assert params is not RabbitMQBackend(params).parameters


def test_delays_round_up_to_a_few_holding_queues() -> None:
    assert delay_bucket_ms(1.0) == 1000
    assert delay_bucket_ms(0.001) == 1
    for seconds in (0.05, 0.7, 1.3, 2.9, 37.0, 1234.5):
        bucket = delay_bucket_ms(seconds)
        assert seconds * 1000 <= bucket <= seconds * 1000 * 1.13
    jittered = {delay_bucket_ms(1.0 + i / 1000) for i in range(-200, 200)}
    assert len(jittered) <= 5
