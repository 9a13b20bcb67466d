"""Idempotency stores: a redelivered message runs each consumer once."""

from melange.idempotency.base import IdempotencyStore
from melange.idempotency.memory import InMemoryIdempotencyStore
from melange.idempotency.sqlite import SQLiteIdempotencyStore

__all__ = ["IdempotencyStore", "InMemoryIdempotencyStore", "SQLiteIdempotencyStore"]
