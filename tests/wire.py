"""Each broker's raw client, for the trust-boundary tests: write what melange would not.

A test puts a bad message between two good ones and asserts: the loop did
not raise, both neighbours were handled once, and the bad one is in the
dead-letter queue with its original bytes and a reason (or, where this is
the promise, handled). ``wire`` is a fixture (registered in conftest) that
runs a test on RabbitMQ, SQS (moto) and SQLite.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pytest
from pydantic import BaseModel

from melange import Consumer, MessageDispatcher, MessagePublisher, listener
from melange.backends.interfaces import MessagingBackend
from melange.backends.rabbitmq import RabbitMQBackend
from melange.backends.sqlite import SQLiteBackend
from melange.backends.sqs import LocalSQSBackend
from melange.backends.sqs import _wire as sqs_wire
from melange.context import current_message
from melange.dead_letters import (
    ERROR_MESSAGE,
    ERROR_STAGE,
)
from melange.models import Message, QueueWrapper
from melange.testing import receive, unique_name
from tests.servers.moto import MotoServer
from tests.servers.rabbitmq import RabbitMQNode

#: A raw write: queue name, body, then headers, serializer id and manifest as the producer set them.
RawSend = Callable[[str, bytes, dict[str, Any], Any, str | None], None]


class Shipped(BaseModel):
    __melange_manifest__ = "trust.shipped"
    number: int


class Shipping(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.handled: list[int] = []
        self.headers: dict[int, dict[str, str | bytes]] = {}

    @listener
    def on_shipped(self, event: Shipped) -> None:
        self.handled.append(event.number)
        message = current_message()
        assert message is not None
        self.headers[event.number] = dict(message.metadata)


@dataclass
class Wire:
    """One broker: melange's backend for it, and its raw client to write what melange would not."""

    kind: str
    backend: MessagingBackend
    send_raw: RawSend


@contextmanager
def rabbitmq_raw_wire(node: RabbitMQNode) -> Iterator[Wire]:
    def send_raw(
        queue: str, body: bytes, headers: dict[str, Any], serializer: Any, manifest: str | None
    ) -> None:
        if serializer is not None:
            headers = {**headers, "x-melange-serializer": serializer}
        connection = pika.BlockingConnection(pika.URLParameters(node.url))
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            properties = pika.BasicProperties(
                message_id=unique_name("raw"), type=manifest, headers=headers
            )
            channel.basic_publish("", queue, body, properties)
        finally:
            connection.close()

    with RabbitMQBackend(node.url) as backend:
        yield Wire("rabbitmq", backend, send_raw)


@contextmanager
def sqs_raw_wire(moto: MotoServer) -> Iterator[Wire]:
    def send_raw(
        queue: str, body: bytes, headers: dict[str, Any], serializer: Any, manifest: str | None
    ) -> None:
        attributes = {
            name: {"DataType": "Binary", "BinaryValue": value}
            if isinstance(value, bytes)
            else {"DataType": "String", "StringValue": value}
            for name, value in headers.items()
        }
        attributes[sqs_wire.MESSAGE_ID] = {"DataType": "String", "StringValue": unique_name("raw")}
        if serializer is not None:
            attributes[sqs_wire.SERIALIZER_ID] = {"DataType": "String", "StringValue": serializer}
        if manifest is not None:
            attributes[sqs_wire.MANIFEST] = {"DataType": "String", "StringValue": manifest}
        url = backend.sqs_client.get_queue_url(QueueName=queue)["QueueUrl"]
        backend.sqs_client.send_message(
            QueueUrl=url, MessageBody=body.decode(), MessageAttributes=attributes
        )

    with LocalSQSBackend(moto.host, moto.port, region=moto.region) as backend:
        yield Wire("sqs", backend, send_raw)


@contextmanager
def sqlite_raw_wire(path: Path) -> Iterator[Wire]:
    def send_raw(
        queue: str, body: bytes, headers: dict[str, Any], serializer: Any, manifest: str | None
    ) -> None:
        # The broker file keeps a binary header as {"base64": …} (docs/backends/sqlite.md).
        plain = {
            k: {"base64": base64.b64encode(v).decode()} if isinstance(v, bytes) else v
            for k, v in headers.items()
        }
        metadata = plain.pop("", None) or json.dumps(plain)
        with sqlite3.connect(path) as db:
            [(number,)] = db.execute("SELECT coalesce(max(id), 0) + 1 FROM melange_bodies")
            db.execute(
                "INSERT INTO melange_bodies VALUES (?, ?, ?, ?, ?, ?)",
                (number, unique_name("raw"), body.decode(), metadata, serializer, manifest),
            )
            db.execute(
                "INSERT INTO melange_deliveries (queue, visible_at, id) VALUES (?, 0, ?)",
                (queue, number),
            )
        db.close()

    with SQLiteBackend(path) as backend:
        yield Wire("sqlite", backend, send_raw)


