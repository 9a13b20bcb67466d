"""Hostile or foreign messages written by each broker's raw client, consumed by a real worker loop.

Each test puts a bad message between two good ones and asserts: the loop did
not raise, both neighbours were handled once, and the bad one is in the
dead-letter queue with its original bytes and a reason (or, where this is
the promise, handled).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import subprocess
import sys
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
from melange.aio import AsyncMessageDispatcher, BridgedBackend
from melange.backends.interfaces import MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.rabbitmq import RabbitMQBackend
from melange.backends.sqlite import SQLiteBackend
from melange.backends.sqs import LocalSQSBackend
from melange.backends.sqs import _wire as sqs_wire
from melange.context import current_message
from melange.dead_letters import (
    ERROR_MESSAGE,
    ERROR_STAGE,
    ERROR_TYPE,
    dead_letter_reason,
    peek,
    redrive,
    without_error_headers,
)
from melange.exceptions import InvalidNameError
from melange.models import Message, QueueWrapper
from melange.policies import RetryPolicy
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
def _rabbitmq_wire(node: RabbitMQNode) -> Iterator[Wire]:
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
def _sqs_wire(moto: MotoServer) -> Iterator[Wire]:
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
def _sqlite_wire(path: Path) -> Iterator[Wire]:
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
        opened = _rabbitmq_wire(request.getfixturevalue("rabbitmq_node"))
    elif request.param == "sqs":
        opened = _sqs_wire(request.getfixturevalue("moto"))
    else:
        opened = _sqlite_wire(tmp_path / "broker.db")
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


# -- 1. every decoder is total --------------------------------------------------------------

NOT_INTEGERS = {"superscript two": "²", "two minus signs": "--5", "5,000 digits": "9" * 5000}


@pytest.mark.parametrize("value", list(NOT_INTEGERS.values()), ids=list(NOT_INTEGERS))
def test_a_serializer_id_that_is_not_an_integer_is_dead_lettered_not_raised(
    wire: Wire, value: str
) -> None:
    body = b'{"number": 3}'
    run = run_between_good_ones(wire, body, serializer=value)
    assert_dead_lettered(run, body, "decode", "serializer")


def test_sqs_headers_nested_too_deep_are_dead_lettered_not_raised(moto: MotoServer) -> None:
    body = b'{"number": 3}'
    with _sqs_wire(moto) as wire:
        run = run_between_good_ones(wire, body, headers={sqs_wire.PACKED_HEADERS: "[" * 100_000})
    assert_dead_lettered(run, body, "decode", sqs_wire.PACKED_HEADERS)


def test_sqlite_metadata_nested_too_deep_is_dead_lettered_not_raised(tmp_path: Path) -> None:
    body = b'{"number": 3}'
    with _sqlite_wire(tmp_path / "broker.db") as wire:
        run = run_between_good_ones(wire, body, headers={"": "[" * 100_000})
    assert_dead_lettered(run, body, "decode", "metadata")


# -- 2. typed events never vanish -----------------------------------------------------------


@pytest.mark.parametrize("serializer", [None, "1"], ids=["no serializer id", "the JSON id"])
def test_a_typed_event_with_the_wrong_serializer_is_read_by_its_own(
    wire: Wire, serializer: str | None
) -> None:
    # A foreign producer's JSON for a registered manifest: the pydantic serializer reads it.
    run = run_between_good_ones(wire, b'{"number": 3}', serializer=serializer)
    assert sorted(run.consumer.handled) == [1, 2, 3]
    assert run.dead_letters == []


def test_a_typed_event_no_serializer_can_read_is_dead_lettered_at_deserialize(
    wire: Wire,
) -> None:
    body = b'{"count": "three"}'
    run = run_between_good_ones(wire, body, serializer="1")
    dead = assert_dead_lettered(run, body, "deserialize", "trust.shipped")
    assert dead.metadata[ERROR_TYPE].endswith("EventTypeMismatchError")


# -- 3. a namespace melange owns ------------------------------------------------------------


def test_a_producer_set_decode_error_does_not_dead_letter_its_message(wire: Wire) -> None:
    headers = {"x-melange-decode-error": "forged", "x-melange-receives": "999"}
    run = run_between_good_ones(wire, b'{"number": 3}', headers=headers)
    assert sorted(run.consumer.handled) == [1, 2, 3]
    assert run.dead_letters == []


def test_redrive_strips_every_header_only_melange_writes() -> None:
    dead = Message(
        content="{}",
        metadata={
            ERROR_STAGE: "decode",
            ERROR_MESSAGE: "why",
            "x-melange-decode-error": "why",
            "x-melange-anything": "x",
            "x-melange-serializer": "1",
            "tenant": "t-1",
        },
    )
    assert without_error_headers(dead).metadata == {"x-melange-serializer": "1", "tenant": "t-1"}


# -- 4. headers of other producers survive ----------------------------------------------


BINARY = b"\x00\xff\xfe binary"


def test_a_binary_header_reaches_the_handler_as_bytes(wire: Wire) -> None:
    run = run_between_good_ones(wire, b'{"number": 3}', headers={"blob": BINARY, "tenant": "t"})
    assert sorted(run.consumer.handled) == [1, 2, 3]
    assert run.dead_letters == []
    assert run.consumer.headers[3]["blob"] == BINARY
    assert run.consumer.headers[3]["tenant"] == "t"


def test_a_binary_header_survives_dead_lettering_and_redrive(wire: Wire) -> None:
    backend = wire.backend
    dispatcher = MessageDispatcher(backend, consumers=[Refusing()], retry=RetryPolicy.none())
    name = unique_name("bin")
    _, dead_letter = dispatcher.declare(name, visibility_timeout=2)
    assert dead_letter is not None
    many = {f"h{n}": f"v{n}" for n in range(12)}  # more than SQS's 10 attributes: packed
    wire.send_raw(name, b'{"number": 3}', {"blob": BINARY, **many}, None, "trust.shipped")
    [dead] = _consume_until_dead_lettered(dispatcher, name, dead_letter)
    assert dead.metadata["blob"] == BINARY
    backend.release(dead)
    assert redrive(backend, name) == 1
    [back] = receive(backend, backend.get_queue(name), 1)
    assert back.metadata["blob"] == BINARY
    assert back.metadata["h11"] == "v11"
    backend.acknowledge(back)


# -- 6. SQS near-limit dead letters ---------------------------------------------------------


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


def test_a_near_limit_dead_letter_keeps_its_body_and_a_shortened_reason(
    moto: MotoServer,
) -> None:
    with LocalSQSBackend(moto.host, moto.port, region=moto.region) as backend:
        consumer = Refusing()
        dispatcher = MessageDispatcher(backend, consumers=[consumer], retry=RetryPolicy.none())
        name = unique_name("near")
        _, dead_letter = dispatcher.declare(name, visibility_timeout=2)
        assert dead_letter is not None
        body = _send_sized(
            backend, name, 262_144 - 600
        )  # the full reason does not fit, 64 chars do
        dead = _consume_until_dead_lettered(dispatcher, name, dead_letter)

    [copy] = dead
    assert copy.content == body
    assert consumer.calls == 1
    assert copy.metadata[ERROR_STAGE] == "handle"
    assert copy.metadata[ERROR_MESSAGE].startswith("refused: rrr")
    assert len(copy.metadata[ERROR_MESSAGE]) <= 64


def test_a_dead_letter_that_cannot_fit_is_moved_whole_by_the_broker_after_one_handling(
    moto: MotoServer, caplog: pytest.LogCaptureFixture
) -> None:
    with LocalSQSBackend(moto.host, moto.port, region=moto.region) as backend:
        consumer = Refusing()
        dispatcher = MessageDispatcher(backend, consumers=[consumer], retry=RetryPolicy.none())
        name = unique_name("full")
        _, dead_letter = dispatcher.declare(name, visibility_timeout=60)
        assert dead_letter is not None
        body = _send_sized(backend, name, 262_144)  # SQS's limit: no room for a single header
        with caplog.at_level("ERROR", logger="melange"):
            # Each receive hidden for 60 s: only releasing at once lets 5 receives fit in 30 s.
            dead = _consume_until_dead_lettered(dispatcher, name, dead_letter)

    [moved] = dead
    assert moved.content == body  # the original, whole, as the broker moved it
    assert consumer.calls == 1  # later receives were handed back unhandled
    assert ERROR_STAGE not in moved.metadata
    reason = dead_letter_reason(moved, max_message_size=backend.max_message_size)
    assert "size limit" in reason
    assert moved.message_id in reason
    [logged] = [r for r in caplog.records if "does not fit" in r.getMessage()]
    assert moved.message_id in logged.getMessage()
    assert "refused: rrr" in logged.getMessage()


def test_asyncio_workers_hand_back_a_dead_letter_that_cannot_fit_unhandled(
    moto: MotoServer,
) -> None:
    with LocalSQSBackend(moto.host, moto.port, region=moto.region) as sync_backend:
        backend = BridgedBackend(sync_backend)
        consumer = Refusing()
        dispatcher = AsyncMessageDispatcher(backend, [consumer], retry=RetryPolicy.none())

        async def consume() -> list[Message]:
            name = unique_name("afull")
            _, dead_letter = await dispatcher.declare(name, visibility_timeout=60)
            assert dead_letter is not None
            _send_sized(sync_backend, name, 262_144)
            dead: list[Message] = []
            deadline = time.monotonic() + 30
            while not dead and time.monotonic() < deadline:
                await dispatcher.consume_loop(name, idle_timeout=0.5)
                dead = await backend.retrieve_messages(dead_letter, max_messages=10)
            await backend.close_connection()
            return dead

        [moved] = asyncio.run(consume())

    assert consumer.calls == 1
    assert len(moved.content.encode()) > 262_000


# -- 10. dead letters keep ------------------------------------------------------------------


def test_peeking_at_rabbitmq_dead_letters_adds_no_deliveries(rabbitmq_node: RabbitMQNode) -> None:
    name = unique_name("kept")
    with RabbitMQBackend(rabbitmq_node.url) as backend:
        dispatcher = MessageDispatcher(backend, consumers=[Refusing()], retry=RetryPolicy.none())
        _, dead_letter = dispatcher.declare(name, max_receive_count=20)
        assert dead_letter is not None
        MessagePublisher(backend).publish(Shipped(number=7), queue=name)
        dispatcher.consume_loop(name, max_messages=1, idle_timeout=5)
    with RabbitMQBackend(rabbitmq_node.url) as backend:
        peeks = [peek(backend, name) for _ in range(5)]
        counts = [[m.receive_count for m in each] for each in peeks]
        ids = {m.message_id for each in peeks for m in each}
        contents = {m.content for each in peeks for m in each}
        assert backend.queue_depth(dead_letter) == 1
        assert redrive(backend, name) == 1
        [back] = receive(backend, backend.get_queue(name), 1)
        backend.acknowledge(back)
    assert counts == [[1]] * 5  # on quorum queues a get and requeue would count 1, 2, 3…
    assert len(ids) == 1
    assert contents == {'{"number":7}'}
    assert back.message_id in ids


def _retention(backend: LocalSQSBackend, queue: QueueWrapper) -> int:
    found = backend.sqs_client.get_queue_attributes(
        QueueUrl=queue.unwrap(), AttributeNames=["MessageRetentionPeriod"]
    )
    return int(found["Attributes"]["MessageRetentionPeriod"])


def test_sqs_dead_letter_queues_keep_messages_fourteen_days(moto: MotoServer) -> None:
    with LocalSQSBackend(moto.host, moto.port, region=moto.region) as backend:
        name = unique_name("keep")
        backend.sqs_client.create_queue(QueueName=f"{name}-dlq")  # an older one: SQS's 4 days
        queue, dead_letter = backend.declare_queue(name, dead_letter_queue_name=f"{name}-dlq")
        assert dead_letter is not None
        assert _retention(backend, dead_letter) == 14 * 24 * 3600
        assert _retention(backend, queue) == 4 * 24 * 3600  # the source queue is left alone
        backend.dead_letter_retention_seconds = 3600
        backend.declare_queue(name, dead_letter_queue_name=f"{name}-dlq")
        assert _retention(backend, dead_letter) == 3600


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_sqlite_files_are_created_for_their_owner_only(tmp_path: Path) -> None:
    with SQLiteBackend(tmp_path / "broker.db") as backend:
        queue, _ = backend.declare_queue("q")
        MessagePublisher(backend).publish(Shipped(number=1), queue=queue)
        modes = {f.name: _mode(f) for f in tmp_path.iterdir()}  # -wal and -shm while open
    assert set(modes) == {"broker.db", "broker.db-wal", "broker.db-shm"}
    assert set(modes.values()) == {0o600}
    with SQLiteBackend.from_url(f"sqlite:///{tmp_path}/shared.db?file_mode=640"):
        assert _mode(tmp_path / "shared.db") == 0o640
    (tmp_path / "mine.db").touch(mode=0o644)
    with SQLiteBackend(tmp_path / "mine.db"):
        assert _mode(tmp_path / "mine.db") == 0o644  # an existing file keeps its mode


@pytest.mark.parametrize(
    "command",
    [["stats", "q"], ["dlq", "peek", "q"], ["saga", "list", "OrderSaga"]],
    ids=["stats", "dlq-peek", "saga-list"],
)
def test_read_only_commands_never_create_a_file(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("MELANGE_BACKEND_URL", "MELANGE_SAGA_STORE_URL"):
        monkeypatch.delenv(name, raising=False)
    result = subprocess.run(
        [sys.executable, "-m", "melange", *command], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert "never creates" in result.stderr
    assert list(tmp_path.iterdir()) == []


# -- 7. names are checked, never folded -----------------------------------------------------

NOT_NAMES = {"empty": "", "NUL": "a\0b", "100,000 characters": "n" * 100_000}


@pytest.mark.parametrize("name", list(NOT_NAMES.values()), ids=list(NOT_NAMES))
def test_every_backend_refuses_a_name_it_cannot_take(wire: Wire, name: str) -> None:
    backend = wire.backend
    with pytest.raises(InvalidNameError) as declared:
        backend.declare_queue(name)
    assert declared.value.backend in {"rabbitmq", "aws_sqs", "melange_sqlite"}
    with pytest.raises(InvalidNameError):
        backend.declare_topic(name)
    with pytest.raises(InvalidNameError):
        backend.get_queue(name)
    with pytest.raises(InvalidNameError):
        backend.declare_queue(unique_name("ok"), dead_letter_queue_name=name)


def test_the_memory_backend_checks_names_too() -> None:
    backend = InMemoryMessagingBackend()
    for name in NOT_NAMES.values():
        with pytest.raises(InvalidNameError, match="melange_memory"):
            backend.declare_queue(name)
    assert backend.declare_queue("n" * 255)[0].unwrap() == "n" * 255


def test_rabbitmq_counts_bytes_and_keeps_amq_for_itself(rabbitmq_node: RabbitMQNode) -> None:
    with RabbitMQBackend(rabbitmq_node.url) as backend:
        with pytest.raises(InvalidNameError, match="255 bytes"):
            backend.declare_queue("é" * 128)  # 128 characters, 256 bytes
        with pytest.raises(InvalidNameError, match="amq"):
            backend.declare_topic("amq.mine")
        queue, _ = backend.declare_queue("é" * 127)
        assert queue.unwrap() == "é" * 127


def test_sqs_refuses_what_it_would_fold_and_suggests_a_spelling(moto: MotoServer) -> None:
    with LocalSQSBackend(moto.host, moto.port, region=moto.region) as backend:
        with pytest.raises(InvalidNameError) as spaced:
            backend.declare_queue("orders created")
        assert spaced.value.suggestion == "orders-created"
        with pytest.raises(InvalidNameError, match="80 characters"):
            backend.declare_queue("q" * 81)
        with pytest.raises(InvalidNameError, match="-dlq"):  # 77 + "-dlq" is 81
            backend.declare_queue("q" * 77, dead_letter_queue_name="q" * 77 + "-dlq")
        backend.declare_queue("q" * 76, dead_letter_queue_name="q" * 76 + "-dlq")
        long_topic = backend.declare_topic("t" * 256)  # SNS takes 256
        assert long_topic.unwrap().endswith("t" * 256)
        with pytest.raises(InvalidNameError, match="256"):
            backend.declare_topic("t" * 257)


def test_two_services_whose_names_fold_together_cannot_share_a_queue(moto: MotoServer) -> None:
    base = unique_name("orders").replace("-", "")
    with LocalSQSBackend(moto.host, moto.port, region=moto.region) as first:
        queue, _ = first.declare_queue(f"{base}.created")
        topic = first.declare_topic(f"{base}.events")
    with LocalSQSBackend(moto.host, moto.port, region=moto.region) as other:
        with pytest.raises(InvalidNameError) as shared:
            other.declare_queue(f"{base}_created")
        assert f"{base}.created" in str(shared.value)
        with pytest.raises(InvalidNameError):
            other.get_queue(f"{base}_created")
        with pytest.raises(InvalidNameError):
            other.declare_topic(f"{base}_events")
        again, _ = other.declare_queue(f"{base}.created")  # the same name keeps working
        assert again == queue
        assert other.declare_topic(f"{base}.events") == topic
