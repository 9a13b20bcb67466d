"""What the outbox failure tests share: databases, brokers, the worker processes, draining.

The fixtures here are imported by the test modules that use them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from melange.backends import from_url
from melange.backends.interfaces import MessagingBackend
from melange.models import Message, QueueWrapper
from melange.testing import receive, unique_name
from tests.inbox_workers import connect

ROOT = Path(__file__).resolve().parent.parent
TOPIC = "outbox_order_placed"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'service.db'}"
    return str(request.getfixturevalue("postgres_database"))


@pytest.fixture(params=["rabbitmq", "sqs"])
def broker_url(request: pytest.FixtureRequest) -> str:
    if request.param == "rabbitmq":
        return str(request.getfixturevalue("rabbitmq_node").url)
    return str(request.getfixturevalue("moto").url)


@pytest.fixture
def broker(broker_url: str) -> Iterator[MessagingBackend]:
    with from_url(broker_url) as backend:
        yield backend


def subscribed(backend: MessagingBackend) -> QueueWrapper:
    queue, _ = backend.declare_queue(unique_name("orders"), backend.declare_topic(TOPIC))
    return queue


def worker(*arguments: str) -> int:
    done = subprocess.run(
        [sys.executable, "-m", "tests.outbox_workers", *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode not in (0, -9):
        pytest.fail(done.stderr[-3000:])
    return done.returncode


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    db = connect(url)
    try:
        return list(db.execute(sql).fetchall())
    finally:
        db.close()


def drained(
    backend: MessagingBackend, queue: QueueWrapper, expected: int, timeout: float = 120
) -> list[Message]:
    """Receive and acknowledge until ``expected`` came (a broker holds back unacked ones)."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        batch = backend.retrieve_messages(queue, max_messages=10, wait_seconds=1.0)
        if batch:
            backend.acknowledge_batch(batch)
            got.extend(batch)
    got.extend(receive(backend, queue, 1, timeout=0.5))  # and nothing more
    return got


def order_of(message: Message) -> str:
    return str(json.loads(message.content)["order_id"])
