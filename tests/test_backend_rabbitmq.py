"""RabbitMQBackend against a real rabbitmq-server node (tests/servers/rabbitmq.py)."""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pika
import pytest
from pydantic import BaseModel

from melange import Consumer, Message, MessageDispatcher, MessagePublisher, listener, signals
from melange.backends import from_url
from melange.backends.decoding import bytes_of
from melange.backends.rabbitmq import RabbitMQBackend
from melange.backends.rabbitmq._topology import delay_bucket_ms
from melange.exceptions import (
    BackendConnectionError,
    BatchPublishError,
    ConfigurationError,
    PublishError,
    QueueNotFoundError,
    TopicNotFoundError,
)
from melange.models import DECODE_ERROR, QueueWrapper, TopicWrapper
from melange.testing import AsyncBackendContract, BackendContract, receive, unique_name, wait_until
from tests.recorder import Numbered, Recorder
from tests.servers.rabbitmq import RabbitMQNode
from tests.support import free_port

pytestmark = pytest.mark.rabbitmq
ROOT = Path(__file__).resolve().parent.parent


class TestRabbitMQBackend(BackendContract, AsyncBackendContract):
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
    names = [unique_name("billing"), unique_name("shipping")]
    for dispatcher, name in zip(services, names, strict=True):
        dispatcher.declare(name)
    publisher = MessagePublisher(backend)
    sent = [publisher.publish(OrderCreated(order_id=str(i))) for i in range(5)]
    for dispatcher, name in zip(services, names, strict=True):
        assert dispatcher.consume_loop(name, max_messages=5, idle_timeout=10) == 5
    for consumer in (billing, shipping):
        assert sorted(consumer.seen) == [(str(i), 1) for i in range(5)]
    assert {m.manifest for m in sent} == {"OrderCreated"}


