"""The databases an inbox opens its transactions on, one kind per driver.

A transaction here is what one attempt of a handler runs in: the inbox
checks and records the message in it, the handler writes its effect in it,
and the outbox rows of what the handler published go in it; it commits on
leaving, or rolls back on an error.
"""

from __future__ import annotations

import abc
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
    suppress,
)
from typing import Any

from melange._sqlite import immediate, path_of_url
from melange.exceptions import ConfigurationError, MissingExtraError, OutboxError
from melange.outbox._connections import (
    async_create_tables,
    async_row_writer,
    create_tables,
    row_writer,
)
from melange.outbox._open import plain_url
from melange.outbox._schema import INBOX_TABLE, dialect_of_url

__all__ = [
    "AsyncDatabase",
    "AsyncInboxTransaction",
    "Database",
    "InboxTransaction",
    "database_of",
]

_PROCESSED = f"SELECT 1 FROM {INBOX_TABLE} WHERE consumer_id = ? AND message_id = ?"
_RECORD = (
    f"INSERT INTO {INBOX_TABLE} (consumer_id, message_id, processed_at) VALUES (?, ?, ?)"
    " ON CONFLICT DO NOTHING"
)
_PURGE = f"DELETE FROM {INBOX_TABLE} WHERE processed_at < ?"


class _Statements:
    """An open transaction: the handle the handler writes through, and how to run a statement."""

    def __init__(self, handle: Any, run: Any, placeholder: str) -> None:
        #: What the handler writes through (``melange.outbox.transaction()``).
        self.handle = handle
        self._run = run  # run(sql, parameters) -> (rows, rowcount), or a coroutine of it
        self._mark = placeholder

    def _sql(self, text: str) -> str:
        return text.replace("?", self._mark)


class InboxTransaction(_Statements):
    """One open transaction, and the inbox's statements in it."""

    def processed(self, consumer_id: str, message_id: str) -> bool:
        rows, _ = self._run(self._sql(_PROCESSED), (consumer_id, message_id))
        return bool(rows)

    def record(self, consumer_id: str, message_id: str, now: float) -> bool:
        """Record the message as handled; ``False`` if another delivery recorded it first."""
        _, changed = self._run(self._sql(_RECORD), (consumer_id, message_id, now))
        return bool(changed)

    def purge(self, before: float) -> int:
        _, changed = self._run(self._sql(_PURGE), (before,))
        return int(changed)


class AsyncInboxTransaction(_Statements):
    """``InboxTransaction`` whose statements are awaited (an ``AsyncSession``)."""

    async def processed(self, consumer_id: str, message_id: str) -> bool:
        rows, _ = await self._run(self._sql(_PROCESSED), (consumer_id, message_id))
        return bool(rows)

    async def record(self, consumer_id: str, message_id: str, now: float) -> bool:
        """Record the message as handled; ``False`` if another delivery recorded it first."""
        _, changed = await self._run(self._sql(_RECORD), (consumer_id, message_id, now))
        return bool(changed)

    async def purge(self, before: float) -> int:
        _, changed = await self._run(self._sql(_PURGE), (before,))
        return int(changed)


class Database(abc.ABC):
    """A database the inbox opens transactions on from the handler's thread."""

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[InboxTransaction]:
        """Return one transaction, committed on leaving, rolled back on an error.

        Raises:
            OutboxError: the database cannot be used.
        """

    @abc.abstractmethod
    def write_rows(self, tx: InboxTransaction, rows: Sequence[tuple[object, ...]]) -> None:
        """Add outbox rows in ``tx``."""

    @abc.abstractmethod
    def ensure_tables(self) -> None:
        """Create the outbox and inbox tables unless they exist."""

    def close(self) -> None:  # noqa: B027 - a session factory has nothing of ours to close
        """Close what the inbox opened; safe to call more than once."""


class AsyncDatabase(abc.ABC):
    """A database the inbox opens transactions on from the event loop."""

    @abc.abstractmethod
    def transaction(self) -> AbstractAsyncContextManager[AsyncInboxTransaction]:
        """Return one transaction (see ``Database.transaction``), to ``async with``."""

    @abc.abstractmethod
    async def write_rows(
        self, tx: AsyncInboxTransaction, rows: Sequence[tuple[object, ...]]
    ) -> None:
        """Add outbox rows in ``tx``."""

    @abc.abstractmethod
    async def ensure_tables(self) -> None:
        """Create the outbox and inbox tables unless they exist."""


def database_of(target: object) -> Database | AsyncDatabase:
    """Return the database of a URL, a SQLAlchemy engine, or a SQLAlchemy session factory.

    Raises:
        ConfigurationError: something else, or a URL of another database.
    """
    if isinstance(target, str):
        plain = plain_url(target)
        if dialect_of_url(plain) == "sqlite":
            return _SQLiteDatabase(path_of_url(plain))
        return _PsycopgDatabase(plain)
    module = type(target).__module__.partition(".")[0]
    if module == "sqlalchemy":
        from sqlalchemy.engine import Engine
        from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
        from sqlalchemy.orm import Session, sessionmaker

        if isinstance(target, AsyncEngine):
            return _SQLAlchemyAsyncDatabase(async_sessionmaker(target, class_=AsyncSession))
        if isinstance(target, async_sessionmaker):
            return _SQLAlchemyAsyncDatabase(target)
        if isinstance(target, Engine):
            return _SQLAlchemyDatabase(sessionmaker(target, class_=Session))
        if isinstance(target, sessionmaker):
            return _SQLAlchemyDatabase(target)
    raise ConfigurationError(
        "an inbox takes a database URL (sqlite:///…, postgresql://…), a SQLAlchemy"
        f" Engine or AsyncEngine, or a sessionmaker or async_sessionmaker; not {type(target)!r}"
    )


