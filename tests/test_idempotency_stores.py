from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import pytest

from melange.exceptions import IdempotencyError
from melange.idempotency import (
    IdempotencyStore,
    InMemoryIdempotencyStore,
    SQLiteIdempotencyStore,
)
from tests.idempotency_contract import IdempotencyStoreContract, StoreFactory


class TestInMemoryIdempotencyStore(IdempotencyStoreContract):
    @pytest.fixture
    def make_store(self) -> StoreFactory:
        def make(**options: Any) -> IdempotencyStore:
            return InMemoryIdempotencyStore(**options)

        return make


class TestSQLiteIdempotencyStore(IdempotencyStoreContract):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StoreFactory:
        def make(**options: Any) -> IdempotencyStore:
            return SQLiteIdempotencyStore(tmp_path / "claims.db", **options)

        return make


def _claim_in_process(path: str, results: Any) -> None:
    store = SQLiteIdempotencyStore(path)
    results.put(store.claim("billing", "race"))
    store.close()


def test_sqlite_claims_are_exclusive_across_processes(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    path = str(tmp_path / "claims.db")
    SQLiteIdempotencyStore(path).close()  # create the schema once
    workers = [context.Process(target=_claim_in_process, args=(path, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(results.get(timeout=5) for _ in workers) == [False, False, False, True]


def test_sqlite_store_in_a_missing_folder_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(IdempotencyError):
        SQLiteIdempotencyStore(tmp_path / "missing" / "claims.db")


def test_expired_claims_are_swept() -> None:
    store = InMemoryIdempotencyStore(ttl_seconds=0.001, lease_seconds=0.001)
    for n in range(5000):
        store.claim("c", str(n))
        store.complete("c", str(n))
    assert len(store._expiry) < 5000


def test_ttl_and_lease_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        InMemoryIdempotencyStore(ttl_seconds=0)
