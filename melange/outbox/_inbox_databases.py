"""The databases an inbox opens its transactions on, one kind per driver.

A transaction here is what one attempt of a handler runs in: the inbox
checks and records the message in it, the handler writes its effect in it,
and the outbox rows of what the handler published go in it; it commits on
leaving, or rolls back on an error.
"""

from __future__ import annotations

import abc
import asyncio
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
from typing import Any, NamedTuple

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
    "Databases",
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

    async def aclose(self) -> None:  # noqa: B027 - a session factory has nothing of ours
        """Close what the inbox opened; safe to call more than once."""


class Databases(NamedTuple):
    """Where plain listeners' transactions open, and where ``async def`` listeners' do."""

    sync: Database | None
    asynchronous: AsyncDatabase | None


def database_of(target: object) -> Databases:
    """Return the databases of a URL, a SQLAlchemy engine, or a SQLAlchemy session factory.

    A URL serves both: plain listeners get a ``sqlite3`` or psycopg
    connection, ``async def`` ones an aiosqlite or psycopg ``AsyncConnection``.

    Raises:
        ConfigurationError: something else, or a URL of another database.
    """
    if isinstance(target, str):
        plain = plain_url(target)
        if dialect_of_url(plain) == "sqlite":
            path = path_of_url(plain)
            return Databases(_SQLiteDatabase(path), _AiosqliteDatabase(path))
        return Databases(_PsycopgDatabase(plain), _AsyncPsycopgDatabase(plain))
    module = type(target).__module__.partition(".")[0]
    if module == "sqlalchemy":
        from sqlalchemy.engine import Engine
        from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
        from sqlalchemy.orm import Session, sessionmaker

        if isinstance(target, AsyncEngine):
            sessions = async_sessionmaker(target, class_=AsyncSession)
            return Databases(None, _SQLAlchemyAsyncDatabase(sessions))
        if isinstance(target, async_sessionmaker):
            return Databases(None, _SQLAlchemyAsyncDatabase(target))
        if isinstance(target, Engine):
            return Databases(_SQLAlchemyDatabase(sessionmaker(target, class_=Session)), None)
        if isinstance(target, sessionmaker):
            return Databases(_SQLAlchemyDatabase(target), None)
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


class _AsyncConnections(AsyncDatabase):
    """Connections of an asyncio driver: one per open transaction, kept for the next.

    They belong to the event loop that opened them: on another loop (a second
    ``asyncio.run``) new ones are opened.
    """

    placeholder = "?"

    def __init__(self) -> None:
        self._idle: list[Any] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @abc.abstractmethod
    async def _connect(self) -> Any: ...

    @abc.abstractmethod
    async def _begin(self, db: Any) -> None: ...

    @abc.abstractmethod
    def _errors(self) -> tuple[type[Exception], ...]: ...

    async def _connection(self) -> Any:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._idle = loop, []  # the old loop's are unusable here
        return self._idle.pop() if self._idle else await self._connect()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncInboxTransaction]:
        errors = self._errors()
        try:
            db = await self._connection()
            await self._begin(db)
        except errors as e:
            raise OutboxError(f"the inbox cannot open a transaction: {e}") from e

        async def run(sql: str, parameters: Sequence[object]) -> tuple[list[Any], int]:
            cursor = await db.execute(sql, parameters)
            rows = await cursor.fetchall() if cursor.description is not None else []
            return list(rows), int(cursor.rowcount)

        try:
            yield AsyncInboxTransaction(db, run, self.placeholder)
        except BaseException:
            try:
                await db.rollback()
            except errors:  # the connection is gone: the server rolled it back
                await self._discard(db)
            else:
                self._idle.append(db)
            raise
        try:
            await db.commit()
        except errors as e:
            await self._discard(db)
            raise OutboxError(f"the inbox's transaction did not commit: {e}") from e
        self._idle.append(db)

    async def write_rows(
        self, tx: AsyncInboxTransaction, rows: Sequence[tuple[object, ...]]
    ) -> None:
        await async_row_writer(tx.handle)(rows)

    async def ensure_tables(self) -> None:
        async with self.transaction() as tx:
            await async_create_tables(tx.handle)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for db in idle:
            await self._discard(db)

    async def _discard(self, db: Any) -> None:
        with suppress(*self._errors()):
            await db.close()


class _AiosqliteDatabase(_AsyncConnections):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    async def _connect(self) -> Any:
        try:
            import aiosqlite
        except ImportError as e:
            raise MissingExtraError("aiosqlite", "aiosqlite") from e
        return await aiosqlite.connect(self.path, timeout=30.0, isolation_level=None)

    async def _begin(self, db: Any) -> None:
        await db.execute("BEGIN IMMEDIATE")

    def _errors(self) -> tuple[type[Exception], ...]:
        return (sqlite3.Error,)


class _AsyncPsycopgDatabase(_AsyncConnections):
    placeholder = "%s"

    def __init__(self, conninfo: str) -> None:
        super().__init__()
        self.conninfo = conninfo

    async def _connect(self) -> Any:
        return await _psycopg().AsyncConnection.connect(self.conninfo)

    async def _begin(self, db: Any) -> None:
        return None  # psycopg begins a transaction with the first statement

    def _errors(self) -> tuple[type[Exception], ...]:
        return (_psycopg().Error,)


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
