"""The dispatcher-on-backend contract, run on memory, SQLite, real RabbitMQ and moto's SNS/SQS."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from melange import Message, MessagePublisher
from melange.aio import AsyncMessagingBackend
from melange.backends.decoding import text_of
from melange.backends.interfaces import MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.sqlite import SQLiteBackend
from melange.idempotency.redis import RedisIdempotencyStore
from melange.testing import (
    AsyncInMemoryBackend,
    ContractEvent,
    DispatcherContract,
    Inject,
    RestartableStore,
    unique_name,
)
from tests.servers.redis import RedisServer

pytestmark = pytest.mark.slow


class RedisOutage:
    """A ``RestartableStore``: this test's own redis-server."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server

    def store(self, namespace: str) -> RedisIdempotencyStore:
        return RedisIdempotencyStore(self.server.url, prefix=f"{namespace}:")

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()


class OnOurStores(DispatcherContract):
    """The contract with the stores melange ships: SQLite and a real Redis."""

    @pytest.fixture
    def restartable_store(self, restartable_redis: RedisServer) -> RestartableStore:
        return RedisOutage(restartable_redis)

    @pytest.fixture(params=["sqlite", "redis"])
    def worker_store_url(self, request: pytest.FixtureRequest, tmp_path: Path) -> str:
        if request.param == "sqlite":
            return f"sqlite:///{tmp_path / 'claims.db'}"
        redis_url = request.getfixturevalue("redis_url")
        return f"{redis_url}?prefix={unique_name('claims')}:"


class TestOnMemory(OnOurStores):
    visibility_timeout = 0.5

    @pytest.fixture
    def backend(self) -> Iterator[MessagingBackend]:
        with InMemoryMessagingBackend() as backend:
            yield backend

    @pytest.fixture
    def backend_url(self) -> None:
        return None

    @pytest.fixture
    def inject_undecodable(self, backend: MessagingBackend) -> Inject:
        def inject(queue: str) -> str:
            content = '{"number": 99}'
            # Written by a producer whose serializer this service does not have.
            foreign = Message(content=content, manifest="ContractEvent", serializer_id=4242)
            backend.publish_to_queue(foreign, backend.get_queue(queue))
            return content

        return inject


@pytest.mark.sqlite
class TestOnSQLite(OnOurStores):
    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        return tmp_path / "broker.db"

    @pytest.fixture
    def backend(self, path: Path) -> Iterator[MessagingBackend]:
        with SQLiteBackend(path) as backend:
            yield backend

    @pytest.fixture
    def backend_url(self, path: Path) -> str:
        return f"sqlite:///{path}"

    @pytest.fixture
    def inject_undecodable(self, backend: MessagingBackend, path: Path) -> Inject:
        def inject(queue: str) -> str:
            sent = MessagePublisher(backend).publish(ContractEvent(number=99), queue=queue)
            raw = b'{"number": 99, "note": "caf\xe9"}'  # Latin-1, not UTF-8
            db = sqlite3.connect(path)
            try:
                with db:
                    db.execute(
                        "UPDATE melange_bodies SET content = CAST(? AS TEXT) WHERE message_id = ?",
                        (raw, sent.message_id),
                    )
            finally:
                db.close()
            return text_of(raw)[0]

        return inject


@pytest.mark.rabbitmq
class TestOnRabbitMQ(OnOurStores):
    @pytest.fixture
    def backend(self, rabbitmq_node: object) -> Iterator[MessagingBackend]:
        from melange.backends.rabbitmq import RabbitMQBackend

        with RabbitMQBackend(rabbitmq_node.url) as backend:  # type: ignore[attr-defined]
            yield backend

    @pytest.fixture
    def backend_url(self, rabbitmq_node: object) -> str:
        return str(rabbitmq_node.url)  # type: ignore[attr-defined]

    @pytest.fixture
    def inject_undecodable(self, rabbitmq_node: object) -> Inject:
        import pika

        def inject(queue: str) -> str:
            body = b'{"number": 99}'
            connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_node.url))  # type: ignore[attr-defined]
            try:
                channel = connection.channel()
                channel.basic_publish(
                    "",
                    queue,
                    body,
                    pika.BasicProperties(
                        message_id="foreign-1",
                        type="ContractEvent",
                        delivery_mode=2,
                        headers={"x-melange-serializer": "json-please"},
                    ),
                )
            finally:
                connection.close()
            return body.decode()

        return inject


@pytest.mark.sqs
class TestOnSQS(OnOurStores):
    visibility_timeout = 1.0  # SQS takes whole seconds

    @pytest.fixture
    def backend(self, moto: object) -> Iterator[MessagingBackend]:
        from melange.backends.sqs import LocalSQSBackend

        with LocalSQSBackend(moto.host, moto.port, region=moto.region) as backend:  # type: ignore[attr-defined]
            yield backend

    @pytest.fixture
    def backend_url(self, moto: object) -> str:
        return str(moto.url)  # type: ignore[attr-defined]

    @pytest.fixture
    def inject_undecodable(self, backend: MessagingBackend) -> Inject:
        def inject(queue: str) -> str:
            body = '{"number": 99}'
            backend.sqs_client.send_message(  # type: ignore[attr-defined]
                QueueUrl=backend.get_queue(queue).unwrap(),
                MessageBody=body,
                MessageAttributes={
                    "melange.serializer_id": {"DataType": "String", "StringValue": "json"},
                    "melange.manifest": {"DataType": "String", "StringValue": "ContractEvent"},
                },
            )
            return body

        return inject


# -- the same scenarios under melange.aio's consume loop ------------------------------------


class TestOnMemoryAsyncio(TestOnMemory):
    loop = "asyncio"


class TestOnMemoryNativeAsync(TestOnMemory):
    """The asyncio loop on a native async backend: no bridge, no backend threads."""

    loop = "asyncio"

    def async_backend(self, backend: MessagingBackend) -> AsyncMessagingBackend:
        assert isinstance(backend, InMemoryMessagingBackend)
        return AsyncInMemoryBackend(backend)


@pytest.mark.sqlite
class TestOnSQLiteAsyncio(TestOnSQLite):
    loop = "asyncio"


@pytest.mark.rabbitmq
class TestOnRabbitMQAsyncio(TestOnRabbitMQ):
    loop = "asyncio"


@pytest.mark.sqs
class TestOnSQSAsyncio(TestOnSQS):
    loop = "asyncio"
