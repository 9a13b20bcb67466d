"""Saga instances in PostgreSQL (psycopg 3), shared by workers on many hosts."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeAlias

from melange.exceptions import (
    MissingExtraError,
    SagaConflictError,
    SagaExistsError,
    SagaStoreError,
)
from melange.saga._records import PendingMessage, SagaRecord, SagaStatus
from melange.saga._store import SagaStore

try:
    import psycopg
    from psycopg.pq import TransactionStatus
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("psycopg", "postgres") from e

__all__ = ["PostgresSagaStore"]

_Connection: TypeAlias = psycopg.Connection[tuple[Any, ...]]

_COMPONENT = "saga"
_VERSION = 1
# pg_advisory_xact_lock key ("mlng"): one process at a time creates melange's tables.
_SCHEMA_LOCK = 0x6D6C6E67
_VERSIONS = """CREATE TABLE IF NOT EXISTS melange_schema_versions (
    component TEXT PRIMARY KEY,
    version INTEGER NOT NULL
)"""
_TABLES = (
    """CREATE TABLE IF NOT EXISTS melange_sagas (
        saga_type TEXT NOT NULL,
        saga_id TEXT NOT NULL,
        key TEXT NOT NULL,
        status TEXT NOT NULL,
        version BIGINT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (saga_type, saga_id),
        UNIQUE (saga_type, key)
    )""",
    """CREATE TABLE IF NOT EXISTS melange_saga_outbox (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        saga_type TEXT NOT NULL,
        saga_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        due_at DOUBLE PRECISION NOT NULL,
        body TEXT NOT NULL,
        UNIQUE (saga_type, saga_id, message_id)
    )""",
    "CREATE INDEX IF NOT EXISTS melange_saga_outbox_due ON melange_saga_outbox (saga_type, due_at)",
)
_COLUMNS = "saga_type, saga_id, key, status, version, updated_at, body"
_INSERT = (
    "INSERT INTO melange_sagas"
    " (saga_type, saga_id, key, status, version, created_at, updated_at, body)"
    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)
_UPDATE = (
    "UPDATE melange_sagas SET status = %s, version = %s, updated_at = %s, body = %s"
    " WHERE saga_type = %s AND saga_id = %s AND version = %s"
)
_OUTGOING = (
    "INSERT INTO melange_saga_outbox (saga_type, saga_id, message_id, due_at, body)"
    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (saga_type, saga_id, message_id) DO NOTHING"
)

# Connections a forked child inherited: kept referenced so the child never
# closes (and so never ends the server sessions of) its parent's connections.
_inherited: list[_Connection] = []


class PostgresSagaStore(SagaStore):
    """Saga instances and their outbox in PostgreSQL; a save is one transaction.

    Takes a libpq URL or conninfo string (``postgresql://user@host/db``). The
    store owns the tables ``melange_sagas`` and ``melange_saga_outbox``,
    created on first connection. Versions make saves optimistic, and the
    ``UNIQUE (saga_type, key)`` constraint makes racing starters create one
    instance. Each thread gets its own connection, and a forked child opens
    its own; a connection the server dropped is reopened on the next call.

    Raises:
        SagaStoreError: the server cannot be reached, or its tables were made
            by a newer melange.
    """

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._local = threading.local()
        self._opened: list[tuple[threading.Thread, _Connection]] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        try:
            self._ensure_schema()  # fail now, not on first use, if the server is unusable
        except BaseException:
            self.close()
            raise

    def create(self, record: SagaRecord, outgoing: Sequence[PendingMessage] = ()) -> None:
        """Store a new instance with its outgoing messages, in one transaction.

        Raises:
            SagaExistsError: the saga type already has an instance with that key or id.
            SagaStoreError: the server cannot be used.
        """
        with self._session() as db:
            try:
                with db.transaction():
                    db.execute(
                        _INSERT,
                        record.insert_row(),
                    )
                    self._add(db, record, outgoing)
            except psycopg.errors.UniqueViolation as e:
                raise SagaExistsError(f"{record.saga_type} {record.key!r} exists already") from e

    def save(self, record: SagaRecord, outgoing: Sequence[PendingMessage] = ()) -> None:
        """Replace the instance saved at ``record.version - 1``, in one transaction.

        Raises:
            SagaConflictError: the stored version is another one (or the instance is gone).
            SagaStoreError: the server cannot be used.
        """
        with self._session() as db, db.transaction():
            changed = db.execute(
                _UPDATE,
                record.update_row(),
            ).rowcount
            if changed != 1:
                raise SagaConflictError(
                    f"{record.saga_type} {record.saga_id} is not at version {record.version - 1}"
                )
            self._add(db, record, outgoing)

    @staticmethod
    def _add(db: _Connection, record: SagaRecord, outgoing: Sequence[PendingMessage]) -> None:
        if outgoing:
            with db.cursor() as cursor:
                cursor.executemany(_OUTGOING, record.outbox_rows(outgoing))

    def load(self, saga_type: str, saga_id: str) -> SagaRecord | None:
        """Return the instance with this id, or ``None``.

        Raises:
            SagaStoreError: the server cannot be used.
        """
        return self._one("saga_id", saga_type, saga_id)

    def find(self, saga_type: str, key: str) -> SagaRecord | None:
        """Return the instance with this correlation key, or ``None``.

        Raises:
            SagaStoreError: the server cannot be used.
        """
        return self._one("key", saga_type, key)

    def _one(self, column: str, saga_type: str, value: str) -> SagaRecord | None:
        sql = f"SELECT {_COLUMNS} FROM melange_sagas WHERE saga_type = %s AND {column} = %s"
        rows = self._read(sql, (saga_type, value))
        return SagaRecord.from_row(rows[0]) if rows else None

    def pending(self, saga_type: str, saga_id: str, *, due_by: float) -> list[PendingMessage]:
        """Return the instance's outgoing messages due by ``due_by``, oldest first.

        Raises:
            SagaStoreError: the server cannot be used.
        """
        rows = self._read(
            "SELECT body FROM melange_saga_outbox WHERE saga_type = %s AND saga_id = %s"
            " AND due_at <= %s ORDER BY seq",
            (saga_type, saga_id, due_by),
        )
        return [PendingMessage.from_json(str(body)) for (body,) in rows]

    def sent(self, saga_type: str, saga_id: str, message_ids: Iterable[str]) -> None:
        """Forget outgoing messages that have left.

        Raises:
            SagaStoreError: the server cannot be used.
        """
        ids = list(message_ids)
        if not ids:
            return
        with self._session() as db:
            db.execute(
                "DELETE FROM melange_saga_outbox"
                " WHERE saga_type = %s AND saga_id = %s AND message_id = ANY(%s)",
                (saga_type, saga_id, ids),
            )

    def due(self, saga_type: str, now: float, limit: int = 100) -> list[tuple[str, PendingMessage]]:
        """Return ``(saga_id, message)`` for outgoing messages of any instance due by ``now``.

        Raises:
            SagaStoreError: the server cannot be used.
        """
        rows = self._read(
            "SELECT saga_id, body FROM melange_saga_outbox WHERE saga_type = %s AND due_at <= %s"
            " ORDER BY due_at, seq LIMIT %s",
            (saga_type, now, limit),
        )
        return [(str(saga_id), PendingMessage.from_json(str(body))) for saga_id, body in rows]

    def instances(
        self, saga_type: str, *, status: SagaStatus | None = None, limit: int = 1000
    ) -> list[SagaRecord]:
        """Return instances of a saga type (of one status, if given), newest first.

        Raises:
            SagaStoreError: the server cannot be used.
        """
        sql = f"SELECT {_COLUMNS} FROM melange_sagas WHERE saga_type = %s"
        parameters: tuple[object, ...] = (saga_type,)
        if status is not None:
            sql += " AND status = %s"
            parameters += (status.value,)
        rows = self._read(f"{sql} ORDER BY created_at DESC LIMIT %s", (*parameters, limit))
        return [SagaRecord.from_row(row) for row in rows]

    def purge(self, saga_type: str, *, finished_before: float) -> int:
        """Delete instances that finished before ``finished_before`` and their outbox.

        Raises:
            SagaStoreError: the server cannot be used.
        """
        finished = (SagaStatus.COMPLETED.value, SagaStatus.FAILED.value)
        with self._session() as db, db.transaction():
            db.execute(
                "DELETE FROM melange_saga_outbox WHERE saga_type = %s AND saga_id IN"
                " (SELECT saga_id FROM melange_sagas WHERE saga_type = %s"
                " AND status IN (%s, %s) AND updated_at < %s)",
                (saga_type, saga_type, *finished, finished_before),
            )
            gone = db.execute(
                "DELETE FROM melange_sagas WHERE saga_type = %s AND status IN (%s, %s)"
                " AND updated_at < %s",
                (saga_type, *finished, finished_before),
            ).rowcount
        return gone

    def close(self) -> None:
        """Close every connection the store opened; safe to call more than once."""
        if os.getpid() != self._pid:
            self._forget_parent_connections()
        with self._lock:
            self._closed = True
            opened, self._opened = self._opened, []
        for _, connection in opened:
            connection.close()
        self._local = threading.local()

    def _read(self, sql: str, parameters: tuple[object, ...]) -> list[tuple[Any, ...]]:
        with self._session() as db:
            return db.execute(sql, parameters).fetchall()

    def _ensure_schema(self) -> None:
        """Create the tables unless this version has them already.

        Raises:
            SagaStoreError: the tables were made by a newer melange (they are
                left untouched), or the server cannot be used.
        """
        with self._session() as db:
            try:
                if self._version_of(db) == _VERSION:
                    return
            except psycopg.errors.UndefinedTable:  # no versions table yet
                pass
            with db.transaction():
                # CREATE TABLE IF NOT EXISTS races with itself: one process at a time.
                db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                db.execute(_VERSIONS)
                version = self._version_of(db)
                if version is not None and version > _VERSION:
                    raise SagaStoreError(
                        f"PostgreSQL: made by a newer melange ({_COMPONENT} schema {version},"
                        f" this one knows {_VERSION})"
                    )
                if version != _VERSION:
                    for statement in _TABLES:
                        db.execute(statement)
                    db.execute(
                        "INSERT INTO melange_schema_versions VALUES (%s, %s)"
                        " ON CONFLICT (component) DO UPDATE SET version = EXCLUDED.version",
                        (_COMPONENT, _VERSION),
                    )

    @staticmethod
    def _version_of(db: _Connection) -> int | None:
        row = db.execute(
            "SELECT version FROM melange_schema_versions WHERE component = %s", (_COMPONENT,)
        ).fetchone()
        return None if row is None else int(row[0])

    @contextmanager
    def _session(self) -> Iterator[_Connection]:
        """Yield this thread's connection; turn psycopg's errors into ``SagaStoreError``.

        A connection the failure left closed (the server went away) is
        dropped, so the next call opens a new one.
        """
        connection = self._connection()
        try:
            yield connection
        except psycopg.Error as e:
            if connection.closed:
                self._drop(connection)
            raise SagaStoreError(f"PostgreSQL: {e}") from e

    def _connection(self) -> _Connection:
        """Return this thread's connection, opening it on first use.

        Raises:
            SagaStoreError: the store was closed, or the server cannot be reached.
        """
        if os.getpid() != self._pid:
            self._forget_parent_connections()
        connection: _Connection | None = getattr(self._local, "connection", None)
        if connection is not None and (
            connection.closed or connection.info.transaction_status != TransactionStatus.IDLE
        ):
            self._drop(connection)  # lost, or left inside a transaction by an interruption
            connection = None
        if connection is None:
            if self._closed:
                raise SagaStoreError("PostgreSQL: the saga store is closed")
            try:
                connection = psycopg.connect(self._conninfo, autocommit=True)
            except psycopg.Error as e:
                raise SagaStoreError(f"PostgreSQL: {e}") from e
            with self._lock:
                closed = self._closed
                if not closed:
                    self._forget_dead_threads()
                    self._opened.append((threading.current_thread(), connection))
            if closed:
                connection.close()
                raise SagaStoreError("PostgreSQL: the saga store is closed")
            self._local.connection = connection
        return connection

    def _drop(self, connection: _Connection) -> None:
        with self._lock:
            self._opened = [(t, c) for t, c in self._opened if c is not connection]
        if getattr(self._local, "connection", None) is connection:
            self._local.connection = None
        connection.close()

    def _forget_dead_threads(self) -> None:
        """Close the connections of threads that ended (called with the lock held)."""
        alive = []
        for thread, connection in self._opened:
            if thread.is_alive():
                alive.append((thread, connection))
            else:
                connection.close()
        self._opened = alive

    def _forget_parent_connections(self) -> None:
        # The parent's lock may have been held by one of its threads when it
        # forked: the child starts with a new one.
        self._lock = threading.Lock()
        _inherited.extend(connection for _, connection in self._opened)
        self._opened = []
        self._local = threading.local()
        self._pid = os.getpid()
