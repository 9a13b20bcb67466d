"""Sagas: business processes across services, durable and exactly-once in effect.

``Saga[State]`` is a consumer whose state is loaded before and saved after
each event, with what the handler sends stored in the same write (a saga
outbox). Stores: ``InMemorySagaStore``, ``SQLiteSagaStore``. See docs/sagas.md.
"""

from melange.saga._memory import InMemorySagaStore
from melange.saga._records import PendingMessage, SagaRecord, SagaStatus, Step
from melange.saga._saga import SAGA_TIMEOUT, NotFound, Saga, starts
from melange.saga._signals import (
    saga_finished,
    saga_message_ignored,
    saga_not_found,
    saga_started,
)
from melange.saga._sqlite import SQLiteSagaStore
from melange.saga._store import SagaStore

__all__ = [
    "SAGA_TIMEOUT",
    "InMemorySagaStore",
    "NotFound",
    "PendingMessage",
    "SQLiteSagaStore",
    "Saga",
    "SagaRecord",
    "SagaStatus",
    "SagaStore",
    "Step",
    "saga_finished",
    "saga_message_ignored",
    "saga_not_found",
    "saga_started",
    "starts",
]
