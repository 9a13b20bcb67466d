"""Idempotency stores: a redelivered message runs each consumer once."""

from melange.idempotency.base import IdempotencyStore
from melange.idempotency.memory import InMemoryIdempotencyStore

__all__ = ["IdempotencyStore", "InMemoryIdempotencyStore"]
