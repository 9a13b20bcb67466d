"""melange's pytest plugin, loaded through the ``pytest11`` entry point.

Fixtures: ``melange_backend`` (a fresh in-memory backend),
``melange_sqlite_backend`` (the embedded broker in a throwaway file),
``melange_recorder`` (a ``PublishRecorder``) and ``melange_publisher`` (a
``MessagePublisher`` on ``melange_backend`` that records into
``melange_recorder``). Each is closed after its test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.sqlite import SQLiteBackend
from melange.middleware.recording import PublishRecorder
from melange.publishers import MessagePublisher

__all__ = [
    "melange_backend",
    "melange_publisher",
    "melange_recorder",
    "melange_sqlite_backend",
]


@pytest.fixture
def melange_backend() -> Iterator[InMemoryMessagingBackend]:
    """A fresh in-memory backend: SQS semantics, no server."""
    with InMemoryMessagingBackend() as backend:
        yield backend


@pytest.fixture
def melange_sqlite_backend(tmp_path: Path) -> Iterator[SQLiteBackend]:
    """The embedded SQLite broker in a file of the test's own temporary folder."""
    with SQLiteBackend(tmp_path / "melange.db") as backend:
        yield backend


@pytest.fixture
def melange_recorder() -> PublishRecorder:
    """A recorder of what a publisher sent; give it to ``MessagePublisher(middleware=...)``."""
    return PublishRecorder()


@pytest.fixture
def melange_publisher(
    melange_backend: InMemoryMessagingBackend, melange_recorder: PublishRecorder
) -> MessagePublisher:
    """A publisher on ``melange_backend`` whose sends ``melange_recorder`` records."""
    return MessagePublisher(melange_backend, middleware=[melange_recorder])
