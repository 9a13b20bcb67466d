from __future__ import annotations

import multiprocessing
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from melange.backends.sqlite import SQLiteBackend
from melange.exceptions import IdempotencyError
from melange.idempotency import (
    IdempotencyStore,
    InMemoryIdempotencyStore,
    SQLiteIdempotencyStore,
)
from melange.idempotency.base import Claim
from melange.models import Message
from melange.testing import IdempotencyStoreContract, StoreFactory


class TestInMemoryIdempotencyStore(IdempotencyStoreContract):
    shared_by_workers = False

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


KEYS = 200


def _claim_in_process(path: str, start: Any, results: Any) -> None:
    store = SQLiteIdempotencyStore(path)
    start.wait()
    results.put([n for n in range(KEYS) if store.claim("billing", f"m-{n}")])
    store.close()


def test_sqlite_claims_are_exclusive_across_processes(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start = context.Event()
    path = str(tmp_path / "claims.db")
    SQLiteIdempotencyStore(path).close()  # create the schema once
    workers = [
        context.Process(target=_claim_in_process, args=(path, start, results)) for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    start.set()
    won = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    # Every key was won exactly once, whichever process won it.
    assert sorted(n for wins in won for n in wins) == list(range(KEYS))


def test_sqlite_store_shares_the_brokers_file(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with SQLiteBackend(path) as backend:
        queue, _ = backend.declare_queue("q")
        store = SQLiteIdempotencyStore(path)
        assert store.claim("billing", "m-1")
        backend.publish_to_queue(Message(content="x"), queue)
        assert backend.queue_depth(queue) == 1
        other = SQLiteIdempotencyStore(path)
        assert other.claim("billing", "m-1") is Claim.IN_PROGRESS
        store.close()
        other.close()
        assert backend.integrity_check() == "ok"


def test_sqlite_store_in_a_missing_folder_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(IdempotencyError, match="does not exist"):
        SQLiteIdempotencyStore(tmp_path / "missing" / "claims.db")


def test_sqlite_store_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"not a database\n" * 100)
    with pytest.raises(IdempotencyError, match="not a database"):
        SQLiteIdempotencyStore(path)
    assert path.read_bytes() == b"not a database\n" * 100


def test_a_closed_sqlite_store_raises_a_typed_error(tmp_path: Path) -> None:
    store = SQLiteIdempotencyStore(tmp_path / "claims.db")
    store.close()
    with pytest.raises(IdempotencyError, match="closed"):
        store.claim("billing", "m-1")


def test_expired_sqlite_claims_are_swept(tmp_path: Path) -> None:
    store = SQLiteIdempotencyStore(tmp_path / "claims.db", lease_seconds=0.001)
    for n in range(1000):
        store.claim("c", str(n))
    db = sqlite3.connect(tmp_path / "claims.db")
    try:
        [(left,)] = db.execute("SELECT count(*) FROM melange_idempotency_claims").fetchall()
    finally:
        db.close()
    store.close()
    assert left < 1000


def test_expired_claims_are_swept() -> None:
    store = InMemoryIdempotencyStore(ttl_seconds=0.001, lease_seconds=0.001)
    for n in range(5000):
        store.claim("c", str(n))
        store.complete("c", str(n))
    assert len(store._entries) < 5000


def test_ttl_and_lease_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        InMemoryIdempotencyStore(ttl_seconds=0)


def test_a_sqlite_url_with_three_slashes_names_a_file_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from melange.idempotency import store_from_url

    monkeypatch.chdir(tmp_path)
    store = store_from_url("sqlite:///claims.db?lease_seconds=5")
    store.close()
    assert (tmp_path / "claims.db").is_file()
    absolute = store_from_url(f"sqlite:///{tmp_path}/abs.db")
    absolute.close()
    assert (tmp_path / "abs.db").is_file()
