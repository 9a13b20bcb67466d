"""SQLite files shared by the embedded broker and the SQLite stores.

One ``SQLiteFile`` per file and owner: a connection per thread in WAL mode,
pragmas, fork safety, error translation, and per-component schemas.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from melange._secrets import masked
from melange.exceptions import BackendError, ConfigurationError, StorageError

__all__ = [
    "DEFAULT_FILE_MODE",
    "SYNCHRONOUS_MODES",
    "SQLiteFile",
    "Schema",
    "immediate",
    "path_of_url",
    "require_existing",
    "translate_errors",
]

#: ``PRAGMA application_id`` stamped on files melange creates ("mlng").
APPLICATION_ID = 0x6D6C6E67
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
# UPSERT (the idempotency claim) needs 3.24.
_MINIMUM_SQLITE = (3, 24, 0)
_VERSIONS = """CREATE TABLE IF NOT EXISTS melange_schema_versions (
    component TEXT PRIMARY KEY,
    version INTEGER NOT NULL
) WITHOUT ROWID"""
# Files of melange 0.1.0 kept one version, the broker's, in ``melange_schema``.
_LEGACY = "melange_schema"


@dataclass(frozen=True)
class Schema:
    """The tables of one component (the broker, a store) and their version.

    Each component creates and versions only its own tables, so a broker
    file can also hold idempotency claims or saga state without either
    knowing the other's layout.
    """

    component: str
    version: int
    statements: tuple[str, ...]


def path_of_url(url: str) -> str:
    """Return the file a ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` URL names.

    The query, if any, is the caller's to read.

    Raises:
        ConfigurationError: not a ``sqlite:`` URL, a host was given, or no path.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ConfigurationError(f"expected sqlite:///path/to.db, got {masked(url)!r}") from None
    path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if parts.scheme.lower() != "sqlite" or parts.netloc or not path:
        raise ConfigurationError(f"expected sqlite:///path/to.db, got {masked(url)!r}")
    return path


def require_existing(url: str) -> None:
    """Refuse a ``sqlite:`` URL whose file is missing: read-only commands never create one.

    Any other URL is left to its backend.

    Raises:
        StorageError: the file does not exist.
    """
    if urlsplit(url).scheme.lower() != "sqlite":
        return
    path = path_of_url(url)
    if not Path(path).exists():
        raise StorageError(
            f"{path} does not exist: nothing to read (this command never creates a"
            " broker file; check --backend / --store or the working directory)"
        )


#: Permissions of a database file melange creates: its owner's only (it holds messages).
DEFAULT_FILE_MODE = 0o600


# Primary result codes (the low byte of an extended code) that mean the file
# itself cannot be used, as opposed to one operation failing.
_STORAGE_CODES = {
    sqlite3.SQLITE_PERM,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_CORRUPT,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_NOTADB,
}
_BUSY_CODES = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}

# Connections a forked child inherited: kept referenced so the child never
# closes (and so never touches the locks of) its parent's connections.
_inherited: list[sqlite3.Connection] = []


@contextmanager
def translate_errors(path: str) -> Iterator[None]:
    """Turn sqlite3's errors into melange's: the one place the SQLite code does it.

    Raises:
        StorageError: the file is missing, unreadable, read-only, full or not a database.
        BackendError: any other failure, such as a lock held past the busy timeout.
    """
    try:
        yield
    except sqlite3.Error as e:
        code = getattr(e, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        if primary in _STORAGE_CODES:
            raise StorageError(f"{path}: {e}") from e
        if primary in _BUSY_CODES:
            raise BackendError(f"{path}: {e} (still locked after the busy timeout)") from e
        raise BackendError(f"{path}: {e}") from e


class _Connection(sqlite3.Connection):
    """A connection that closes itself when dropped: its thread ended, or its owner went."""

    _opened = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._opened = True  # a failed open leaves nothing to close

    def __del__(self) -> None:
        if self._opened:
            self.close()


@contextmanager
def immediate(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run a block in one ``BEGIN IMMEDIATE`` transaction of an autocommit connection.

    Committed when the block ends, rolled back if it raises. Immediate: the
    write lock is taken at the start, so a writer waits on the busy timeout
    instead of failing on a lock upgrade.
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


class SQLiteFile:
    """One database file in WAL mode, one connection per thread, the schema in place.

    Connections are in autocommit mode: a write is a single statement or an
    explicit ``BEGIN IMMEDIATE`` block (``transaction()``), so writers queue
    on the busy timeout instead of failing on a lock upgrade. A process that
    forks gets new connections in the child.

    Raises:
        ConfigurationError: ``synchronous`` is not a SQLite mode, or SQLite is too old.
        StorageError: the folder is missing, the file is not a database (it is
            left untouched), or it belongs to another application.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 30.0,
        file_mode: int | None = DEFAULT_FILE_MODE,
    ) -> None:
        self.path = str(path)
        self.synchronous = synchronous.upper()
        if self.synchronous not in SYNCHRONOUS_MODES:
            raise ConfigurationError(
                f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, not {synchronous!r}"
            )
        if busy_timeout < 0:
            raise ConfigurationError(f"busy_timeout must be >= 0, not {busy_timeout!r}")
        if sqlite3.sqlite_version_info < _MINIMUM_SQLITE:
            raise ConfigurationError(f"SQLite {sqlite3.sqlite_version} is too old: 3.24+ needed")
        if self.path in ("", ":memory:") or self.path.startswith("file:"):
            raise ConfigurationError(f"expected a file path, not {self.path!r} (try memory://)")
        self.busy_timeout = busy_timeout
        folder = Path(self.path).absolute().parent
        if not folder.is_dir():
            raise StorageError(f"{self.path}: the folder {folder} does not exist")
        if file_mode is not None:
            _create_with_mode(self.path, file_mode)
        self._local = threading.local()
        self._all: weakref.WeakSet[sqlite3.Connection] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False
        self.connection()  # fail now, not on first use, if the file is unusable

    def connection(self) -> sqlite3.Connection:
        """Return this thread's connection, opening it on first use.

        Raises:
            BackendError: the file was closed.
            StorageError: the file cannot be opened.
        """
        if os.getpid() != self._pid:
            self._forget_parent_connections()
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            if self._closed:
                raise BackendError(f"{self.path}: closed")
            connection = self._open()
            self._local.connection = connection
            with self._lock:
                self._all.add(connection)
        return connection

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run a block in one ``BEGIN IMMEDIATE`` write transaction; roll back on error.

        Raises:
            BackendError: the write lock stayed taken past the busy timeout.
            StorageError: the file cannot be written.
        """
        with translate_errors(self.path), immediate(self.connection()) as connection:
            yield connection

    def read(self, sql: str, parameters: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one read-only statement outside any transaction and return its rows.

        Raises:
            BackendError: the query failed.
        """
        with translate_errors(self.path):
            return self.connection().execute(sql, parameters).fetchall()

    def ensure(self, schema: Schema) -> None:
        """Create the component's tables unless this version has them already.

        Raises:
            StorageError: the file was made by a newer melange (it is left
                untouched), or it cannot be written.
            BackendError: the write lock stayed taken past the busy timeout.
        """
        if self._current(schema):
            return
        with self.transaction() as connection:
            connection.execute(_VERSIONS)
            self._adopt_legacy_version(connection)
            version = self._version_of(connection, schema.component)
            if version is not None and version > schema.version:
                raise StorageError(
                    f"{self.path}: made by a newer melange ({schema.component} schema"
                    f" {version}, this one knows {schema.version})"
                )
            if version != schema.version:
                for statement in schema.statements:
                    connection.execute(statement)
                connection.execute(
                    "INSERT OR REPLACE INTO melange_schema_versions VALUES (?, ?)",
                    (schema.component, schema.version),
                )

    def close(self) -> None:
        """Close every connection this object opened; safe to call again."""
        with self._lock:
            self._closed = True
            connections = list(self._all)
            self._all = weakref.WeakSet()
        for connection in connections:
            connection.close()
        self._local = threading.local()

    def _open(self) -> sqlite3.Connection:
        with translate_errors(self.path):
            connection = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                factory=_Connection,
            )
            try:
                # Reading the header first means a file that is not a
                # database is refused before anything is written to it.
                tables = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                application = connection.execute("PRAGMA application_id").fetchone()[0]
                if application not in (0, APPLICATION_ID):
                    raise StorageError(
                        f"{self.path}: a database of another application"
                        f" (application_id {application:#x}); not touching it"
                    )
                mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StorageError(f"{self.path}: WAL journal unavailable (got {mode!r})")
                connection.execute(f"PRAGMA synchronous={self.synchronous}")
                if tables == 0:
                    connection.execute(f"PRAGMA application_id={APPLICATION_ID}")
            except BaseException:
                connection.close()
                raise
        return connection

    def _current(self, schema: Schema) -> bool:
        """Return whether the component's tables are at this version (a read, no lock)."""
        connection = self.connection()
        with translate_errors(self.path):
            try:
                return self._version_of(connection, schema.component) == schema.version
            except sqlite3.OperationalError:  # no versions table yet
                return False

    def _version_of(self, connection: sqlite3.Connection, component: str) -> int | None:
        row = connection.execute(
            "SELECT version FROM melange_schema_versions WHERE component = ?", (component,)
        ).fetchone()
        return None if row is None else int(row[0])

    def _adopt_legacy_version(self, connection: sqlite3.Connection) -> None:
        found = connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_LEGACY,)
        ).fetchone()
        if found is not None:
            connection.execute(
                "INSERT OR IGNORE INTO melange_schema_versions"
                f" SELECT 'broker', max(version) FROM {_LEGACY} WHERE version IS NOT NULL"
            )
            connection.execute(f"DROP TABLE {_LEGACY}")

    def _forget_parent_connections(self) -> None:
        with self._lock:
            _inherited.extend(self._all)
            self._all = weakref.WeakSet()
            self._local = threading.local()
            self._pid = os.getpid()


def _create_with_mode(path: str, mode: int) -> None:
    """Create an empty file with ``mode`` (less the umask) unless it exists.

    SQLite gives its ``-wal`` and ``-shm`` files the database file's permissions.
    """
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        return
    except OSError as e:
        raise StorageError(f"{path}: cannot create it: {e.strerror}") from e
    os.close(descriptor)