class _ThreadConnections(Database):
    """One connection of a DB-API driver per thread, opened on first use."""

    placeholder = "?"

    def __init__(self) -> None:
        self._local = threading.local()
        self._opened: list[Any] = []
        self._lock = threading.Lock()

    @abc.abstractmethod
    def _connect(self) -> Any: ...

    @abc.abstractmethod
    def _begin(self, db: Any) -> None: ...

    @abc.abstractmethod
    def _errors(self) -> tuple[type[Exception], ...]: ...

    def _connection(self) -> Any:
        db = getattr(self._local, "db", None)
        if db is None or getattr(db, "closed", False):
            db = self._local.db = self._connect()
            with self._lock:
                self._opened.append(db)
        return db

    @contextmanager
    def transaction(self) -> Iterator[InboxTransaction]:
        errors = self._errors()
        try:
            db = self._connection()
            self._begin(db)
        except errors as e:
            raise OutboxError(f"the inbox cannot open a transaction: {e}") from e

        def run(sql: str, parameters: Sequence[object]) -> tuple[list[Any], int]:
            cursor = db.execute(sql, parameters)
            rows = cursor.fetchall() if cursor.description is not None else []
            return rows, cursor.rowcount

        try:
            yield InboxTransaction(db, run, self.placeholder)
        except BaseException:
            with suppress(*errors):  # if the connection is gone, the server rolled it back
                db.rollback()
            raise
        try:
            db.commit()
        except errors as e:
            raise OutboxError(f"the inbox's transaction did not commit: {e}") from e

    def write_rows(self, tx: InboxTransaction, rows: Sequence[tuple[object, ...]]) -> None:
        row_writer(tx.handle)(rows)

    def ensure_tables(self) -> None:
        db = self._connection()
        create_tables(db)
        db.commit()

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for db in opened:
            db.close()
        self._local = threading.local()


class _SQLiteDatabase(_ThreadConnections):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        # The transaction is ours (BEGIN IMMEDIATE: no lock upgrade to fail on).
        return sqlite3.connect(self.path, timeout=30.0, isolation_level=None)

    def _begin(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")

    def _errors(self) -> tuple[type[Exception], ...]:
        return (sqlite3.Error,)

    def ensure_tables(self) -> None:
        with immediate(self._connection()) as db:
            create_tables(db)


class _PsycopgDatabase(_ThreadConnections):
    placeholder = "%s"

    def __init__(self, conninfo: str) -> None:
        super().__init__()
        self.conninfo = conninfo

    def _connect(self) -> Any:
        return _psycopg().connect(self.conninfo)

    def _begin(self, db: Any) -> None:
        return None  # psycopg begins a transaction with the first statement

    def _errors(self) -> tuple[type[Exception], ...]:
        return (_psycopg().Error,)


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise MissingExtraError("psycopg", "postgres") from e
    return psycopg


class _SQLAlchemyDatabase(Database):
    def __init__(self, sessions: Any) -> None:
        self._sessions = sessions

    @contextmanager
    def transaction(self) -> Iterator[InboxTransaction]:
        from sqlalchemy import exc

        with self._sessions() as session:
            try:
                with session.begin():
                    yield InboxTransaction(session, _sqlalchemy_runner(session), "?")
            except exc.SQLAlchemyError as e:
                raise OutboxError(f"the inbox's transaction failed: {e}") from e

    def write_rows(self, tx: InboxTransaction, rows: Sequence[tuple[object, ...]]) -> None:
        row_writer(tx.handle)(rows)

    def ensure_tables(self) -> None:
        with self._sessions() as session, session.begin():
            create_tables(session)


class _SQLAlchemyAsyncDatabase(AsyncDatabase):
    def __init__(self, sessions: Any) -> None:
        self._sessions = sessions

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncInboxTransaction]:
        from sqlalchemy import exc

        async with self._sessions() as session:
            try:
                async with session.begin():
                    yield AsyncInboxTransaction(session, _sqlalchemy_async_runner(session), "?")
            except exc.SQLAlchemyError as e:
                raise OutboxError(f"the inbox's transaction failed: {e}") from e

    async def write_rows(
        self, tx: AsyncInboxTransaction, rows: Sequence[tuple[object, ...]]
    ) -> None:
        await async_row_writer(tx.handle)(rows)

    async def ensure_tables(self) -> None:
        async with self._sessions() as session, session.begin():
            await async_create_tables(session)


def _named(sql: str, parameters: Sequence[object]) -> tuple[Any, dict[str, object]]:
    """Return ``sql`` with ``?`` markers as SQLAlchemy's ``:p0, :p1…``, and its parameters."""
    from sqlalchemy import text

    pieces = sql.split("?")
    named = pieces[0] + "".join(f":p{i}{piece}" for i, piece in enumerate(pieces[1:]))
    return text(named), {f"p{i}": value for i, value in enumerate(parameters)}


def _sqlalchemy_runner(session: Any) -> Any:
    def run(sql: str, parameters: Sequence[object]) -> tuple[list[Any], int]:
        statement, values = _named(sql, parameters)
        result = session.execute(statement, values)
        return (list(result) if result.returns_rows else []), result.rowcount

    return run


def _sqlalchemy_async_runner(session: Any) -> Any:
    async def run(sql: str, parameters: Sequence[object]) -> tuple[list[Any], int]:
        statement, values = _named(sql, parameters)
        result = await session.execute(statement, values)
        return (list(result) if result.returns_rows else []), result.rowcount

    return run
