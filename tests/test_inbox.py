"""The inbox: each handler attempt in one transaction with the record of the message.

On a real SQLite file and a real PostgreSQL server, through URLs and
SQLAlchemy engines, sync and asyncio; the broker is the embedded SQLite one.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine

from melange import Consumer, MessageDispatcher, MessagePublisher, listener
from melange.aio import AsyncMessageDispatcher, BridgedBackend
from melange.backends.sqlite import SQLiteBackend
from melange.exceptions import ConfigurationError
from melange.outbox import Inbox, OutboxPublisher, Relay, transaction
from melange.policies import RetryPolicy
from melange.testing import receive
from tests.outbox_writers import OrderPlaced, sqlalchemy_url


class InvoiceIssued(BaseModel):
    __melange_manifest__ = "inbox_invoice_issued"
    order_id: str


INVOICES = "CREATE TABLE IF NOT EXISTS invoices (order_id TEXT NOT NULL)"


class Billing(Consumer):
    """Writes an invoice and announces it; fails the first ``fail_first`` attempts after writing."""

    def __init__(self, publisher: MessagePublisher, fail_first: int = 0) -> None:
        super().__init__(consumer_id="billing")
        self.publisher = publisher
        self.attempts = 0
        self.fail_first = fail_first

    @listener
    def on_placed(self, event: OrderPlaced) -> None:
        self.attempts += 1
        db = transaction()
        if isinstance(db, sqlite3.Connection):
            db.execute("INSERT INTO invoices VALUES (?)", (event.order_id,))
        elif isinstance(db, psycopg.Connection):
            db.execute("INSERT INTO invoices VALUES (%s)", (event.order_id,))
        else:
            db.execute(text("INSERT INTO invoices VALUES (:id)"), {"id": event.order_id})
        self.publisher.publish(InvoiceIssued(order_id=event.order_id))
        if self.attempts <= self.fail_first:
            raise RuntimeError("failed after writing")


DATABASES = ["sqlite-url", "postgres-url", "sqlalchemy-sqlite", "sqlalchemy-postgres"]


@pytest.fixture(params=DATABASES)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, str]]:
    """Yield (what the Inbox takes, the URL the relay and the checks use)."""
    kind = request.param
    if kind.endswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'service.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
    _run(url, INVOICES)
    if kind.endswith("-url"):
        yield url, url
        return
    engine = create_engine(sqlalchemy_url(url, "pysqlite" if "sqlite" in url else "psycopg"))
    yield engine, url
    engine.dispose()


def _run(url: str, sql: str) -> list[tuple[Any, ...]]:
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            return db.execute(sql).fetchall()
    with psycopg.connect(url) as db:
        cursor = db.execute(sql)
        return cursor.fetchall() if cursor.description else []


@pytest.fixture
def inboxes() -> Iterator[list[Inbox]]:
    """Inboxes a test made, closed after it."""
    made: list[Inbox] = []
    yield made
    for inbox in made:
        inbox.close()


def opened(inboxes: list[Inbox], target: Any, **options: Any) -> Inbox:
    inbox = Inbox(target, **options)
    inboxes.append(inbox)
    return inbox


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[SQLiteBackend]:
    with SQLiteBackend(tmp_path / "broker.db") as backend:
        yield backend


def test_a_redelivered_message_is_acknowledged_without_running_again(
    inboxes: list[Inbox], database: tuple[Any, str], broker: SQLiteBackend
) -> None:
    target, url = database
    publisher = MessagePublisher(broker)
    billing = Billing(publisher)
    inbox = opened(inboxes, target)
    dispatcher = MessageDispatcher(broker, [billing], middleware=[inbox])
    dispatcher.declare("billing")
    message = publisher.publish(OrderPlaced(order_id="o-1"))
    publisher.send(message, topic=message.manifest)  # delivered again: the same id

    dispatcher.consume_loop("billing", max_messages=2)

    assert billing.attempts == 1
    assert _run(url, "SELECT order_id FROM invoices") == [("o-1",)]
    assert dispatcher.outcomes.summary().startswith("1 succeeded")
    assert "1 skipped" in dispatcher.outcomes.summary()
    rows = _run(url, "SELECT consumer_id, message_id FROM melange_inbox")
    assert rows == [("billing", message.message_id)]
    assert _run(url, "SELECT manifest FROM melange_outbox") == [("inbox_invoice_issued",)]


def test_a_failed_attempt_leaves_no_effect_and_no_publish(
    inboxes: list[Inbox], database: tuple[Any, str], broker: SQLiteBackend
) -> None:
    target, url = database
    publisher = MessagePublisher(broker)
    billing = Billing(publisher, fail_first=2)
    dispatcher = MessageDispatcher(
        broker,
        [billing],
        middleware=[opened(inboxes, target)],
        retry=RetryPolicy(immediate_attempts=3),
    )
    dispatcher.declare("billing")
    issued, _ = broker.declare_queue("issued", broker.declare_topic("inbox_invoice_issued"))
    publisher.publish(OrderPlaced(order_id="o-1"))

    dispatcher.consume_loop("billing", max_messages=1)

    assert billing.attempts == 3
    assert _run(url, "SELECT order_id FROM invoices") == [("o-1",)]  # two attempts undone
    assert broker.queue_stats(issued).ready == 0  # nothing left before the commit
    with Relay(url, broker) as relay:
        assert relay.relay_once() == 1
    [announced] = receive(broker, issued, 1, timeout=2)
    assert '"o-1"' in announced.content


def test_a_handler_that_always_fails_records_nothing(
    inboxes: list[Inbox], database: tuple[Any, str], broker: SQLiteBackend
) -> None:
    target, url = database
    billing = Billing(MessagePublisher(broker), fail_first=99)
    dispatcher = MessageDispatcher(
        broker, [billing], middleware=[opened(inboxes, target)], retry=RetryPolicy.none()
    )
    dispatcher.declare("billing")
    MessagePublisher(broker).publish(OrderPlaced(order_id="o-1"))
    dispatcher.consume_loop("billing", max_messages=1)
    assert _run(url, "SELECT count(*) FROM invoices") == [(0,)]
    assert _run(url, "SELECT count(*) FROM melange_inbox") == [(0,)]
    assert _run(url, "SELECT count(*) FROM melange_outbox") == [(0,)]
    assert "1 dead-lettered" in dispatcher.outcomes.summary()


def test_an_outbox_publisher_on_the_transaction_joins_it(
    inboxes: list[Inbox], tmp_path: Path, broker: SQLiteBackend
) -> None:
    url = f"sqlite:///{tmp_path / 'service.db'}"

    class Shipping(Consumer):
        @listener
        def on_placed(self, event: OrderPlaced) -> None:
            OutboxPublisher(transaction()).publish(InvoiceIssued(order_id=event.order_id))

    dispatcher = MessageDispatcher(broker, [Shipping()], middleware=[opened(inboxes, url)])
    dispatcher.declare("shipping")
    MessagePublisher(broker).publish(OrderPlaced(order_id="o-7"))
    dispatcher.consume_loop("shipping", max_messages=1)
    assert _run(url, "SELECT count(*) FROM melange_outbox") == [(1,)]
    assert _run(url, "SELECT count(*) FROM melange_inbox") == [(1,)]


def test_transaction_outside_an_inbox_says_so() -> None:
    with pytest.raises(ConfigurationError, match="Inbox"):
        transaction()


def test_expired_records_are_purged_after_the_retention(
    inboxes: list[Inbox], tmp_path: Path, broker: SQLiteBackend
) -> None:
    url = f"sqlite:///{tmp_path / 'service.db'}"
    _run(url, INVOICES)
    clock = [1_000_000.0]
    inbox = opened(inboxes, url, retention_seconds=3600, clock=lambda: clock[0])
    publisher = MessagePublisher(broker)
    dispatcher = MessageDispatcher(broker, [Billing(publisher)], middleware=[inbox])
    dispatcher.declare("billing")
    publisher.publish(OrderPlaced(order_id="o-1"))
    dispatcher.consume_loop("billing", max_messages=1)
    clock[0] += 3601
    publisher.publish(OrderPlaced(order_id="o-2"))
    dispatcher.consume_loop("billing", max_messages=1)
    # The first record expired and went with the second handling's purge.
    assert [r[0] for r in _run(url, "SELECT processed_at FROM melange_inbox")] == [clock[0]]


# -- asyncio ----------------------------------------------------------------------------


class AsyncBilling(Consumer):
    def __init__(self) -> None:
        super().__init__(consumer_id="async-billing")
        self.attempts = 0
        self.handles = ""

    @listener
    async def on_placed(self, event: OrderPlaced) -> None:
        self.attempts += 1
        db = transaction()
        if isinstance(db, psycopg.AsyncConnection):
            await db.execute("INSERT INTO invoices VALUES (%s)", (event.order_id,))
        elif type(db).__module__.startswith("aiosqlite"):
            await db.execute("INSERT INTO invoices VALUES (?)", (event.order_id,))
        else:
            await db.execute(text("INSERT INTO invoices VALUES (:id)"), {"id": event.order_id})
        await asyncio.sleep(0)
        if self.attempts == 1:
            raise RuntimeError("failed after writing")
        self.handles = f"{type(db).__module__.partition('.')[0]}.{type(db).__name__}"


ASYNC_KINDS = [
    "aiosqlite",
    "psycopg-async",
    "aiosqlite-url",
    "psycopg-async-url",
    "plain-listener-sync-database",
]


@pytest.mark.parametrize("kind", ASYNC_KINDS)
def test_the_async_dispatcher_runs_each_attempt_in_a_transaction(
    inboxes: list[Inbox],
    kind: str,
    tmp_path: Path,
    broker: SQLiteBackend,
    request: pytest.FixtureRequest,
) -> None:
    if kind.startswith("psycopg"):
        url = request.getfixturevalue("postgres_database")
    else:
        url = f"sqlite:///{tmp_path / 'service.db'}"
    _run(url, INVOICES)
    publisher = MessagePublisher(broker)
    consumer: Consumer = AsyncBilling()
    if kind.endswith("-url"):  # a URL: async def listeners get the driver's AsyncConnection
        engine: Any = None
        inbox = opened(inboxes, url)
    elif kind != "plain-listener-sync-database":
        driver = "aiosqlite" if kind == "aiosqlite" else "psycopg"
        engine = create_async_engine(sqlalchemy_url(url, driver))
        inbox = opened(inboxes, engine)
    else:
        engine = create_engine(sqlalchemy_url(url, "pysqlite"))
        inbox = opened(inboxes, engine)
        consumer = Billing(publisher, fail_first=1)
    dispatcher = AsyncMessageDispatcher(
        BridgedBackend(broker),
        consumers=[consumer],
        middleware=[inbox],
        retry=RetryPolicy(immediate_attempts=2),
    )

    async def run() -> None:
        await dispatcher.declare("billing")
        message = publisher.publish(OrderPlaced(order_id="o-1"))
        publisher.send(message, topic=message.manifest)
        publisher.send(message, topic=message.manifest)
        await dispatcher.consume_loop("billing", max_messages=3)
        if kind.endswith("-url"):
            await inbox.aclose()
        elif kind != "plain-listener-sync-database":
            await engine.dispose()

    asyncio.run(run())
    if kind == "plain-listener-sync-database":
        engine.dispose()
    assert _run(url, "SELECT order_id FROM invoices") == [("o-1",)]
    assert _run(url, "SELECT count(*) FROM melange_inbox") == [(1,)]
    assert "2 skipped" in dispatcher.outcomes.summary()
    if kind.endswith("-url"):
        expected = "aiosqlite.Connection" if "sqlite" in kind else "psycopg.AsyncConnection"
        assert getattr(consumer, "handles", None) == expected
