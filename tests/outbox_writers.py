"""An application's own database, written the ways a service would: for the outbox tests.

``Writer`` does one business transaction: an ``orders`` row per event and
the event published into the outbox, then commit or rollback. One writer
per driver and flavour: ``sqlite3``, psycopg, SQLAlchemy sessions and
connections, and their asyncio twins (aiosqlite among them).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import BaseModel
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

from melange.models import Message
from melange.outbox import (
    AsyncOutboxPublisher,
    OutboxPublisher,
    async_create_tables,
    create_tables,
)

__all__ = ["WRITERS", "OrderPlaced", "Writer", "open_writer"]


class OrderPlaced(BaseModel):
    __melange_manifest__ = "outbox_order_placed"
    order_id: str


_ORDERS = "CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY)"

#: (name, database) of every writer.
WRITERS = (
    ("sqlite3", "sqlite"),
    ("psycopg", "postgresql"),
    ("sqlalchemy-session", "sqlite"),
    ("sqlalchemy-session", "postgresql"),
    ("sqlalchemy-connection", "postgresql"),
    ("sqlalchemy-async-session", "sqlite"),
    ("psycopg-async", "postgresql"),
    ("aiosqlite", "sqlite"),
)


@dataclass
class Writer:
    """One way of writing; ``url`` is the database for the relay."""

    url: str
    #: Write the orders and publish the events in one transaction; commit or not.
    transaction: Callable[[Sequence[OrderPlaced], bool, dict[str, Any]], list[Message]]
    orders: Callable[[], set[str]]


@contextmanager
def open_writer(name: str, database: str, tmp_path: Path, pg_url: str | None) -> Iterator[Writer]:
    """Yield the writer ``name`` on a fresh database (``pg_url`` for PostgreSQL)."""
    if database == "sqlite":
        path = tmp_path / "service.db"
        url = f"sqlite:///{path}"
    else:
        assert pg_url is not None
        url = pg_url
    maker = _MAKERS[name]
    with maker(url) as writer:
        yield writer


def _sqlite3(url: str) -> Iterator[Writer]:
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    db.execute(_ORDERS)
    create_tables(db)
    db.commit()

    def transaction(
        events: Sequence[OrderPlaced], commit: bool, kw: dict[str, Any]
    ) -> list[Message]:
        publisher = OutboxPublisher(db)
        sent = []
        for event in events:
            db.execute("INSERT INTO orders VALUES (?)", (event.order_id,))
            sent.append(publisher.publish(event, **kw))
        db.commit() if commit else db.rollback()
        return sent

    try:
        yield Writer(url, transaction, lambda: {r[0] for r in db.execute("SELECT * FROM orders")})
    finally:
        db.close()


def _psycopg(url: str) -> Iterator[Writer]:
    with psycopg.connect(url) as db:
        db.execute(_ORDERS)
        create_tables(db)
        db.commit()

        def transaction(
            events: Sequence[OrderPlaced], commit: bool, kw: dict[str, Any]
        ) -> list[Message]:
            publisher = OutboxPublisher(db)
            sent = []
            for event in events:
                db.execute("INSERT INTO orders VALUES (%s)", (event.order_id,))
                sent.append(publisher.publish(event, **kw))
            db.commit() if commit else db.rollback()
            return sent

        def orders() -> set[str]:
            with db.transaction():
                return {r[0] for r in db.execute("SELECT * FROM orders")}

        yield Writer(url, transaction, orders)


def sqlalchemy_url(url: str, driver: str) -> str:
    if "://" not in url:  # a libpq keyword string
        p = conninfo_to_dict(url)
        url = f"postgresql://{p['user']}@{p['host']}:{p['port']}/{p['dbname']}"
    scheme, _, rest = url.partition("://")
    return f"{scheme}+{driver}://{rest}"


def _sqlalchemy(url: str, *, sessions: bool) -> Iterator[Writer]:
    """Write through a SQLAlchemy ``Session`` (``sessions``) or a ``Connection``."""
    driver = "pysqlite" if url.startswith("sqlite") else "psycopg"
    engine = create_engine(sqlalchemy_url(url, driver))

    def opened() -> Any:
        return Session(engine) if sessions else engine.connect()

    with opened() as db:
        db.execute(text(_ORDERS))
        create_tables(db)
        db.commit()

    def transaction(
        events: Sequence[OrderPlaced], commit: bool, kw: dict[str, Any]
    ) -> list[Message]:
        with opened() as db:
            publisher = OutboxPublisher(db)
            sent = []
            for event in events:
                db.execute(text("INSERT INTO orders VALUES (:id)"), {"id": event.order_id})
                sent.append(publisher.publish(event, **kw))
            db.commit() if commit else db.rollback()
            return sent

    def orders() -> set[str]:
        with engine.connect() as connection:
            return {r[0] for r in connection.execute(text("SELECT * FROM orders"))}

    try:
        yield Writer(url, transaction, orders)
    finally:
        engine.dispose()


def _sqlalchemy_async_session(url: str) -> Iterator[Writer]:
    from sqlalchemy.ext.asyncio import AsyncSession

    engine = create_async_engine(sqlalchemy_url(url, "aiosqlite"))

    async def setup() -> None:
        async with AsyncSession(engine) as session:
            await session.execute(text(_ORDERS))
            await async_create_tables(session)
            await session.commit()

    async def transaction_async(
        events: Sequence[OrderPlaced], commit: bool, kw: dict[str, Any]
    ) -> list[Message]:
        async with AsyncSession(engine) as session:
            publisher = AsyncOutboxPublisher(session)
            sent = []
            for event in events:
                await session.execute(
                    text("INSERT INTO orders VALUES (:id)"), {"id": event.order_id}
                )
                sent.append(await publisher.publish(event, **kw))
            await (session.commit() if commit else session.rollback())
            return sent

    async def orders_async() -> set[str]:
        async with engine.connect() as connection:
            return {r[0] for r in await connection.execute(text("SELECT * FROM orders"))}

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(setup())
        yield Writer(
            url,
            lambda events, commit, kw: loop.run_until_complete(
                transaction_async(events, commit, kw)
            ),
            lambda: loop.run_until_complete(orders_async()),
        )
    finally:
        loop.run_until_complete(engine.dispose())
        loop.close()


def _async_driver(url: str, *, sqlite: bool) -> Iterator[Writer]:
    """Write through an aiosqlite connection (``sqlite``) or a psycopg ``AsyncConnection``."""
    loop = asyncio.new_event_loop()
    mark = "?" if sqlite else "%s"

    async def connect() -> Any:
        if sqlite:
            import aiosqlite

            db: Any = await aiosqlite.connect(url.removeprefix("sqlite:///"))
        else:
            db = await psycopg.AsyncConnection.connect(url)
        await db.execute(_ORDERS)
        await async_create_tables(db)
        await db.commit()
        return db

    db = loop.run_until_complete(connect())

    async def transaction_async(
        events: Sequence[OrderPlaced], commit: bool, kw: dict[str, Any]
    ) -> list[Message]:
        publisher = AsyncOutboxPublisher(db)
        sent = []
        for event in events:
            await db.execute(f"INSERT INTO orders VALUES ({mark})", (event.order_id,))
            sent.append(await publisher.publish(event, **kw))
        await (db.commit() if commit else db.rollback())
        return sent

    async def orders_async() -> set[str]:
        cursor = await db.execute("SELECT * FROM orders")
        rows = {r[0] for r in await cursor.fetchall()}
        await db.rollback()  # psycopg opened a transaction to read
        return rows

    try:
        yield Writer(
            url,
            lambda events, commit, kw: loop.run_until_complete(
                transaction_async(events, commit, kw)
            ),
            lambda: loop.run_until_complete(orders_async()),
        )
    finally:
        loop.run_until_complete(db.close())
        loop.close()


_MAKERS: dict[str, Callable[[str], Any]] = {
    "sqlite3": contextmanager(_sqlite3),
    "psycopg": contextmanager(_psycopg),
    "sqlalchemy-session": contextmanager(partial(_sqlalchemy, sessions=True)),
    "sqlalchemy-connection": contextmanager(partial(_sqlalchemy, sessions=False)),
    "sqlalchemy-async-session": contextmanager(_sqlalchemy_async_session),
    "psycopg-async": contextmanager(partial(_async_driver, sqlite=False)),
    "aiosqlite": contextmanager(partial(_async_driver, sqlite=True)),
}