@pytest.fixture(params=["rabbitmq", "sqs", "sqlite"])
def wire(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Wire]:
    if request.param == "rabbitmq":
        opened = rabbitmq_raw_wire(request.getfixturevalue("rabbitmq_node"))
    elif request.param == "sqs":
        opened = sqs_raw_wire(request.getfixturevalue("moto"))
    else:
        opened = sqlite_raw_wire(tmp_path / "broker.db")
    with opened as each:
        yield each


@dataclass
class Run:
    consumer: Shipping
    dead_letters: list[Message]


def run_between_good_ones(
    wire: Wire,
    body: bytes,
    headers: dict[str, Any] | None = None,
    serializer: Any = None,
    manifest: str | None = "trust.shipped",
) -> Run:
    """Publish 1, the raw message, 2; consume until idle; return what was handled, dead-lettered."""
    consumer = Shipping()
    dispatcher = MessageDispatcher(wire.backend, consumers=[consumer])
    queue_name = unique_name("trust")
    queue, dead_letter = dispatcher.declare(queue_name, visibility_timeout=2)
    assert dead_letter is not None
    publisher = MessagePublisher(wire.backend)
    publisher.publish(Shipped(number=1), queue=queue)
    wire.send_raw(queue_name, body, dict(headers or {}), serializer, manifest)
    publisher.publish(Shipped(number=2), queue=queue)
    deadline = time.monotonic() + 30
    while len(consumer.handled) < 2 and time.monotonic() < deadline:
        dispatcher.consume_loop(queue_name, idle_timeout=0.5)
    dispatcher.consume_loop(queue_name, idle_timeout=0.5)
    dead = receive(wire.backend, dead_letter, 1, timeout=5)
    wire.backend.acknowledge_batch(dead)
    return Run(consumer, dead)


def assert_dead_lettered(run: Run, body: bytes, stage: str, reason: str) -> Message:
    assert sorted(run.consumer.handled) == [1, 2]
    [dead] = run.dead_letters
    assert dead.content.encode() == body
    assert dead.metadata[ERROR_STAGE] == stage
    assert reason in dead.metadata[ERROR_MESSAGE]
    return dead


class Refusing(Consumer):
    """Fails on every event with a long reason, once per delivery."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    @listener
    def on_shipped(self, event: Shipped) -> None:
        self.calls += 1
        raise RuntimeError("refused: " + "r" * 1000)


def _padded_shipped(size: int, attributes: dict[str, dict[str, str]]) -> str:
    """Return a ``Shipped`` body that, with ``attributes``, is exactly ``size`` bytes on SQS."""
    empty = json.dumps({"number": 3, "pad": ""})
    pad = size - sqs_wire.size_of(empty, attributes)
    body = json.dumps({"number": 3, "pad": "p" * pad})
    assert sqs_wire.size_of(body, attributes) == size
    return body


def _send_sized(backend: LocalSQSBackend, queue: str, size: int) -> str:
    """Write with boto3 a ``Shipped`` of ``size`` bytes, attributes included; return its body."""
    attributes = {
        sqs_wire.MESSAGE_ID: {"DataType": "String", "StringValue": unique_name("big")},
        sqs_wire.MANIFEST: {"DataType": "String", "StringValue": "trust.shipped"},
    }
    body = _padded_shipped(size, attributes)
    url = backend.sqs_client.get_queue_url(QueueName=queue)["QueueUrl"]
    backend.sqs_client.send_message(QueueUrl=url, MessageBody=body, MessageAttributes=attributes)
    return body


def _consume_until_dead_lettered(
    dispatcher: MessageDispatcher, queue: str, dead_letter: QueueWrapper
) -> list[Message]:
    """Run the loop (which must not raise) until the dead-letter queue holds a message."""
    backend = dispatcher.backend
    dead: list[Message] = []
    deadline = time.monotonic() + 30
    while not dead and time.monotonic() < deadline:
        dispatcher.consume_loop(queue, idle_timeout=0.5)
        dead = backend.retrieve_messages(dead_letter, max_messages=10)
    return dead
