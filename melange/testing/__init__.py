"""Tools for testing code that uses melange, and for proving a backend or store.

No pytest needed for these: ``link_synchronously`` (consumers run inside
``publish``), ``PublishRecorder`` (what a publisher sent), and the waiting
helpers. With pytest (``pip install 'melange[testing]'``): the contracts
``BackendContract``, ``IdempotencyStoreContract``, ``SagaStoreContract`` and
``DispatcherContract``,
base classes a backend's or store's tests subclass with a fixture that
builds it. The pytest plugin (``melange.testing.plugin``, loaded
automatically) adds the fixtures ``melange_backend``,
``melange_sqlite_backend``, ``melange_recorder`` and ``melange_publisher``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from melange._lazy import lazy_names
from melange.middleware.recording import PublishRecorder, RecordedPublish
from melange.testing._contract_workers import ContractEvent
from melange.testing._linking import link_synchronously
from melange.testing._waiting import drain, receive, unique_name, wait_until

if TYPE_CHECKING:
    from melange.testing._async_backend_contract import AsyncBackendContract
    from melange.testing._async_memory import AsyncInMemoryBackend
    from melange.testing._backend_contract import BackendContract
    from melange.testing._dispatcher_contract import (
        DispatcherContract,
        Inject,
        RestartableStore,
    )
    from melange.testing._saga_store_contract import SagaStoreContract, SagaStoreFactory
    from melange.testing._store_contract import IdempotencyStoreContract, StoreFactory

__all__ = [
    "AsyncBackendContract",
    "AsyncInMemoryBackend",
    "BackendContract",
    "ContractEvent",
    "DispatcherContract",
    "IdempotencyStoreContract",
    "Inject",
    "PublishRecorder",
    "RecordedPublish",
    "RestartableStore",
    "SagaStoreContract",
    "SagaStoreFactory",
    "StoreFactory",
    "drain",
    "link_synchronously",
    "receive",
    "unique_name",
    "wait_until",
]

# The contracts import pytest, the async backend melange.aio: load them on first use only.
_CONTRACTS = {
    "AsyncInMemoryBackend": "melange.testing._async_memory",
    "AsyncBackendContract": "melange.testing._async_backend_contract",
    "BackendContract": "melange.testing._backend_contract",
    "DispatcherContract": "melange.testing._dispatcher_contract",
    "Inject": "melange.testing._dispatcher_contract",
    "RestartableStore": "melange.testing._dispatcher_contract",
    "IdempotencyStoreContract": "melange.testing._store_contract",
    "StoreFactory": "melange.testing._store_contract",
    "SagaStoreContract": "melange.testing._saga_store_contract",
    "SagaStoreFactory": "melange.testing._saga_store_contract",
}


__getattr__, __dir__ = lazy_names(__name__, globals(), _CONTRACTS, extra=("pytest", "testing"))
