"""The saga store contract on every store melange ships."""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from melange.backends.sqlite import SQLiteBackend
from melange.exceptions import SagaStoreError
from melange.saga import (
    InMemorySagaStore,
    PostgresSagaStore,
    SagaRecord,
    SagaStore,
    SQLiteSagaStore,
)
from melange.testing import SagaStoreContract, SagaStoreFactory
from tests.servers.postgres import PostgresServer
from tests.support import free_port


class TestInMemory(SagaStoreContract):
    @pytest.fixture
    def make_store(self) -> SagaStoreFactory:
        store = InMemorySagaStore()
        return lambda: store


class TestSQLite(SagaStoreContract):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> Iterator[SagaStoreFactory]:
        made: list[SagaStore] = []

        def make() -> SagaStore:
            made.append(SQLiteSagaStore(tmp_path / "sagas.db"))
            return made[-1]

        yield make
        for store in made:
            store.close()


def test_the_sqlite_store_shares_the_brokers_file_with_tables_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with SQLiteBackend(path) as backend:
        queue, _ = backend.declare_queue("orders")
        with SQLiteSagaStore(path) as store:
            assert store.instances("Orders") == []
        assert backend.integrity_check() == "ok"
        assert backend.retrieve_messages(queue) == []


def test_a_sqlite_store_in_a_missing_folder_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(SagaStoreError, match="does not exist"):
        SQLiteSagaStore(tmp_path / "missing" / "sagas.db")


@pytest.mark.postgres
class TestPostgres(SagaStoreContract):
    @pytest.fixture
    def make_store(self, postgres_database: str) -> Iterator[SagaStoreFactory]:
        made: list[SagaStore] = []

        def make() -> SagaStore:
            made.append(PostgresSagaStore(postgres_database))
            return made[-1]

        yield make
        for store in made:
            store.close()


def saga(key: str = "o-1") -> SagaRecord:
    now = time.time()
    return SagaRecord("Orders", uuid.uuid4().hex, key, '{"step": 1}', version=1, created_at=now)


@pytest.mark.postgres
def test_a_postgres_store_reconnects_after_the_server_restarts() -> None:
    server = PostgresServer()
    try:
        server.start()
        with PostgresSagaStore(server.url) as store:
            created = saga()
            store.create(created)
            server.stop()
            server.start()
            # The call that finds its connection gone fails (it is not retried:
            # a write may have reached the server), and drops it...
            with pytest.raises(SagaStoreError, match="terminating connection"):
                store.load("Orders", created.saga_id)
            # ...so the next call opens a new one.
            assert store.load("Orders", created.saga_id) == created
            server.stop()
            with pytest.raises(SagaStoreError):  # no server: a typed error, every call
                store.save(created.with_changes(version=2))
            with pytest.raises(SagaStoreError):
                store.load("Orders", created.saga_id)
            server.start()
            store.save(created.with_changes(version=2))
            assert store.find("Orders", created.key) == created.with_changes(version=2)
    finally:
        server.remove()


def _use_in_child(store: PostgresSagaStore, parents: SagaRecord, childs: SagaRecord) -> None:
    assert store.load("Orders", parents.saga_id) == parents
    store.create(childs)
    store.close()  # closes the child's connection only


@pytest.mark.postgres
def test_a_postgres_store_works_in_a_forked_child_and_still_in_the_parent(
    postgres_database: str,
) -> None:
    with PostgresSagaStore(postgres_database) as store:
        parents, childs = saga("o-parent"), saga("o-child")
        store.create(parents)
        child = multiprocessing.get_context("fork").Process(
            target=_use_in_child, args=(store, parents, childs)
        )
        child.start()
        child.join(timeout=60)
        assert child.exitcode == 0
        # The same connection as before the fork: the child left it alone.
        assert store.find("Orders", "o-child") == childs
        store.save(parents.with_changes(version=2))
        assert store.load("Orders", parents.saga_id) == parents.with_changes(version=2)


@pytest.mark.postgres
def test_a_postgres_store_where_no_server_listens_is_a_typed_error() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres?connect_timeout=5"
    with pytest.raises(SagaStoreError, match="PostgreSQL"):
        PostgresSagaStore(url)
