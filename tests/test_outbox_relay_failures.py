"""A relay killed between the broker's confirm and the delete, and a broker outage.

Duplicates come only under the same ids, and the inbox absorbs them; an
outage makes the outbox grow and then drain, nothing lost. Real processes,
SIGKILL, and a real RabbitMQ node stopped for 10 s.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from melange import Consumer, MessageDispatcher, listener
from melange.backends.interfaces import MessagingBackend
from melange.backends.rabbitmq import RabbitMQBackend
from melange.outbox import Inbox, OutboxPublisher, Relay, create_tables, transaction
from melange.testing import unique_name
from tests.inbox_workers import EFFECTS, connect, mark
from tests.outbox_support import (
    TOPIC,
    broker,
    broker_url,
    database,
    drained,
    rows,
    subscribed,
    worker,
)
from tests.outbox_writers import OrderPlaced
from tests.servers.rabbitmq import RabbitMQNode

__all__ = ["broker", "broker_url", "database"]  # the fixtures this module uses

pytestmark = pytest.mark.slow


def test_a_relay_killed_between_confirm_and_delete_duplicates_only_what_the_inbox_absorbs(
    database: str, broker_url: str, broker: MessagingBackend, tmp_path: Path
) -> None:
    effects_db = f"sqlite:///{tmp_path / 'billing.db'}"
    db = connect(effects_db)
    db.execute(EFFECTS)
    db.commit()
    db.close()

    class Billing(Consumer):
        calls = 0

        @listener
        def on_placed(self, event: OrderPlaced) -> None:
            Billing.calls += 1
            insert = f"INSERT INTO effects VALUES ({mark(effects_db)})"
            transaction().execute(insert, (event.order_id,))

    with Inbox(effects_db) as inbox:
        dispatcher = MessageDispatcher(broker, [Billing()], middleware=[inbox])
        name = unique_name("billing")
        dispatcher.declare(name, topics=[TOPIC])
        assert worker("produce", "--database", database, "--count", "300") == 0
        relay = ("relay", "--database", database, "--broker", broker_url)
        assert worker(*relay, "--kill-after-send-of-round", "2", "--lease-seconds", "1") == -9
        assert worker(*relay) == 0
        handled = dispatcher.consume_loop(name, max_messages=350, idle_timeout=10)
    effects = Counter(order for (order,) in rows(effects_db, "SELECT order_id FROM effects"))
    assert len(effects) == 300
    assert set(effects.values()) == {1}
    assert Billing.calls == 300
    assert handled == 350  # the round sent twice came twice, under the same ids
    assert "300 succeeded" in dispatcher.outcomes.summary()
    assert "50 skipped" in dispatcher.outcomes.summary()


def test_the_outbox_grows_while_the_broker_is_down_then_drains(
    rabbitmq_node: RabbitMQNode, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'service.db'}"
    db = sqlite3.connect(tmp_path / "service.db", check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    create_tables(db)
    db.commit()
    written: list[str] = []
    stop = threading.Event()

    def produce() -> None:
        publisher = OutboxPublisher(db)
        n = 0
        while not stop.is_set():
            written.append(publisher.publish(OrderPlaced(order_id=f"o-{n}")).message_id)
            db.commit()
            n += 1
            time.sleep(0.02)

    with RabbitMQBackend(rabbitmq_node.url, confirm_timeout=2) as backend:
        queue = subscribed(backend)
        relay = Relay(url, backend, poll_interval=0.05, max_backoff=2)
        relay.start()
        producer = threading.Thread(target=produce)
        producer.start()
        depths = []
        try:
            time.sleep(2)
            rabbitmq_node.stop_node()
            try:
                for _ in range(20):  # 10 s down, the producer going on
                    time.sleep(0.5)
                    depths.append(relay.depth().pending)
            finally:
                rabbitmq_node.start()
            time.sleep(2)
        finally:
            stop.set()
            producer.join()
        deadline = time.monotonic() + 90
        while relay.depth().pending and time.monotonic() < deadline:
            time.sleep(0.2)
        left = relay.depth()
        relay.close()
        got = drained(backend, queue, len(written))
    db.close()
    assert max(depths) > 100, depths  # it grew while the broker was down
    assert depths[-1] > depths[0], depths
    assert relay.stats["outages"] > 0
    assert (left.pending, left.dead) == (0, 0)
    # Nothing lost; a send left unconfirmed by the outage may come twice.
    assert {m.message_id for m in got} == set(written)
