"""Saga instances in PostgreSQL (psycopg 3), shared by workers on many hosts."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeAlias

from melange._secrets import check_credentials, scrubbed, url_error
from melange.exceptions import MissingExtraError, OutboxError, SagaStoreError
from melange.saga._sql import SQLSagaStore, Writer

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
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
_INSERT_OUTGOING = (
    "INSERT INTO melange_saga_outbox (saga_type, saga_id, message_id, due_at, body)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (saga_type, saga_id, message_id) DO NOTHING"
)

# Connections a forked child inherited: kept referenced so the child never
# closes (and so never ends the server sessions of) its parent's connections.
_inherited: list[_Connection] = []


class PostgresSagaStore(SQLSagaStore):
    """Saga instances and their outbox in PostgreSQL; a save is one transaction.

    Takes a libpq URL or conninfo string (``postgresql://user@host/db``). The
    store owns the tables ``melange_sagas`` and ``melange_saga_outbox``,
    created on first connection. Versions make saves optimistic, and the
    ``UNIQUE (saga_type, key)`` constraint makes racing starters create one
    instance. With ``outbox=True`` what instances send goes to the database's
    ``melange_outbox`` instead, for a ``melange.outbox.Relay`` (the saga's
    runner runs one). Each thread gets its own connection, and a forked child opens
    its own; a connection the server dropped is reopened on the next call.

    Raises:
        ConfigurationError: libpq cannot read the URL or conninfo string.
        SagaStoreError: the server cannot be reached, or its tables were made
            by a newer melange.
    """

    def __init__(self, conninfo: str, *, outbox: bool = False) -> None:
        check_credentials(conninfo)
        try:
            conninfo_to_dict(conninfo)
        except psycopg.Error as e:  # libpq's message may quote a piece of the password
            raise url_error(conninfo, e) from None
        super().__init__("%s", _INSERT_OUTGOING)
        self._conninfo = conninfo
        self._local = threading.local()
        self._opened: list[tuple[threading.Thread, _Connection]] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        try:
            self._ensure_schema()  # fail now, not on first use, if the server is unusable
            if outbox:
                self._ensure_outbox()
        except BaseException:
            self.close()
            raise
        if outbox:
            self.outbox_url = conninfo

    @contextmanager
    def _transaction(self) -> Iterator[Writer]:
        with self._session() as db, db.transaction():
            yield _PostgresWriter(db)

    def _is_duplicate(self, error: SagaStoreError) -> bool:
        return isinstance(error.__cause__, psycopg.errors.UniqueViolation)

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

    def _read(self, sql: str, parameters: Sequence[object]) -> list[tuple[Any, ...]]:
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

    def _ensure_outbox(self) -> None:
        from melange.outbox._postgres_store import PostgresOutboxStore

        relays = PostgresOutboxStore(self._conninfo)
        try:
            relays.ensure_tables()
        except OutboxError as e:
            raise SagaStoreError(str(e)) from e
        finally:
            relays.close()

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
                raise SagaStoreError(f"PostgreSQL: {scrubbed(str(e), self._conninfo)}") from e
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


class _PostgresWriter:
    def __init__(self, db: _Connection) -> None:
        self._db = db

    def execute(self, sql: str, parameters: Sequence[object]) -> int:
        return self._db.execute(sql, parameters).rowcount

    def execute_many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        with self._db.cursor() as cursor:
            cursor.executemany(sql, rows)
