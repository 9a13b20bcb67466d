"""Dead letters keep (#17 item 10).

RabbitMQ peeks add no deliveries, SQS dead-letter queues keep 14 days,
SQLite files are 0600 and read-only commands never create one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from melange import MessageDispatcher, MessagePublisher
from melange.backends.rabbitmq import RabbitMQBackend
from melange.backends.sqlite import SQLiteBackend
from melange.backends.sqs import LocalSQSBackend
from melange.dead_letters import (
    peek,
    redrive,
)
from melange.models import QueueWrapper
from melange.policies import RetryPolicy
from melange.testing import receive, unique_name
from tests.servers.moto import MotoServer
from tests.servers.rabbitmq import RabbitMQNode
from tests.wire import (
    Refusing,
    Shipped,
)

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
