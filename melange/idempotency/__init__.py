"""Idempotency stores: a redelivered message runs each consumer once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from melange.idempotency.base import IdempotencyStore
from melange.idempotency.memory import InMemoryIdempotencyStore
from melange.idempotency.sqlite import SQLiteIdempotencyStore

if TYPE_CHECKING:
    from melange.idempotency.redis import RedisIdempotencyStore

__all__ = [
    "IdempotencyStore",
    "InMemoryIdempotencyStore",
    "RedisIdempotencyStore",
    "SQLiteIdempotencyStore",
]


def __getattr__(name: str) -> Any:
    # The redis driver is an extra: load it only when the store is asked for.
    if name == "RedisIdempotencyStore":
        from melange.idempotency.redis import RedisIdempotencyStore

        return RedisIdempotencyStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
