from __future__ import annotations

import multiprocessing
import time
import uuid
from collections.abc import Iterator
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


@pytest.mark.redis
class TestRedisIdempotencyStore(IdempotencyStoreContract):
    @pytest.fixture
    def make_store(self, redis_url: str) -> Iterator[StoreFactory]:
        from melange.idempotency.redis import RedisIdempotencyStore

        stores: list[IdempotencyStore] = []
        prefix = f"test:{uuid.uuid4().hex}:"

        def make(**options: Any) -> IdempotencyStore:
            stores.append(RedisIdempotencyStore(redis_url, prefix=prefix, **options))
            return stores[-1]

        yield make
        for store in stores:
            store.close()


@pytest.mark.redis
def test_redis_store_down_is_an_error_not_a_silent_pass() -> None:
    from melange.idempotency.redis import RedisIdempotencyStore
    from tests.support import free_port

    store = RedisIdempotencyStore(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(IdempotencyError, match="redis"):
        store.claim("billing", "m-1")
    store.close()


@pytest.mark.redis
def test_a_stale_worker_cannot_release_a_newer_claim(redis_url: str) -> None:
    from melange.idempotency.redis import RedisIdempotencyStore

    prefix = f"test:{uuid.uuid4().hex}:"
    slow = RedisIdempotencyStore(redis_url, prefix=prefix, lease_seconds=0.2)
    fast = RedisIdempotencyStore(redis_url, prefix=prefix)
    assert slow.claim("billing", "m-1")
    time.sleep(0.4)  # the slow worker's lease expired
    assert fast.claim("billing", "m-1")
    slow.release("billing", "m-1")  # must not drop the fast worker's claim
    assert not fast.claim("billing", "m-1")
    slow.close()
    fast.close()


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
