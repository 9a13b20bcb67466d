"""Saga instances in a SQLite file (the broker's own, or another), shared by processes."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from melange._sqlite import Schema, SQLiteFile
from melange.exceptions import BackendError, SagaStoreError
from melange.outbox._schema import ddl
from melange.saga._sql import SQLSagaStore, Writer

__all__ = ["SQLiteSagaStore"]

_SCHEMA = Schema(
    "saga",
    1,
    (
        """CREATE TABLE IF NOT EXISTS melange_sagas (
            saga_type TEXT NOT NULL,
            saga_id TEXT NOT NULL,
            key TEXT NOT NULL,
            status TEXT NOT NULL,
            version INTEGER NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (saga_type, saga_id),
            UNIQUE (saga_type, key)
        ) WITHOUT ROWID""",
        """CREATE TABLE IF NOT EXISTS melange_saga_outbox (
            seq INTEGER PRIMARY KEY,
            saga_type TEXT NOT NULL,
            saga_id TEXT NOT NULL,
            message_id TEXT NOT NULL,
            due_at REAL NOT NULL,
            body TEXT NOT NULL,
            UNIQUE (saga_type, saga_id, message_id)
        )""",
        "CREATE INDEX IF NOT EXISTS melange_saga_outbox_due"
        " ON melange_saga_outbox (saga_type, due_at)",
    ),
)
_INSERT_OUTGOING = (
    "INSERT OR IGNORE INTO melange_saga_outbox"
    " (saga_type, saga_id, message_id, due_at, body) VALUES (?, ?, ?, ?, ?)"
)


class SQLiteSagaStore(SQLSagaStore):
    """Saga instances and their outbox in one SQLite file; a save is one transaction.

    The store owns the tables ``melange_sagas`` and ``melange_saga_outbox``
    and may share the broker's file. With ``outbox=True`` what instances send
    goes to the file's ``melange_outbox`` instead, for a ``melange.outbox.Relay``
    (the saga's runner runs one): the service's own database, one transaction.
    Versions make saves optimistic, and the ``UNIQUE (saga_type, key)``
    constraint makes racing starters create one instance.

    Raises:
        SagaStoreError: the file cannot be used.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 30.0,
        outbox: bool = False,
    ) -> None:
        super().__init__("?", _INSERT_OUTGOING)
        try:
            self._file = SQLiteFile(path, synchronous=synchronous, busy_timeout=busy_timeout)
            self._file.ensure(_SCHEMA)
            if outbox:
                self._file.ensure(Schema("outbox", 1, tuple(ddl("sqlite"))))
        except BackendError as e:
            raise SagaStoreError(str(e)) from e
        self.path = self._file.path
        if outbox:
            self.outbox_url = f"sqlite:///{self.path}"

    @contextmanager
    def _transaction(self) -> Iterator[Writer]:
        try:
            with self._file.transaction() as db:
                yield _SQLiteWriter(db)
        except BackendError as e:
            raise SagaStoreError(str(e)) from e

    def _read(self, sql: str, parameters: Sequence[object]) -> list[tuple[Any, ...]]:
        try:
            return self._file.read(sql, tuple(parameters))
        except BackendError as e:
            raise SagaStoreError(str(e)) from e

    def _is_duplicate(self, error: SagaStoreError) -> bool:
        return isinstance(error.__cause__, BackendError) and isinstance(
            error.__cause__.__cause__, sqlite3.IntegrityError
        )

    def close(self) -> None:
        """Close the store's connections; safe to call more than once."""
        self._file.close()


class _SQLiteWriter:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, sql: str, parameters: Sequence[object]) -> int:
        return self._db.execute(sql, parameters).rowcount

    def execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        self._db.executemany(sql, rows)
