"""``declare_queue(..., filter_events=[...])`` on RabbitMQ, SQLite and in memory: real brokers."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from melange import Consumer, MessageDispatcher, MessagePublisher, listener
from melange.backends.interfaces import MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.sqlite import SQLiteBackend
from melange.exceptions import ConfigurationError
from melange.models import Message, QueueWrapper
from melange.outcomes import OutcomeKind
from melange.testing import unique_name
from tests.servers.rabbitmq import RabbitMQNode


class Placed(BaseModel):
    __melange_manifest__ = "filters.placed"
    n: int


class Shipped(BaseModel):
    __melange_manifest__ = "filters.shipped"
    n: int


class Refunded(BaseModel):
    __melange_manifest__ = "filters.refunded-€"  # not ASCII: a UTF-8 routing key
    n: int


PLACED, SHIPPED, REFUNDED = (e.__melange_manifest__ for e in (Placed, Shipped, Refunded))


@pytest.fixture(
    params=[
        "memory",
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MessagingBackend]:
    made: MessagingBackend
    if request.param == "memory":
        made = InMemoryMessagingBackend()
    elif request.param == "sqlite":
        made = SQLiteBackend(tmp_path / "broker.db", synchronous="NORMAL")
    else:
        from melange.backends.rabbitmq import RabbitMQBackend

        made = RabbitMQBackend(request.getfixturevalue("rabbitmq_node").url)
    with made:
        yield made


def taken(backend: MessagingBackend, queue: QueueWrapper, expected: int) -> list[Message]:
    """Receive and acknowledge ``expected`` messages, and whatever else arrives in 0.2 s more."""
    got: list[Message] = []
    deadline = time.monotonic() + 10
    while len(got) < expected and time.monotonic() < deadline:
        batch = backend.retrieve_messages(queue, max_messages=10, wait_seconds=0.5)
        backend.acknowledge_batch(batch)  # RabbitMQ hands out at most prefetch unacknowledged
        got += batch
    while batch := backend.retrieve_messages(queue, max_messages=10, wait_seconds=0.2):
        backend.acknowledge_batch(batch)
        got += batch
    return got


def manifests_in(backend: MessagingBackend, queue: QueueWrapper, expected: int) -> Counter[str]:
    """Return how many of each manifest ``taken`` got."""
    return Counter(str(m.manifest) for m in taken(backend, queue, expected))


def test_each_queue_gets_only_the_manifests_it_lists(backend: MessagingBackend) -> None:
    topic_name = unique_name("orders")
    topic = backend.declare_topic(topic_name)
    a, _ = backend.declare_queue(unique_name("a"), topic, filter_events=[PLACED])
    b, _ = backend.declare_queue(unique_name("b"), topic, filter_events=(SHIPPED, REFUNDED))
    c, _ = backend.declare_queue(unique_name("c"), topic)
    publisher = MessagePublisher(backend)
    for n in range(3):
        publisher.publish(Placed(n=n), topic=topic_name)
    publisher.publish(Shipped(n=0), topic=topic_name)
    publisher.publish_batch(
        [Placed(n=9), Shipped(n=1), Refunded(n=2), {"plain": "dict"}], topic=topic_name
    )
    everything = manifests_in(backend, c, 7)
    assert manifests_in(backend, a, 4) == {PLACED: 4}
    assert manifests_in(backend, b, 3) == {SHIPPED: 2, REFUNDED: 1}
    assert everything == {PLACED: 4, SHIPPED: 2, REFUNDED: 1, "None": 1}  # a dict has none

    # Declared again with another list: that list, and no longer the first.
    backend.declare_queue(a.unwrap(), topic, filter_events=[SHIPPED, REFUNDED])
    # Declared again without one: left filtered.
    backend.declare_queue(a.unwrap(), topic)
    publisher.publish_batch([Placed(n=1), Shipped(n=2), Refunded(n=3)], topic=topic_name)
    assert manifests_in(backend, a, 2) == {SHIPPED: 1, REFUNDED: 1}
    assert manifests_in(backend, b, 2) == {SHIPPED: 1, REFUNDED: 1}
    assert manifests_in(backend, c, 3) == {PLACED: 1, SHIPPED: 1, REFUNDED: 1}


def test_a_message_every_filter_keeps_out_is_unrouted(backend: MessagingBackend) -> None:
    from melange import signals

    topic = backend.declare_topic(unique_name("t"))
    queue, _ = backend.declare_queue(unique_name("q"), topic, filter_events=[PLACED])
    unrouted: list[Message] = []

    def seen(sender: Any, message: Message, topic: str) -> None:
        unrouted.append(message)

    kept = Message(content="{}", manifest=SHIPPED)
    with signals.message_unrouted.connected_to(seen, sender=backend):
        backend.publish_batch_to_topic([Message(content="{}", manifest=PLACED), kept], topic)
    assert [m.message_id for m in unrouted] == [kept.message_id]
    assert manifests_in(backend, queue, 1) == {PLACED: 1}


@pytest.mark.parametrize("bad", ["filters.placed", [], [""], [None], [3], 42])
def test_filter_events_must_be_a_list_of_manifests(backend: MessagingBackend, bad: Any) -> None:
    topic = backend.declare_topic(unique_name("t"))
    with pytest.raises(ConfigurationError, match="filter_events"):
        backend.declare_queue(unique_name("q"), topic, filter_events=bad)


# -- RabbitMQ: routing keys, other connections ---------------------------------------------


@pytest.mark.rabbitmq
@pytest.mark.parametrize("manifest", ["x" * 256, "é" * 128, "bad-\udcff"])
def test_rabbitmq_refuses_manifests_that_cannot_be_routing_keys(
    rabbitmq_node: RabbitMQNode, manifest: str
) -> None:
    from melange.backends.rabbitmq import RabbitMQBackend

    with RabbitMQBackend(rabbitmq_node.url) as backend:
        topic = backend.declare_topic(unique_name("t"))
        with pytest.raises(ConfigurationError, match="filter_events"):
            backend.declare_queue(unique_name("q"), topic, filter_events=[manifest])


@pytest.mark.rabbitmq
def test_rabbitmq_another_connection_replaces_the_list_with_no_gap(
    rabbitmq_node: RabbitMQNode,
) -> None:
    """Another backend (a restarted service) re-declares while messages flow: none is missed."""
    from melange.backends.rabbitmq import RabbitMQBackend

    with (
        RabbitMQBackend(rabbitmq_node.url) as first,
        RabbitMQBackend(rabbitmq_node.url) as second,
    ):
        topic = first.declare_topic(unique_name("t"))
        name = unique_name("q")
        queue, _ = first.declare_queue(name, topic)  # plain first: the filter must replace it
        first.declare_queue(name, topic, filter_events=[PLACED, SHIPPED])
        stop = threading.Event()
        sent = Counter[str]()

        def publish() -> None:
            while not stop.is_set():
                batch = [Message(content="{}", manifest=m) for m in (PLACED, SHIPPED, REFUNDED)]
                first.publish_batch_to_topic(batch, topic)
                sent.update(m.manifest for m in batch if m.manifest)

        publishing = threading.Thread(target=publish)
        publishing.start()
        try:
            for _ in range(3):  # concurrent with the publishes, and with each other
                options = {"filter_events": [PLACED]}
                declares = [
                    threading.Thread(target=b.declare_queue, args=(name, topic), kwargs=options)
                    for b in (first, second)
                ]
                for t in declares:
                    t.start()
                for t in declares:
                    t.join()
        finally:
            stop.set()
            publishing.join()
        got = taken(first, queue, sent[PLACED])
        placed = [m for m in got if m.manifest == PLACED]
        assert len(placed) == sent[PLACED] > 0
        assert len({m.message_id for m in placed}) == len(placed)  # none twice
        # Shipped ones arrived only while the first list held; refunded ones never.
        assert REFUNDED not in {m.manifest for m in got}
        first.publish_batch_to_topic([Message(content="{}", manifest=SHIPPED)], topic)
        assert first.retrieve_messages(queue, wait_seconds=0.2) == []
        first.delete_queue(queue)


# -- SQLite: files made before filter_events ------------------------------------------------


@pytest.mark.sqlite
def test_sqlite_file_of_the_old_schema_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with SQLiteBackend(path) as backend:
        topic = backend.declare_topic("orders")
        backend.declare_queue("old", topic)
        backend.publish_to_topic(Message(content="{}", manifest=PLACED), topic)
    with sqlite3.connect(path) as db:  # as version 1 was: no manifests, no group_id
        db.executescript(
            """
            CREATE TABLE before (topic TEXT NOT NULL, queue TEXT NOT NULL,
                PRIMARY KEY (topic, queue)) WITHOUT ROWID;
            INSERT INTO before SELECT topic, queue FROM melange_subscriptions;
            DROP TABLE melange_subscriptions;
            ALTER TABLE before RENAME TO melange_subscriptions;
            DROP INDEX melange_delivery_groups;
            ALTER TABLE melange_deliveries DROP COLUMN group_id;
            """
        )
        columns = [row[1] for row in db.execute("PRAGMA table_info(melange_subscriptions)")]
        deliveries = [row[1] for row in db.execute("PRAGMA table_info(melange_deliveries)")]
    db.close()
    assert columns == ["topic", "queue"]
    assert "group_id" not in deliveries
    with SQLiteBackend(path) as backend:
        topic = backend.declare_topic("orders")
        filtered, _ = backend.declare_queue("new", topic, filter_events=[SHIPPED])
        backend.publish_batch_to_topic(
            [Message(content="{}", manifest=m) for m in (PLACED, SHIPPED)], topic
        )
        old = backend.get_queue("old")
        assert manifests_in(backend, old, 3) == {PLACED: 2, SHIPPED: 1}
        assert manifests_in(backend, filtered, 1) == {SHIPPED: 1}
        grouped = [Message(content=str(n), metadata={"message_group_id": "g"}) for n in range(2)]
        backend.publish_batch_to_queue(grouped, old)
        assert [m.content for m in backend.retrieve_messages(old)] == ["0", "1"]
    with sqlite3.connect(path) as db:
        versions = db.execute("SELECT * FROM melange_schema_versions").fetchall()
        columns = [row[1] for row in db.execute("PRAGMA table_info(melange_subscriptions)")]
        deliveries = [row[1] for row in db.execute("PRAGMA table_info(melange_deliveries)")]
    db.close()
    assert (versions, columns) == ([("broker", 1)], ["topic", "queue", "manifests"])
    assert deliveries[-1] == "group_id"


# -- MessageDispatcher.declare(filter_events=True): the consumers' manifests -----------------


class Invoicing(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, int]] = []

    @listener
    def on_placed(self, event: Placed) -> None:
        self.seen.append(("placed", event.n))

    @listener
    def on_refunded(self, event: Refunded) -> None:
        self.seen.append(("refunded", event.n))


class Everything(Consumer):
    @listener
    def on_any(self, event: dict[str, Any]) -> None:
        """Listens for a built-in class: any message."""


class Handles(Consumer):
    def handle(self, event: Any, message: Message) -> None:
        """Takes every event."""


def test_dispatcher_filters_a_shared_topic_by_its_consumers_manifests(
    backend: MessagingBackend,
) -> None:
    shared = unique_name("orders")
    backend.declare_topic(shared)
    invoicing = Invoicing()
    dispatcher = MessageDispatcher(backend, consumers=[invoicing])
    queue, _ = dispatcher.declare(unique_name("invoicing"), topics=[shared], filter_events=True)
    publisher = MessagePublisher(backend)
    publisher.publish_batch(
        [Placed(n=1), Shipped(n=2), Refunded(n=3), Shipped(n=4), Placed(n=5)], topic=shared
    )
    # Its own manifest topics stay subscribed as without a filter.
    publisher.publish(Placed(n=6))
    assert dispatcher.consume_loop(queue.unwrap(), idle_timeout=1) == 4
    assert sorted(invoicing.seen) == [("placed", 1), ("placed", 5), ("placed", 6), ("refunded", 3)]
    # No shipped one arrived to be skipped.
    assert (dispatcher.outcomes[OutcomeKind.ACK], dispatcher.outcomes[OutcomeKind.SKIP]) == (4, 0)


@pytest.mark.parametrize("loose", [Everything, Handles])
def test_filter_events_true_refuses_a_consumer_whose_manifests_are_unknown(
    loose: type[Consumer],
) -> None:
    backend = InMemoryMessagingBackend()
    dispatcher = MessageDispatcher(backend, consumers=[Invoicing(), loose()])
    with pytest.raises(ConfigurationError, match=loose.__qualname__):
        dispatcher.declare("q", topics=["orders"], filter_events=True)
    with pytest.raises(ConfigurationError, match="no consumer"):
        MessageDispatcher(backend).declare("q", topics=["orders"], filter_events=True)


def test_async_dispatcher_filters_with_the_same_rule() -> None:
    import asyncio

    from melange.aio import AsyncMessageDispatcher, AsyncMessagePublisher, BridgedBackend

    async def scenario() -> list[tuple[str, int]]:
        async with BridgedBackend(InMemoryMessagingBackend()) as backend:
            await backend.declare_topic("orders")
            invoicing = Invoicing()
            dispatcher = AsyncMessageDispatcher(backend, consumers=[invoicing])
            await dispatcher.declare("invoicing", topics=["orders"], filter_events=True)
            await AsyncMessagePublisher(backend).publish_batch(
                [Shipped(n=1), Placed(n=2)], topic="orders"
            )
            await dispatcher.consume_loop("invoicing", idle_timeout=0.5)
            return invoicing.seen

    assert asyncio.run(scenario()) == [("placed", 2)]
