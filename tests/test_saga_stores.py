"""The saga store contract on every store melange ships."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from melange.backends.sqlite import SQLiteBackend
from melange.exceptions import SagaStoreError
from melange.saga import InMemorySagaStore, SagaStore, SQLiteSagaStore
from melange.testing import SagaStoreContract, SagaStoreFactory


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
