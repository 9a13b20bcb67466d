"""The caller's own connection or session, as the outbox writes through it.

Rows go through whatever the application already holds: a ``sqlite3``
connection, a psycopg 3 connection, or a SQLAlchemy 2 ``Session`` or
``Connection`` (for the async writer: an aiosqlite or psycopg
``AsyncConnection``, or a SQLAlchemy ``AsyncSession`` or ``AsyncConnection``). Nothing here
commits: the rows are part of the caller's transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from melange.exceptions import ConfigurationError, OutboxError
from melange.outbox._schema import OUTBOX_COLUMNS, OUTBOX_TABLE, ddl

__all__ = [
    "AsyncRowWriter",
    "RowWriter",
    "async_create_tables",
    "async_row_writer",
    "create_tables",
    "dialect_of",
    "row_writer",
]

RowWriter = Callable[[Sequence[tuple[object, ...]]], None]
AsyncRowWriter = Callable[[Sequence[tuple[object, ...]]], Awaitable[None]]

_COLUMNS = ", ".join(OUTBOX_COLUMNS)
_QMARK = f"INSERT INTO {OUTBOX_TABLE} ({_COLUMNS}) VALUES ({', '.join('?' * len(OUTBOX_COLUMNS))})"
_FORMAT = _QMARK.replace("?", "%s")
_EXPECTED = "a sqlite3 or psycopg connection, or a SQLAlchemy Session or Connection"
_EXPECTED_ASYNC = (
    "an aiosqlite connection, a psycopg AsyncConnection, or a SQLAlchemy AsyncSession"
    " or AsyncConnection"
)


def _family(connection: object) -> str:
    """Return which library made ``connection``, by the module of its type."""
    for kind in type(connection).__mro__:
        root = kind.__module__.partition(".")[0]
        if root in ("sqlite3", "psycopg", "sqlalchemy", "aiosqlite"):
            return root
    return ""


def row_writer(connection: object) -> RowWriter:
    """Return how outbox rows are added through ``connection``, in its transaction.

    Raises:
        ConfigurationError: not a connection or session the outbox knows.
    """
    family = _family(connection)
    if isinstance(connection, sqlite3.Connection):
        db = connection

        def write_sqlite(rows: Sequence[tuple[object, ...]]) -> None:
            with _errors(sqlite3.Error):
                if len(rows) == 1:
                    db.execute(_QMARK, rows[0])
                else:
                    db.executemany(_QMARK, rows)

        return write_sqlite
    if family == "psycopg":
        import psycopg

        if isinstance(connection, psycopg.Connection):
            pg = connection

            def write_psycopg(rows: Sequence[tuple[object, ...]]) -> None:
                with _errors(psycopg.Error):
                    if len(rows) == 1:  # executemany costs a round trip more
                        pg.execute(_FORMAT, rows[0])
                    else:
                        with pg.cursor() as cursor:
                            cursor.executemany(_FORMAT, rows)

            return write_psycopg
    if family == "sqlalchemy":
        from sqlalchemy.engine import Connection
        from sqlalchemy.orm import Session, scoped_session

        if isinstance(connection, Session | Connection | scoped_session):
            executes: Any = connection
            insert, errors = _sqlalchemy_insert()

            def write_sqlalchemy(rows: Sequence[tuple[object, ...]]) -> None:
                with _errors(errors):
                    executes.execute(
                        insert, [dict(zip(OUTBOX_COLUMNS, r, strict=True)) for r in rows]
                    )

            return write_sqlalchemy
    raise ConfigurationError(f"an outbox writes through {_EXPECTED}, not {type(connection)!r}")


def async_row_writer(connection: object) -> AsyncRowWriter:
    """Return how outbox rows are added through an asyncio ``connection``, in its transaction.

    Raises:
        ConfigurationError: not a connection or session the outbox knows.
    """
    family = _family(connection)
    if family == "psycopg":
        import psycopg

        if isinstance(connection, psycopg.AsyncConnection):
            pg = connection

            async def write_psycopg(rows: Sequence[tuple[object, ...]]) -> None:
                with _errors(psycopg.Error):
                    if len(rows) == 1:
                        await pg.execute(_FORMAT, rows[0])
                    else:
                        async with pg.cursor() as cursor:
                            await cursor.executemany(_FORMAT, rows)

            return write_psycopg
    if family == "aiosqlite":
        lite: Any = connection

        async def write_aiosqlite(rows: Sequence[tuple[object, ...]]) -> None:
            with _errors(sqlite3.Error):
                await lite.executemany(_QMARK, rows)

        return write_aiosqlite
    if family == "sqlalchemy":
        from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_scoped_session

        if isinstance(connection, AsyncSession | AsyncConnection | async_scoped_session):
            executes: Any = connection
            insert, errors = _sqlalchemy_insert()

            async def write_sqlalchemy(rows: Sequence[tuple[object, ...]]) -> None:
                with _errors(errors):
                    await executes.execute(
                        insert, [dict(zip(OUTBOX_COLUMNS, r, strict=True)) for r in rows]
                    )

            return write_sqlalchemy
    raise ConfigurationError(
        f"an async outbox writes through {_EXPECTED_ASYNC}, not {type(connection)!r}"
    )


def dialect_of(connection: object) -> str:
    """Return ``"sqlite"`` or ``"postgresql"``: the database behind ``connection``.

    Raises:
        ConfigurationError: another database, or not a connection the outbox knows.
    """
    family = _family(connection)
    if isinstance(connection, sqlite3.Connection):
        return "sqlite"
    if family == "psycopg":
        return "postgresql"
    if family == "aiosqlite":
        return "sqlite"
    if family == "sqlalchemy":
        bind: Any = connection
        if hasattr(bind, "get_bind"):  # a session
            bind = bind.get_bind()
        name = str(bind.dialect.name)
        ddl(name)  # raises for a database the outbox does not know
        return name
    raise ConfigurationError(f"an outbox writes through {_EXPECTED}, not {type(connection)!r}")


def create_tables(connection: object) -> None:
    """Create the outbox and inbox tables through ``connection`` unless they exist.

    The statements run in the caller's transaction, if one is open: commit it.

    Raises:
        ConfigurationError: not a connection the outbox knows, or another database.
        OutboxError: the database refused the statements.
    """
    dialect = dialect_of(connection)
    if _family(connection) == "sqlalchemy":
        from sqlalchemy import exc

        from melange.outbox.sqlalchemy import metadata

        bind: Any = connection
        with _errors(exc.SQLAlchemyError):
            metadata.create_all(bind.connection() if hasattr(bind, "get_bind") else bind)
        return
    executes: Any = connection
    kinds: tuple[type[Exception], ...] = (sqlite3.Error,)
    if _family(connection) == "psycopg":
        import psycopg

        kinds = (psycopg.Error,)
    with _errors(*kinds):
        for statement in ddl(dialect):
            executes.execute(statement)


async def async_create_tables(connection: object) -> None:
    """``create_tables`` through an asyncio connection or session."""
    if _family(connection) == "sqlalchemy":
        from sqlalchemy import exc

        from melange.outbox.sqlalchemy import metadata

        bind: Any = connection
        with _errors(exc.SQLAlchemyError):
            if hasattr(bind, "get_bind"):  # a session
                bind = await bind.connection()
            await bind.run_sync(metadata.create_all)
        return
    executes: Any = connection
    if _family(connection) == "aiosqlite":
        with _errors(sqlite3.Error):
            for statement in ddl("sqlite"):
                await executes.execute(statement)
        return
    import psycopg

    if not isinstance(connection, psycopg.AsyncConnection):
        raise ConfigurationError(
            f"an async outbox writes through {_EXPECTED_ASYNC}, not {type(connection)!r}"
        )
    with _errors(psycopg.Error):
        for statement in ddl("postgresql"):
            await connection.execute(statement)


def _named(rows: Sequence[tuple[object, ...]]) -> list[dict[str, object]]:
    return [dict(zip(OUTBOX_COLUMNS, row, strict=True)) for row in rows]


def _sqlalchemy_insert() -> tuple[Any, type[Exception]]:
    from sqlalchemy import exc, insert

    from melange.outbox.sqlalchemy import outbox_table

    return insert(outbox_table), exc.SQLAlchemyError


@contextmanager
def _errors(*kinds: type[Exception]) -> Iterator[None]:
    """Turn a driver's errors into ``OutboxError`` (the caller's transaction is theirs to end)."""
    try:
        yield
    except kinds as e:
        raise OutboxError(f"the outbox table cannot be written: {e}") from e
