"""The SQLite file behind ``SQLiteBackend``: connections, schema and error translation."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from melange.exceptions import BackendError, StorageError

__all__ = ["SQLiteFile", "translate_errors"]

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS melange_topics (
    name TEXT PRIMARY KEY
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS melange_queues (
    name TEXT PRIMARY KEY,
    visibility_timeout REAL NOT NULL,
    max_receive_count INTEGER NOT NULL,
    dead_letter_queue TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS melange_subscriptions (
    topic TEXT NOT NULL,
    queue TEXT NOT NULL,
    PRIMARY KEY (topic, queue)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS melange_messages (
    id INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    content TEXT NOT NULL,
    metadata TEXT NOT NULL,
    serializer_id INTEGER,
    manifest TEXT,
    visible_at REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    claim TEXT
);
CREATE INDEX IF NOT EXISTS melange_messages_visible
    ON melange_messages (queue, visible_at, id);
CREATE TABLE IF NOT EXISTS melange_idempotency (
    key TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
"""

_SYNCHRONOUS = {"OFF", "NORMAL", "FULL", "EXTRA"}


@contextmanager
def translate_errors(path: str) -> Iterator[None]:
    """Turn sqlite3's errors into melange's: the one place this backend does it."""
    try:
        yield
    except sqlite3.DatabaseError as e:
        text = str(e)
        if "not a database" in text or "malformed" in text or "unable to open" in text:
            raise StorageError(f"{path}: {text}") from e
        raise BackendError(f"{path}: {text}") from e


class SQLiteFile:
    """One database file, one connection per thread, the schema in place.

    Connections are in autocommit mode: every write is its own short
    transaction, or an explicit ``BEGIN IMMEDIATE`` block.

    Raises:
        StorageError: the folder is missing, or the file is not a database.
    """

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", busy_timeout: float = 30.0):
        self.path = str(path)
        self.synchronous = synchronous.upper()
        if self.synchronous not in _SYNCHRONOUS:
            raise StorageError(f"synchronous must be one of {sorted(_SYNCHRONOUS)}")
        self.busy_timeout = busy_timeout
        folder = Path(self.path).resolve().parent
        if not folder.is_dir():
            raise StorageError(f"{self.path}: folder {folder} does not exist")
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self.connection()  # fail now, not on first use, if the file is unusable

    def connection(self) -> sqlite3.Connection:
        """Return this thread's connection, opening it on first use."""
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            if self._closed:
                raise BackendError(f"{self.path}: the backend is closed")
            connection = self._open()
            self._local.connection = connection
            with self._lock:
                self._all.append(connection)
        return connection

    def _open(self) -> sqlite3.Connection:
        with translate_errors(self.path):
            connection = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                # Read the header before anything could write to the file.
                connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
                connection.execute("PRAGMA journal_mode=WAL").fetchone()
                connection.execute(f"PRAGMA synchronous={self.synchronous}")
                connection.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
                version = connection.execute("PRAGMA user_version").fetchone()[0]
                if version < SCHEMA_VERSION:
                    connection.executescript(
                        f"BEGIN IMMEDIATE; {SCHEMA}; PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
                    )
            except BaseException:
                connection.close()
                raise
        return connection

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run a block in one ``BEGIN IMMEDIATE`` write transaction."""
        connection = self.connection()
        with translate_errors(self.path):
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    def close(self) -> None:
        """Close every connection this object opened; safe to call again."""
        with self._lock:
            self._closed = True
            connections, self._all = self._all, []
        for connection in connections:
            connection.close()
        self._local = threading.local()
