"""A saga whose store is the service's database, writing what it sends to ``melange_outbox``.

State, outgoing commands and the record of the event handled are one
transaction; the runner's ``Relay`` sends the commands after the commit. On a
real SQLite file and a real PostgreSQL server.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from melange import MessageDispatcher, MessagePublisher
from melange.backends.memory import InMemoryMessagingBackend
from melange.saga import PostgresSagaStore, SagaStatus, SQLiteSagaStore
from melange.saga._store import SagaStore
from melange.testing import wait_until
from tests.test_saga import Commands, OrderPlaced, OrderSaga, PaymentCharged, StockReserved


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SagaStore]:
    if request.param == "sqlite":
        made: SagaStore = SQLiteSagaStore(tmp_path / "service.db", outbox=True)
    else:
        made = PostgresSagaStore(request.getfixturevalue("postgres_database"), outbox=True)
    yield made
    made.close()


def rows(store: SagaStore, sql: str) -> list[tuple[Any, ...]]:
    url = store.outbox_url
    assert url is not None
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            return db.execute(sql).fetchall()
    with psycopg.connect(url) as db:
        return db.execute(sql).fetchall()


def test_a_saga_sends_through_the_service_outbox_and_a_redelivery_sends_nothing(
    store: SagaStore,
) -> None:
    backend = InMemoryMessagingBackend()
    publisher = MessagePublisher(backend)
    saga = OrderSaga(store, publisher, queue="orders", poll_interval=0.05)
    orders = MessageDispatcher(backend, [saga])
    orders.declare("orders")
    commands = Commands()
    services = MessageDispatcher(backend, [commands])
    for queue in ("inventory", "payments"):
        services.declare(queue)

    def received() -> list[str]:
        for queue in ("inventory", "payments"):
            services.consume_loop(queue, idle_timeout=0)
        return [name for name, _, _ in commands.received]

    try:
        publisher.publish(OrderPlaced(order_id="o-1"), queue="orders")
        orders.consume_loop("orders", max_messages=1)
        assert wait_until(lambda: received() == ["ReserveStock"])
        publisher.publish(StockReserved(order_id="o-1"), queue="orders")
        orders.consume_loop("orders", max_messages=1)
        assert wait_until(lambda: received() == ["ReserveStock", "ChargePayment"])
        charged = publisher.publish(PaymentCharged(order_id="o-1"), queue="orders")
        orders.consume_loop("orders", max_messages=1)
        publisher.send(charged, queue="orders")  # delivered again
        orders.consume_loop("orders", max_messages=1)
    finally:
        saga.close()

    record = store.find("OrderSaga", "o-1")
    assert record is not None
    assert record.status is SagaStatus.COMPLETED
    assert saga.stats["redelivered"] == 1
    assert received() == ["ReserveStock", "ChargePayment"]  # nothing sent twice
    assert rows(store, "SELECT count(*) FROM melange_saga_outbox") == [(0,)]
    # The payment timeout went through the outbox too, delayed: relayed, not left behind.
    assert rows(store, "SELECT count(*) FROM melange_outbox") == [(0,)]
    assert rows(store, "SELECT count(*) FROM melange_sagas") == [(1,)]


def test_a_store_url_asks_for_the_outbox(tmp_path: Path) -> None:
    from melange.saga import saga_store_from_url

    with saga_store_from_url(f"sqlite:///{tmp_path / 'a.db'}?outbox=true") as relayed:
        assert relayed.outbox_url == f"sqlite:///{tmp_path / 'a.db'}"
    with saga_store_from_url(f"sqlite:///{tmp_path / 'b.db'}") as plain:
        assert plain.outbox_url is None
