"""Saga instances in a SQLite file (the broker's own, or another), shared by processes."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from melange._sqlite import Schema, SQLiteFile
from melange.exceptions import BackendError, SagaConflictError, SagaExistsError, SagaStoreError
from melange.saga._records import PendingMessage, SagaRecord, SagaStatus
from melange.saga._store import SagaStore

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
_COLUMNS = "saga_type, saga_id, key, status, version, updated_at, body"
_INSERT = (
    "INSERT INTO melange_sagas"
    " (saga_type, saga_id, key, status, version, created_at, updated_at, body)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE = (
    "UPDATE melange_sagas SET status = ?, version = ?, updated_at = ?, body = ?"
    " WHERE saga_type = ? AND saga_id = ? AND version = ?"
)
_OUTGOING = (
    "INSERT OR IGNORE INTO melange_saga_outbox"
    " (saga_type, saga_id, message_id, due_at, body) VALUES (?, ?, ?, ?, ?)"
)


class SQLiteSagaStore(SagaStore):
    """Saga instances and their outbox in one SQLite file; a save is one transaction.

    The store owns the tables ``melange_sagas`` and ``melange_saga_outbox``
    and may share the broker's file. Versions make saves optimistic, and the
    ``UNIQUE (saga_type, key)`` constraint makes racing starters create one
    instance.

    Raises:
        SagaStoreError: the file cannot be used.
    """

    def __init__(
        self, path: str | Path, *, synchronous: str = "FULL", busy_timeout: float = 30.0
    ) -> None:
        try:
            self._file = SQLiteFile(path, synchronous=synchronous, busy_timeout=busy_timeout)
            self._file.ensure(_SCHEMA)
        except BackendError as e:
            raise SagaStoreError(str(e)) from e
        self.path = self._file.path

    def create(self, record: SagaRecord, outgoing: Sequence[PendingMessage] = ()) -> None:
        """Store a new instance with its outgoing messages, in one transaction.

        Raises:
            SagaExistsError: the saga type already has an instance with that key or id.
            SagaStoreError: the file cannot be used.
        """
        try:
            with self._file.transaction() as db:
                db.execute(
                    _INSERT,
                    record.insert_row(),
                )
                self._add(db, record, outgoing)
        except BackendError as e:
            if isinstance(e.__cause__, sqlite3.IntegrityError):
                raise SagaExistsError(f"{record.saga_type} {record.key!r} exists already") from e
            raise SagaStoreError(str(e)) from e

    def save(self, record: SagaRecord, outgoing: Sequence[PendingMessage] = ()) -> None:
        """Replace the instance saved at ``record.version - 1``, in one transaction.

        Raises:
            SagaConflictError: the stored version is another one.
            SagaStoreError: the file cannot be used.
        """
        try:
            with self._file.transaction() as db:
                changed = db.execute(
                    _UPDATE,
                    record.update_row(),
                ).rowcount
                if changed != 1:
                    raise SagaConflictError(
                        f"{record.saga_type} {record.saga_id} is not at version"
                        f" {record.version - 1}"
                    )
                self._add(db, record, outgoing)
        except BackendError as e:
            raise SagaStoreError(str(e)) from e

    @staticmethod
    def _add(
        db: sqlite3.Connection, record: SagaRecord, outgoing: Sequence[PendingMessage]
    ) -> None:
        db.executemany(_OUTGOING, record.outbox_rows(outgoing))

    def load(self, saga_type: str, saga_id: str) -> SagaRecord | None:
        """Return the instance with this id, or ``None``."""
        return self._one("saga_id", saga_type, saga_id)

    def find(self, saga_type: str, key: str) -> SagaRecord | None:
        """Return the instance with this correlation key, or ``None``."""
        return self._one("key", saga_type, key)

    def _one(self, column: str, saga_type: str, value: str) -> SagaRecord | None:
        sql = f"SELECT {_COLUMNS} FROM melange_sagas WHERE saga_type = ? AND {column} = ?"
        rows = self._read(sql, (saga_type, value))
        return SagaRecord.from_row(rows[0]) if rows else None

    def pending(self, saga_type: str, saga_id: str, *, due_by: float) -> list[PendingMessage]:
        """Return the instance's outgoing messages due by ``due_by``, oldest first."""
        rows = self._read(
            "SELECT body FROM melange_saga_outbox WHERE saga_type = ? AND saga_id = ?"
            " AND due_at <= ? ORDER BY seq",
            (saga_type, saga_id, due_by),
        )
        return [PendingMessage.from_json(str(body)) for (body,) in rows]

    def sent(self, saga_type: str, saga_id: str, message_ids: Iterable[str]) -> None:
        """Forget outgoing messages that have left."""
        ids = list(message_ids)
        try:
            with self._file.transaction() as db:
                db.executemany(
                    "DELETE FROM melange_saga_outbox"
                    " WHERE saga_type = ? AND saga_id = ? AND message_id = ?",
                    [(saga_type, saga_id, message_id) for message_id in ids],
                )
        except BackendError as e:
            raise SagaStoreError(str(e)) from e

    def due(self, saga_type: str, now: float, limit: int = 100) -> list[tuple[str, PendingMessage]]:
        """Return ``(saga_id, message)`` for outgoing messages of any instance due by ``now``."""
        rows = self._read(
            "SELECT saga_id, body FROM melange_saga_outbox WHERE saga_type = ? AND due_at <= ?"
            " ORDER BY due_at, seq LIMIT ?",
            (saga_type, now, limit),
        )
        return [(str(saga_id), PendingMessage.from_json(str(body))) for saga_id, body in rows]

    def instances(
        self, saga_type: str, *, status: SagaStatus | None = None, limit: int = 1000
    ) -> list[SagaRecord]:
        """Return instances of a saga type (of one status, if given), newest first."""
        sql = f"SELECT {_COLUMNS} FROM melange_sagas WHERE saga_type = ?"
        parameters: tuple[object, ...] = (saga_type,)
        if status is not None:
            sql += " AND status = ?"
            parameters += (status.value,)
        rows = self._read(f"{sql} ORDER BY created_at DESC LIMIT ?", (*parameters, limit))
        return [SagaRecord.from_row(row) for row in rows]

    def purge(self, saga_type: str, *, finished_before: float) -> int:
        """Delete instances that finished before ``finished_before`` and their outbox."""
        finished = (SagaStatus.COMPLETED.value, SagaStatus.FAILED.value)
        try:
            with self._file.transaction() as db:
                db.execute(
                    "DELETE FROM melange_saga_outbox WHERE saga_type = ? AND saga_id IN"
                    " (SELECT saga_id FROM melange_sagas WHERE saga_type = ?"
                    " AND status IN (?, ?) AND updated_at < ?)",
                    (saga_type, saga_type, *finished, finished_before),
                )
                gone: int = db.execute(
                    "DELETE FROM melange_sagas WHERE saga_type = ? AND status IN (?, ?)"
                    " AND updated_at < ?",
                    (saga_type, *finished, finished_before),
                ).rowcount
        except BackendError as e:
            raise SagaStoreError(str(e)) from e
        return gone

    def _read(self, sql: str, parameters: tuple[object, ...]) -> list[tuple[Any, ...]]:
        try:
            return self._file.read(sql, parameters)
        except BackendError as e:
            raise SagaStoreError(str(e)) from e

    def close(self) -> None:
        """Close the store's connections; safe to call more than once."""
        self._file.close()
