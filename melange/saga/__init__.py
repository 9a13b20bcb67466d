"""Sagas: business processes across services, durable and exactly-once in effect.

``Saga[State]`` is a consumer whose state is loaded before and saved after
each event, with what the handler sends stored in the same write (a saga
outbox). Stores: ``InMemorySagaStore``, ``SQLiteSagaStore``, ``PostgresSagaStore``
(extra ``melange[postgres]``, loaded on first use); ``saga_store_from_url``
builds one. See docs/sagas.md.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from melange._lazy import lazy_names
from melange.outgoing import Outgoing
from melange.saga._memory import InMemorySagaStore
from melange.saga._records import SagaRecord, SagaStatus, Step
from melange.saga._runner import SagaRunner
from melange.saga._saga import REPLY_TO, RESERVED_NAMES, SAGA_TIMEOUT, NotFound, Saga, starts
from melange.saga._signals import (
    saga_finished,
    saga_message_ignored,
    saga_not_found,
    saga_started,
)
from melange.saga._sqlite import SQLiteSagaStore
from melange.saga._store import SagaStore
from melange.saga._urls import DEFAULT_SAGA_STORE_URL, default_saga_store_url, saga_store_from_url

if TYPE_CHECKING:
    from melange.saga._postgres import PostgresSagaStore

__all__ = [
    "DEFAULT_SAGA_STORE_URL",
    "REPLY_TO",
    "RESERVED_NAMES",
    "SAGA_TIMEOUT",
    "InMemorySagaStore",
    "NotFound",
    "PostgresSagaStore",
    "SQLiteSagaStore",
    "Saga",
    "SagaRecord",
    "SagaRunner",
    "SagaStatus",
    "SagaStore",
    "Step",
    "default_saga_store_url",
    "saga_finished",
    "saga_message_ignored",
    "saga_not_found",
    "saga_started",
    "saga_store_from_url",
    "starts",
]

# This module imports psycopg at the top: load it on first use only.
_LAZY = {"PostgresSagaStore": "melange.saga._postgres"}


_lazy_getattr, __dir__ = lazy_names(__name__, globals(), _LAZY)


def __getattr__(name: str) -> Any:
    if name == "PendingMessage":
        warnings.warn(
            "melange.saga.PendingMessage is deprecated: a saga's outgoing message is a"
            " melange.outgoing.Outgoing (keyword arguments: message=, destination=, delay=,"
            " due_at=)",
            DeprecationWarning,
            stacklevel=2,
        )
        return Outgoing
    return _lazy_getattr(name)
