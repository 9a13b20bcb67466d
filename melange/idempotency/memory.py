"""An idempotency store in this process's memory."""

from __future__ import annotations

import threading
import time

from melange.idempotency.base import IdempotencyStore

__all__ = ["InMemoryIdempotencyStore"]


class InMemoryIdempotencyStore(IdempotencyStore):
    """Thread-safe claims held in a dict; expired ones are swept as it grows."""

    def __init__(self, *, ttl_seconds: float = 86_400.0, lease_seconds: float = 300.0) -> None:
        super().__init__(ttl_seconds=ttl_seconds, lease_seconds=lease_seconds)
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}
        self._sweep_at = 1024

    def claim(self, consumer_id: str, message_id: str) -> bool:
        key = self.key(consumer_id, message_id)
        now = time.monotonic()
        with self._lock:
            expires = self._expiry.get(key)
            if expires is not None and expires > now:
                return False
            self._expiry[key] = now + self.lease_seconds
            if len(self._expiry) >= self._sweep_at:
                self._sweep(now)
            return True

    def complete(self, consumer_id: str, message_id: str) -> None:
        with self._lock:
            self._expiry[self.key(consumer_id, message_id)] = time.monotonic() + self.ttl_seconds

    def release(self, consumer_id: str, message_id: str) -> None:
        with self._lock:
            self._expiry.pop(self.key(consumer_id, message_id), None)

    def __len__(self) -> int:
        now = time.monotonic()
        with self._lock:
            return sum(1 for expires in self._expiry.values() if expires > now)

    def _sweep(self, now: float) -> None:
        self._expiry = {k: v for k, v in self._expiry.items() if v > now}
        self._sweep_at = max(1024, 2 * len(self._expiry))
