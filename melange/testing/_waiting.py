"""Small helpers the contracts (and users' tests) wait and name things with."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from melange.backends.interfaces import MessagingBackend
from melange.models import Message, QueueWrapper

__all__ = ["drain", "receive", "unique_name", "wait_until"]


def unique_name(prefix: str) -> str:
    """Return ``prefix`` and ten random hex digits: a queue or topic no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def receive(
    backend: MessagingBackend,
    queue: QueueWrapper,
    expected: int,
    timeout: float = 10.0,
) -> list[Message]:
    """Receive (without acknowledging) until ``expected`` messages arrived or ``timeout`` passed."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        remaining = max(0.0, deadline - time.monotonic())
        got.extend(
            backend.retrieve_messages(queue, max_messages=10, wait_seconds=min(1.0, remaining))
        )
    return got


def drain(backend: MessagingBackend, queue_name: str) -> list[Message]:
    """Return (and acknowledge) every message now in the queue."""
    queue = backend.get_queue(queue_name)
    found: list[Message] = []
    while batch := backend.retrieve_messages(queue, max_messages=10, wait_seconds=0.5):
        found.extend(batch)
        backend.acknowledge_batch(batch)
    return found


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` every 50 ms until it holds or ``timeout`` ends; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()