def test_a_release_at_the_limit_is_dead_lettered_by_the_broker(backend: RabbitMQBackend) -> None:
    queue, dead_letter = backend.declare_queue(
        unique_name("q"), dead_letter_queue_name=unique_name("dlq"), max_receive_count=2
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
    queue, _ = backend.declare_queue(
        unique_name("durable"), dead_letter_queue_name=unique_name("dlq")
    )
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
        queue, _ = backend.declare_queue(unique_name("q"))
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
    queue = unique_name("stream")
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
    queue = unique_name("crash")
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
        backend.publish_to_queue(Message(content="x"), QueueWrapper(unique_name("ghost")))
    with pytest.raises(TopicNotFoundError):
        backend.publish_to_topic(Message(content="x"), TopicWrapper(unique_name("ghost")))
    with pytest.raises(QueueNotFoundError):
        backend.retrieve_messages(QueueWrapper(unique_name("ghost")))


def test_a_queue_or_exchange_deleted_behind_its_back_is_reported(
    backend: RabbitMQBackend, rabbitmq_node: RabbitMQNode
) -> None:
    queue, _ = backend.declare_queue(unique_name("q"))
    topic = backend.declare_topic(unique_name("t"))
    connection, channel = raw_channel(rabbitmq_node)
    channel.queue_delete(queue.unwrap())  # type: ignore[attr-defined]
    channel.exchange_delete(topic.unwrap())  # type: ignore[attr-defined]
    connection.close()
    with pytest.raises(QueueNotFoundError):  # returned as unroutable (mandatory)
        backend.publish_to_queue(Message(content="x"), queue)
    with pytest.raises(TopicNotFoundError):  # the broker closed the confirm channel
        backend.publish_to_topic(Message(content="x"), topic)
    other, _ = backend.declare_queue(unique_name("q"))
    backend.publish_to_queue(Message(content="still works"), other)
    assert [m.content for m in receive(backend, other, 1)] == ["still works"]


def test_redeclaring_with_another_delivery_limit_is_a_configuration_error(
    backend: RabbitMQBackend,
) -> None:
    name, dead_letter = unique_name("q"), unique_name("dlq")
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
    queue, _ = backend.declare_queue(unique_name("q"), visibility_timeout=0.3)
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
    name = unique_name("q")
    with RabbitMQBackend(rabbitmq_node.url) as first:
        queue, _ = first.declare_queue(name, dead_letter_queue_name=unique_name("dlq"))
        first.publish_batch_to_queue([Message(content=str(i)) for i in range(20)], queue)
        [taken] = first.retrieve_messages(queue, max_messages=1, wait_seconds=5)
    with RabbitMQBackend(rabbitmq_node.url) as second:
        got = receive(second, second.get_queue(name), 20)
        counts = {m.content: m.receive_count for m in got}
        assert counts.pop(taken.content) == 2  # handed out once, never acknowledged
        assert set(counts.values()) == {1}  # only buffered: not a receive
        assert len(counts) == 19


def test_an_idle_buffer_is_handed_back_to_other_consumers(rabbitmq_node: RabbitMQNode) -> None:
    name = unique_name("q")
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
    queue, _ = backend.declare_queue(unique_name("q"))
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
    queue, _ = backend.declare_queue(unique_name("q"))
    backend.publish_to_queue(Message(content="x"), queue)
    assert receive(backend, queue, 1)
    ref = weakref.ref(backend)
    thread = backend._io._thread
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
        queue, _ = backend.declare_queue(unique_name("q"))
        backend.publish_to_queue(Message(content="slow"), queue)
        [message] = receive(backend, queue, 1)
        time.sleep(6)  # a long handler that never calls the backend
        backend.acknowledge(message)  # same channel: a lost connection would redeliver it
        assert backend.retrieve_messages(queue, wait_seconds=2) == []


def test_a_closed_backend_refuses_work(rabbitmq_node: RabbitMQNode) -> None:
    backend = RabbitMQBackend(rabbitmq_node.url)
    queue, _ = backend.declare_queue(unique_name("q"))
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


# -- bad input, one message at a time --------------------------------------------------------


def raw_publish(
    node: RabbitMQNode, exchange: str, routing_key: str, body: bytes, **properties: Any
) -> None:
    """Publish with plain pika (confirmed), as a foreign service would."""
    connection, channel = raw_channel(node)
    try:
        channel.confirm_delivery()  # type: ignore[attr-defined]
        channel.basic_publish(  # type: ignore[attr-defined]
            exchange, routing_key, body, pika.BasicProperties(**properties)
        )
    finally:
        connection.close()


BAD_INPUT = {
    "serializer header": (b"{}", {"headers": {"x-melange-serializer": "json"}}, "serializer"),
    "delivery count": (b"{}", {"headers": {"x-delivery-count": "zz"}}, "x-delivery-count"),
    "body": (b'{"name": "\xff\xfe"}', {}, "body is not UTF-8"),
    "header name": (b"{}", {"headers": {b"k\xff": "v"}}, "header name"),
    "message id": (b"{}", {"message_id": b"id-\xff"}, "message_id is not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_a_bad_delivery_is_returned_undecodable_between_good_ones(
    rabbitmq_node: RabbitMQNode, case: str
) -> None:
    body, properties, reason = BAD_INPUT[case]
    with RabbitMQBackend(rabbitmq_node.url) as backend:
        queue, dead_letter = backend.declare_queue(
            unique_name("q"), dead_letter_queue_name=unique_name("dlq"), visibility_timeout=1
        )
        assert dead_letter is not None
        first, last = Message(content="first", serializer_id=3), Message(content="last")
        backend.publish_to_queue(first, queue)
        raw_publish(rabbitmq_node, "", queue.unwrap(), body, **properties)
        backend.publish_to_queue(last, queue)
        got = receive(backend, queue, 3)
        assert len(got) == 3
        [bad] = [m for m in got if DECODE_ERROR in m.metadata]
        assert reason in bad.metadata[DECODE_ERROR]
        assert bytes_of(bad.content) == body
        assert bad.serializer_id is None
        expected_count = 0 if case == "delivery count" else 1
        assert bad.receive_count == expected_count
        good = sorted((m for m in got if m is not bad), key=lambda m: m.content)
        assert [(m.content, m.message_id, m.serializer_id) for m in good] == [
            ("first", first.message_id, 3),
            ("last", last.message_id, None),
        ]
        assert all(m.receive_count == 1 and DECODE_ERROR not in m.metadata for m in good)
        backend.acknowledge_batch(got)
        time.sleep(1.5)  # past the visibility timeout: an unacknowledged one would be back
        assert backend.retrieve_messages(queue, wait_seconds=0.5) == []
        assert backend.queue_depth(dead_letter) == 0


@pytest.mark.parametrize("forged", ["999", "many", "999 another-queue", b"7"])
def test_a_receive_count_a_producer_set_is_not_trusted(
    backend: RabbitMQBackend, rabbitmq_node: RabbitMQNode, forged: str | bytes
) -> None:
    # Only melange writes x-melange-receives ("<receives> <queue>"), and only for that queue.
    queue, _ = backend.declare_queue(unique_name("q"), max_receive_count=3)
    headers = {"x-melange-receives": forged, "x-melange-decode-error": "forged"}
    raw_publish(rabbitmq_node, "", queue.unwrap(), b"{}", message_id="m-1", headers=headers)
    [message] = receive(backend, queue, 1)
    assert message.receive_count == 1
    assert DECODE_ERROR not in message.metadata
    text = forged.decode() if isinstance(forged, bytes) else forged
    assert message.metadata["x-foreign-receives"] == text
    assert message.metadata["x-foreign-decode-error"] == "forged"
    backend.acknowledge(message)


def test_receives_melange_carried_over_are_trusted_for_their_queue(
    backend: RabbitMQBackend, rabbitmq_node: RabbitMQNode
) -> None:
    queue, _ = backend.declare_queue(unique_name("q"), max_receive_count=10)
    headers = {"x-melange-receives": f"4 {queue.unwrap()}"}
    raw_publish(rabbitmq_node, "", queue.unwrap(), b"{}", message_id="m-1", headers=headers)
    [message] = receive(backend, queue, 1)
    assert message.receive_count == 5
    assert not any(key.startswith("x-foreign-") for key in message.metadata)
    backend.release(message, 0.05)  # put back as a new message, its receives carried over
    [again] = receive(backend, queue, 1)
    assert again.receive_count == 6
    backend.acknowledge(again)


def test_a_bad_header_keeps_its_bytes_when_published_again(
    backend: RabbitMQBackend, rabbitmq_node: RabbitMQNode
) -> None:
    # What a dead-letter copy does: the original bytes go out, not an encoding error.
    source, _ = backend.declare_queue(unique_name("q"))
    copy, _ = backend.declare_queue(unique_name("copy"))
    headers = {"trace": b"\xc3(\xff", "x-melange-serializer": "json"}
    raw_publish(rabbitmq_node, "", source.unwrap(), b"\xff\xfe", type="m", headers=headers)
    [bad] = receive(backend, source, 1)
    assert DECODE_ERROR in bad.metadata
    backend.publish_to_queue(bad, copy)
    backend.acknowledge(bad)
    connection, channel = raw_channel(rabbitmq_node)
    try:
        assert wait_until(lambda: backend.queue_depth(copy) == 1)
        _, properties, body = channel.basic_get(copy.unwrap(), auto_ack=True)  # type: ignore[attr-defined]
    finally:
        connection.close()
    assert body == b"\xff\xfe"
    assert properties.headers["trace"] == b"\xc3(\xff"
    assert properties.headers["x-melange-serializer"] == "json"
    assert properties.headers[DECODE_ERROR] == bad.metadata[DECODE_ERROR]
    assert (properties.message_id, properties.type) == (bad.message_id, "m")


def test_a_buffered_bad_message_goes_back_as_it_was_on_close(rabbitmq_node: RabbitMQNode) -> None:
    name = unique_name("q")
    with RabbitMQBackend(rabbitmq_node.url) as first:
        queue, _ = first.declare_queue(name)
        first.publish_to_queue(Message(content="taken"), queue)
        headers = {"x-melange-receives": "many", "x-delivery-count": "zz"}
        raw_publish(rabbitmq_node, "", name, b"buffered", message_id="m-1", headers=headers)
        [taken] = first.retrieve_messages(queue, max_messages=1, wait_seconds=5)
        first.acknowledge(taken)
        subscription = first._subscriptions[name]
        assert wait_until(lambda: len(subscription.ready) == 1)
        started = time.monotonic()
    assert time.monotonic() - started < 5  # the I/O thread put it back and closed
    with RabbitMQBackend(rabbitmq_node.url) as second:
        [again] = receive(second, queue, 1)
        assert (again.content, again.message_id) == ("buffered", "m-1")
        assert again.metadata["x-foreign-receives"] == "many"  # the producer's, not trusted
        assert DECODE_ERROR not in again.metadata  # its x-delivery-count: only the broker's now
        second.acknowledge(again)


def test_header_values_of_every_amqp_type_reach_handlers_as_text(
    backend: RabbitMQBackend, rabbitmq_node: RabbitMQNode
) -> None:
    queue, _ = backend.declare_queue(unique_name("q"))
    headers = {
        "int": 42,
        "long": 2**40,
        "negative": -7,
        "true": True,
        "decimal": Decimal("12.50"),
        "when": datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
        "bytes": "été".encode(),
        "none": None,
        "table": {"a": 1, "b": [True, "x", b"y", Decimal("0.5")], "c": None},
        "list": [1, "two", {"three": 3}],
        "text": "plain ✓",
    }
    raw_publish(rabbitmq_node, "", queue.unwrap(), b"{}", message_id="m-1", headers=headers)
    [message] = receive(backend, queue, 1)
    assert message.metadata == {
        "int": "42",
        "long": str(2**40),
        "negative": "-7",
        "true": "True",
        "decimal": "12.5",  # pika sends a Decimal normalized
        "when": "2024-05-01 12:30:00+00:00",
        "bytes": "été".encode(),  # a byte array stays bytes
        "none": "None",
        "table": '{"a":1,"b":[true,"x","y","0.5"],"c":null}',
        "list": '[1,"two",{"three":3}]',
        "text": "plain ✓",
    }
    assert message.message_id == "m-1"


# -- a foreign message without message_id -------------------------------------------------


def test_a_foreign_message_without_id_keeps_one_id_across_redeliveries(
    rabbitmq_node: RabbitMQNode,
) -> None:
    with RabbitMQBackend(rabbitmq_node.url) as backend:
        topic = backend.declare_topic(unique_name("t"))
        queue, _ = backend.declare_queue(unique_name("q"), topic, visibility_timeout=1)
        for body in (b"a", b"b"):
            raw_publish(rabbitmq_node, topic.unwrap(), "", body, headers={"k": "v"})
        first = {m.content: m for m in receive(backend, queue, 2)}
        ids = {content: m.message_id for content, m in first.items()}
        assert ids["a"] != ids["b"]
        assert uuid.UUID(ids["a"]).version == 5
        backend.release(first["a"])  # requeued at once
        [a] = receive(backend, queue, 1)
        assert (a.content, a.message_id, a.receive_count) == ("a", ids["a"], 2)
        backend.extend_visibility(a, 30)
        [b] = receive(backend, queue, 1, timeout=5)  # back after its visibility timeout
        assert (b.content, b.message_id, b.receive_count) == ("b", ids["b"], 2)
        backend.acknowledge(b)
        backend.release(a)
        subscription = backend._subscriptions[queue.unwrap()]
        assert wait_until(lambda: len(subscription.ready) == 1)
    # Closing put "a" back as a new message, sent to the queue rather than the topic.
    with RabbitMQBackend(rabbitmq_node.url) as other:
        [again] = receive(other, queue, 1)
        assert (again.content, again.message_id, again.receive_count) == ("a", ids["a"], 3)
        other.acknowledge(again)


def test_a_foreign_message_keeps_its_id_when_the_broker_dead_letters_it(
    rabbitmq_node: RabbitMQNode,
) -> None:
    with RabbitMQBackend(rabbitmq_node.url) as backend:
        topic = backend.declare_topic(unique_name("t"))
        queue, dead_letter = backend.declare_queue(
            unique_name("q"),
            topic,
            dead_letter_queue_name=unique_name("dlq"),
            max_receive_count=3,
            visibility_timeout=30,
        )
        assert dead_letter is not None
        raw_publish(
            rabbitmq_node,
            topic.unwrap(),
            "",
            b"kept",
            headers={"tenant": "a", "x-melange-origin": "forged"},
            expiration="600000",
        )
        seen = []
        for _ in range(3):
            [message] = receive(backend, queue, 1)
            seen.append((message.message_id, message.receive_count))
            backend.release(message)  # requeued at once, counted by the quorum queue
        [moved] = receive(backend, dead_letter, 1)  # the broker's delivery limit moved it
        backend.acknowledge(moved)
    ids = {message_id for message_id, _ in seen}
    assert [count for _, count in seen] == [1, 2, 3]
    assert len(ids) == 1
    assert moved.message_id in ids
    assert moved.content == "kept"
    assert moved.metadata["tenant"] == "a"


def test_byte_identical_foreign_messages_share_an_id(
    backend: RabbitMQBackend, rabbitmq_node: RabbitMQNode
) -> None:
    queue, _ = backend.declare_queue(unique_name("q"))
    for stamp in (None, None, 1_700_000_000):
        raw_publish(rabbitmq_node, "", queue.unwrap(), b"same", timestamp=stamp)
    got = receive(backend, queue, 3)
    ids = Counter(m.message_id for m in got)
    assert sorted(ids.values()) == [1, 2]  # the timestamp tells the third one apart


# -- extend_visibility ----------------------------------------------------------------------


def test_an_extended_message_is_not_redelivered_meanwhile(backend: RabbitMQBackend) -> None:
    queue, _ = backend.declare_queue(unique_name("q"), visibility_timeout=1)
    backend.publish_to_queue(Message(content="long job"), queue)
    [message] = receive(backend, queue, 1)
    stop = threading.Event()

    def keep_hidden() -> None:  # what the dispatcher does from its own thread
        while not stop.wait(0.3):
            backend.extend_visibility(message, 1)

    keeper = threading.Thread(target=keep_hidden)
    keeper.start()
    try:
        assert backend.retrieve_messages(queue, wait_seconds=3) == []  # 3x the timeout
    finally:
        stop.set()
        keeper.join()
    backend.acknowledge(message)
    backend.extend_visibility(message, 30)  # after the ack: nothing to extend
    time.sleep(1.2)
    assert backend.retrieve_messages(queue, wait_seconds=0.5) == []


def test_extending_a_message_handed_out_again_changes_nothing(backend: RabbitMQBackend) -> None:
    queue, _ = backend.declare_queue(unique_name("q"), visibility_timeout=1)
    backend.publish_to_queue(Message(content="a"), queue)
    [first] = receive(backend, queue, 1)
    [second] = receive(backend, queue, 1, timeout=5)  # requeued by the visibility timeout
    backend.extend_visibility(first, 60)
    backend.release(second)
    [third] = receive(backend, queue, 1)
    backend.extend_visibility(second, 60)
    started = time.monotonic()
    [fourth] = receive(backend, queue, 1, timeout=5)  # the stale extensions did not hold it
    assert time.monotonic() - started < 3
    assert [m.receive_count for m in (first, second, third, fourth)] == [1, 2, 3, 4]
    backend.acknowledge(fourth)


def test_extend_visibility_refuses_a_message_from_elsewhere(backend: RabbitMQBackend) -> None:
    with pytest.raises(ValueError, match="RabbitMQBackend"):
        backend.extend_visibility(Message(content="x"), 10)


# -- unrouted publishes -----------------------------------------------------------------


def test_a_topic_without_queues_reports_each_unrouted_message(backend: RabbitMQBackend) -> None:
    empty = backend.declare_topic(unique_name("empty"))
    bound = backend.declare_topic(unique_name("bound"))
    queue, _ = backend.declare_queue(unique_name("q"), bound)
    unrouted: list[tuple[str, str]] = []

    def on_unrouted(sender: object, message: Message, topic: str) -> None:
        unrouted.append((message.message_id, topic))

    lonely = Message(content="nobody listens")
    with signals.message_unrouted.connected_to(on_unrouted, sender=backend):
        backend.publish_to_topic(lonely, empty)
        assert unrouted == [(lonely.message_id, empty.unwrap())]
        unrouted.clear()
        backend.publish_to_topic(Message(content="somebody listens"), bound)
        assert unrouted == []
        # Concurrent batches share the confirm channel: each return finds its own message.
        lost = [Message(content=f"lost {i}") for i in range(200)]
        kept = [Message(content=f"kept {i}") for i in range(200)]
        threads = [
            threading.Thread(target=publish_in_batches, args=(backend, messages, topic))
            for messages, topic in ((lost, empty), (kept, bound))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert sorted(unrouted) == sorted((m.message_id, empty.unwrap()) for m in lost)
    got = drain(backend, queue, 201)
    assert sorted(m.content for m in got) == sorted(
        ["somebody listens"] + [m.content for m in kept]
    )


def publish_in_batches(
    backend: RabbitMQBackend, messages: list[Message], topic: TopicWrapper
) -> None:
    for first in range(0, len(messages), 25):
        backend.publish_batch_to_topic(messages[first : first + 25], topic)


def drain(backend: RabbitMQBackend, queue: QueueWrapper, expected: int) -> list[Message]:
    """Receive and acknowledge until ``expected`` messages came (or 30 s passed)."""
    got: list[Message] = []
    deadline = time.monotonic() + 30
    while len(got) < expected and time.monotonic() < deadline:
        batch = backend.retrieve_messages(queue, max_messages=50, wait_seconds=0.5)
        backend.acknowledge_batch(batch)
        got.extend(batch)
    return got


def test_a_queue_publish_that_is_returned_still_raises(backend: RabbitMQBackend) -> None:
    queue, _ = backend.declare_queue(unique_name("q"))
    backend.delete_queue(queue)
    backend._known_queues.add(queue.unwrap())  # as if deleted by someone else since
    fired: list[Message] = []
    with (
        signals.message_unrouted.connected_to(lambda _, **kw: fired.append(kw["message"])),
        pytest.raises(BatchPublishError) as raised,
    ):
        backend.publish_batch_to_queue([Message(content="a"), Message(content="b")], queue)
    assert [(m.content, "does not exist" in why) for m, why in raised.value.failed] == [
        ("a", True),
        ("b", True),
    ]
    assert fired == []


def test_an_unreachable_broker_is_named_with_the_reason_and_no_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()  # nothing listens there
    url = f"amqp://shop:s3cret@127.0.0.1:{port}/%2F?operation_timeout=1.5"
    with (
        RabbitMQBackend(url) as backend,
        caplog.at_level(logging.WARNING, "melange"),
        pytest.raises(BackendConnectionError) as raised,
    ):
        backend.declare_topic("t")
    said = str(raised.value)
    assert f"RabbitMQ at 127.0.0.1:{port} was not reachable within 1.5 s" in said
    assert "Connection refused" in said
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("melange")]
    assert any(f"127.0.0.1:{port}: Connection refused" in w for w in warnings)
    assert all("s3cret" not in text for text in [said, *warnings])


def test_a_url_naming_several_hosts_gives_one_node_each() -> None:
    url = "amqp://shop:s3cret@rabbit-a:5672,rabbit-b:5673, rabbit-c/orders?heartbeat=9"
    with RabbitMQBackend(url) as backend:
        nodes = [(n.host, n.port, n.virtual_host, n.heartbeat) for n in backend.nodes]
        assert nodes == [
            ("rabbit-a", 5672, "orders", 9),
            ("rabbit-b", 5673, "orders", 9),
            ("rabbit-c", 5672, "orders", 9),
        ]
        assert {n.credentials.username for n in backend.nodes} == {"shop"}
        assert backend.parameters is backend.current_node is backend.nodes[0]
    listed = [pika.ConnectionParameters("a"), pika.ConnectionParameters("b", 5673)]
    with RabbitMQBackend(listed) as backend:
        assert [(n.host, n.port) for n in backend.nodes] == [("a", 5672), ("b", 5673)]
        assert backend.nodes[0] is not listed[0]  # copied: the caller's stay as they were


def test_a_dead_first_host_is_passed_over_for_one_that_answers(
    rabbitmq_node: RabbitMQNode, caplog: pytest.LogCaptureFixture
) -> None:
    dead = free_port()
    url = f"amqp://guest:guest@127.0.0.1:{dead},127.0.0.1:{rabbitmq_node.port}/%2F"
    with RabbitMQBackend(url) as backend, caplog.at_level(logging.INFO, "melange"):
        queue, _ = backend.declare_queue(unique_name("q"))
        backend.publish_to_queue(Message(content="via the second host"), queue)
        [message] = receive(backend, queue, 1)
        backend.acknowledge(message)
    said = [r.getMessage() for r in caplog.records]
    assert any(f"127.0.0.1:{dead}: Connection refused" in line for line in said)
    assert f"connected to RabbitMQ at 127.0.0.1:{rabbitmq_node.port}" in said


def test_after_a_nack_publishing_goes_on_over_a_fresh_channel(
    backend: RabbitMQBackend, rabbitmq_node: RabbitMQNode, caplog: pytest.LogCaptureFixture
) -> None:
    full = unique_name("full")
    with pika.BlockingConnection(pika.URLParameters(rabbitmq_node.url)) as raw:
        arguments = {"x-max-length": 1, "x-overflow": "reject-publish"}  # exact when classic
        raw.channel().queue_declare(full, durable=True, arguments=arguments)
    refusing = backend.get_queue(full)
    other, _ = backend.declare_queue(unique_name("q"))
    with caplog.at_level(logging.WARNING, "melange"):
        backend.publish_to_queue(Message(content="fits"), refusing)
        with pytest.raises(PublishError):
            backend.publish_to_queue(Message(content="over the limit"), refusing)
        for n in range(3):
            backend.publish_to_queue(Message(content=str(n)), other)
    assert sorted(m.content for m in receive(backend, other, 3)) == ["0", "1", "2"]
    said = [r.getMessage() for r in caplog.records]
    assert "RabbitMQ refused a publish (nack); reopening the publishing channel" in said
    assert not any("closed the publishing channel" in line for line in said)


def test_no_host_answering_names_them_all() -> None:
    ports = [free_port(), free_port()]
    hosts = ",".join(f"127.0.0.1:{p}" for p in ports)
    with (
        RabbitMQBackend(f"amqp://u:s3cret@{hosts}/%2F?operation_timeout=1") as backend,
        pytest.raises(BackendConnectionError) as raised,
    ):
        backend.declare_topic("t")
    said = str(raised.value)
    assert f"RabbitMQ at 127.0.0.1:{ports[0]}, 127.0.0.1:{ports[1]} was not reachable" in said
    assert "s3cret" not in said


def test_a_bad_amqp_url_is_refused_without_its_password() -> None:
    with pytest.raises(ConfigurationError) as raised:
        RabbitMQBackend("amqp://shop:s3cret@127.0.0.1:notaport/")
    assert "s3cret" not in str(raised.value)
    assert "shop:***@" in str(raised.value)
