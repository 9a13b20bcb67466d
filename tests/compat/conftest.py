"""Melange 7.3's suite restated in our words, importing melange only from melange.compat.

Melange 7's suite mocked the backend with spies; these run on real ones:
melange.compat's in-memory backend, moto's SNS/SQS server and a redis-server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from melange.compat import LocalSQSBackend
from tests.servers.moto import MotoServer


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every melange.compat name warns that it is deprecated; test_layer checks the warning.
    for item in items:
        if "tests/compat/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.filterwarnings("ignore:melange.compat:DeprecationWarning"))


@pytest.fixture
def backend(moto: MotoServer) -> Iterator[LocalSQSBackend]:
    """Melange 7's test backend: receives wait 1 s, visibility 10 s."""
    sqs = LocalSQSBackend(
        host=f"http://{moto.host}", port=moto.port, wait_time_seconds=1, visibility_timeout=10
    )
    yield sqs
    sqs.close_connection()


@pytest.fixture
def moto_backend_fast(moto: MotoServer) -> Iterator[LocalSQSBackend]:
    """A backend whose receives hide messages 1 s only: redeliveries come soon."""
    sqs = LocalSQSBackend(
        host=f"http://{moto.host}", port=moto.port, wait_time_seconds=1, visibility_timeout=1
    )
    yield sqs
    sqs.close_connection()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
