"""An idempotency store in this process's memory."""

from __future__ import annotations

import threading
import time

from melange.idempotency.base import Claim, IdempotencyStore

__all__ = ["InMemoryIdempotencyStore"]


class InMemoryIdempotencyStore(IdempotencyStore):
    """Thread-safe claims held in a dict; expired ones are swept as it grows."""

    def __init__(self, *, ttl_seconds: float = 86_400.0, lease_seconds: float = 10.0) -> None:
        super().__init__(ttl_seconds=ttl_seconds, lease_seconds=lease_seconds)
        self._lock = threading.Lock()
        # key -> (expires at, done); claims in progress belong to this process.
        self._entries: dict[str, tuple[float, bool]] = {}
        self._sweep_at = 1024

    def claim(self, consumer_id: str, message_id: str, lease_seconds: float | None = None) -> Claim:
        key = self.key(consumer_id, message_id)
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > now:
                return Claim.DONE if entry[1] else Claim.IN_PROGRESS
            self._entries[key] = (now + (lease_seconds or self.lease_seconds), False)
            if len(self._entries) >= self._sweep_at:
                self._sweep(now)
            return Claim.ACQUIRED

    def renew(self, consumer_id: str, message_id: str, lease_seconds: float) -> None:
        key = self.key(consumer_id, message_id)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and not entry[1]:
                self._entries[key] = (time.monotonic() + lease_seconds, False)

    def complete(self, consumer_id: str, message_id: str) -> None:
        with self._lock:
            self._entries[self.key(consumer_id, message_id)] = (
                time.monotonic() + self.ttl_seconds,
                True,
            )

    def release(self, consumer_id: str, message_id: str) -> None:
        key = self.key(consumer_id, message_id)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and not entry[1]:
                del self._entries[key]

    def __len__(self) -> int:
        now = time.monotonic()
        with self._lock:
            return sum(1 for expires, _ in self._entries.values() if expires > now)

    def _sweep(self, now: float) -> None:
        self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
        self._sweep_at = max(1024, 2 * len(self._entries))
