"""The transactional outbox: rows written in the caller's transaction, relayed after commit.

Every writer (sqlite3, psycopg, SQLAlchemy sessions and connections, and
their asyncio twins) against a real SQLite file or PostgreSQL server; the
relay sends to the embedded SQLite broker.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import create_engine, inspect

from melange.backends.sqlite import SQLiteBackend
from melange.exceptions import (
    BackendConnectionError,
    ConfigurationError,
    MessageTooLargeError,
    OutboxError,
    PublishError,
    QueueNotFoundError,
)
from melange.models import Message, QueueWrapper
from melange.outbox import OutboxGauges, OutboxPublisher, Relay, create_tables, ddl, open_outbox
from melange.outbox._rows import FailureKind, StoredMessage, failure_kind, publishable
from melange.outbox.sqlalchemy import metadata
from melange.testing import receive
from tests.outbox_writers import WRITERS, OrderPlaced, Writer, open_writer, sqlalchemy_url

TOPIC = "outbox_order_placed"


@pytest.fixture(params=WRITERS, ids=[f"{name}-{db}" for name, db in WRITERS])
def writer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Writer]:
    name, database = request.param
    url = request.getfixturevalue("postgres_database") if database == "postgresql" else None
    with open_writer(name, database, tmp_path, url) as made:
        yield made


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[SQLiteBackend]:
    with SQLiteBackend(tmp_path / "broker.db") as backend:
        yield backend


def orders_queue(broker: SQLiteBackend, name: str = "orders") -> QueueWrapper:
    return broker.declare_queue(name, broker.declare_topic(TOPIC))[0]


def placed(*numbers: int) -> list[OrderPlaced]:
    return [OrderPlaced(order_id=f"o-{n}") for n in numbers]


# -- what a writer commits leaves; what it rolls back never does ------------------------


def test_committed_events_leave_with_their_ids_and_rolled_back_ones_never(
    writer: Writer, broker: SQLiteBackend
) -> None:
    queue = orders_queue(broker)
    kept = writer.transaction(placed(1, 2), True, {})
    writer.transaction(placed(3), False, {})
    kept += writer.transaction(placed(4), True, {})

    with Relay(writer.url, broker) as relay:
        assert relay.depth().pending == 3
        assert relay.relay_once() == 3
        assert relay.depth().pending == 0
        assert relay.relay_once() == 0

    got = receive(broker, queue, 3, timeout=2)
    assert receive(broker, queue, 1, timeout=0.2) == []
    assert [m.message_id for m in got] == [m.message_id for m in kept]
    assert [m.content for m in got] == [m.content for m in kept]
    assert all(m.metadata["correlation_id"] for m in got)
    assert writer.orders() == {"o-1", "o-2", "o-4"}


def test_a_queue_and_a_delay_are_kept_for_the_relay(writer: Writer, broker: SQLiteBackend) -> None:
    queue = broker.declare_queue("direct")[0]
    options = {"queue": "direct", "headers": {"tenant": "t-1"}, "group_by": "order_id"}
    [now] = writer.transaction(placed(1), True, options)
    [later] = writer.transaction(placed(2), True, {"queue": "direct", "delay": 1.5})

    with Relay(writer.url, broker) as relay:
        assert relay.relay_once() == 2
    first = receive(broker, queue, 1, timeout=1)
    assert [m.message_id for m in first] == [now.message_id]
    assert first[0].metadata["tenant"] == "t-1"
    assert first[0].metadata["message_group_id"] == "o-1"  # group_by, kept for the relay
    assert receive(broker, queue, 1, timeout=0.3) == []  # still delayed
    assert [m.message_id for m in receive(broker, queue, 1, timeout=5)] == [later.message_id]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_relay_sees_nothing_before_the_commit(
    database: str, tmp_path: Path, broker: SQLiteBackend, request: pytest.FixtureRequest
) -> None:
    queue = orders_queue(broker)
    if database == "sqlite":
        url = f"sqlite:///{tmp_path / 'service.db'}"
        db: Any = sqlite3.connect(url.removeprefix("sqlite:///"))
    else:
        url = request.getfixturevalue("postgres_database")
        db = psycopg.connect(url)
    create_tables(db)
    db.commit()
    with Relay(url, broker) as relay:
        message = OutboxPublisher(db).publish(placed(1)[0])
        assert relay.relay_once() == 0
        db.commit()
        assert relay.relay_once() == 1
    db.close()
    assert [m.message_id for m in receive(broker, queue, 1, timeout=2)] == [message.message_id]


# -- relays that die, relays side by side -----------------------------------------------


def test_rows_a_dead_relay_held_leave_again_under_the_same_ids(
    tmp_path: Path, broker: SQLiteBackend
) -> None:
    """A relay that sent and died before deleting: its lease runs out, another sends again."""
    queue = orders_queue(broker)
    with open_writer("sqlite3", "sqlite", tmp_path, None) as writer:
        written = writer.transaction(placed(1, 2, 3), True, {})
    url = f"sqlite:///{tmp_path / 'service.db'}"
    clock = [time.time()]
    dying = Relay(url, broker, lease_seconds=30, clock=lambda: clock[0])
    claim = dying.store.claim(10, now=clock[0], horizon=clock[0], lease_seconds=30)
    dying._send(claim, set())  # sent, never settled: the process died here

    with Relay(url, broker, clock=lambda: clock[0]) as other:
        assert other.relay_once() == 0  # leased
        clock[0] += 31
        assert other.relay_once() == 3
    dying.close()
    got = receive(broker, queue, 6, timeout=2)
    ids = [m.message_id for m in written]
    assert [m.message_id for m in got] == ids + ids


def test_a_relay_whose_connection_died_lets_go_of_its_rows_at_once(
    postgres_database: str, broker: SQLiteBackend
) -> None:
    queue = orders_queue(broker)
    with psycopg.connect(postgres_database) as db:
        create_tables(db)
        written = [OutboxPublisher(db).publish(e) for e in placed(1, 2)]
        db.commit()
    dying = Relay(postgres_database, broker)
    now = time.time()
    claim = dying.store.claim(10, now=now, horizon=now, lease_seconds=30)
    with Relay(postgres_database, broker) as other:
        assert other.relay_once() == 0  # locked by the first
        dying._send(claim, set())
        claim.handle.close()  # the process died: the server ends its transaction
        assert other.relay_once() == 2
    dying.close()
    ids = [m.message_id for m in written]
    assert [m.message_id for m in receive(broker, queue, 4, timeout=2)] == ids + ids


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_two_relays_send_each_row_once_and_keep_each_destinations_order(
    database: str, tmp_path: Path, broker: SQLiteBackend, request: pytest.FixtureRequest
) -> None:
    # More lanes than two batches cover (a relay sends one while it claims the next):
    # both relays work.
    names = [f"lane-{n}" for n in range(40)]
    queues = {name: broker.declare_queue(name)[0] for name in names}
    pg = request.getfixturevalue("postgres_database") if database == "postgresql" else None
    written: dict[str, list[str]] = {name: [] for name in names}
    with open_writer("sqlite3" if pg is None else "psycopg", database, tmp_path, pg) as writer:
        for n in range(400):
            name = names[n * 7 % 40]
            [message] = writer.transaction(placed(n), True, {"queue": name})
            written[name].append(message.message_id)
        url = writer.url

    stop = threading.Event()
    relays = [Relay(url, broker, batch_size=7, poll_interval=0.05) for _ in range(2)]
    threads = [threading.Thread(target=r.run, args=(stop,)) for r in relays]
    for thread in threads:
        thread.start()
    try:
        got = {
            name: receive(broker, queues[name], len(written[name]), timeout=30) for name in names
        }
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for relay in relays:
            relay.close()
    assert {name: [m.message_id for m in got[name]] for name in names} == written
    assert sum(r.stats["sent"] for r in relays) == 400
    assert all(r.stats["sent"] > 0 for r in relays), [r.stats for r in relays]
    for name in names:
        assert receive(broker, queues[name], 1, timeout=0.2) == []


def test_postgres_notify_wakes_the_relay_long_before_its_poll(
    postgres_database: str, broker: SQLiteBackend
) -> None:
    queue = orders_queue(broker)
    with Relay(postgres_database, broker, poll_interval=120) as relay:
        relay.start()
        time.sleep(0.5)  # the relay is waiting now
        with psycopg.connect(postgres_database) as db:
            message = OutboxPublisher(db).publish(placed(1)[0])
            db.commit()
        got = receive(broker, queue, 1, timeout=20)
    assert [m.message_id for m in got] == [message.message_id]


class Nacks(SQLiteBackend):
    """The embedded broker, refusing the sends of a message the times ``refusals`` says."""

    def __init__(self, path: Path, refusals: dict[str, int]) -> None:
        super().__init__(path)
        self.refusals = Counter(refusals)

    def publish_to_queue(self, message: Message, queue: QueueWrapper, **kwargs: Any) -> None:
        self._refused([message])
        super().publish_to_queue(message, queue, **kwargs)

    def publish_batch_to_queue(self, messages: Sequence[Message], queue: QueueWrapper) -> None:
        self._refused(messages)
        super().publish_batch_to_queue(messages, queue)

    def _refused(self, messages: Sequence[Message]) -> None:
        if refused := [m.message_id for m in messages if self.refusals[m.message_id] > 0]:
            self.refusals.subtract(refused)
            raise PublishError(f"nacked {refused}")


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_refused_row_holds_back_its_lane_while_the_next_batches_are_already_claimed(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``drain`` claims batch n+1 while batch n is sent: its rows behind a refusal wait."""
    pg = request.getfixturevalue("postgres_database") if database == "postgresql" else None
    written: dict[str, list[str]] = {"a": [], "b": []}
    with open_writer("sqlite3" if pg is None else "psycopg", database, tmp_path, pg) as writer:
        for n in range(100):
            lane = "ab"[n % 2]
            [message] = writer.transaction(placed(n), True, {"queue": lane})
            written[lane].append(message.message_id)
        url = writer.url
    refused = written["a"][12]  # in the second batch of ten: the third is claimed by then
    # Refused in its lane's batch call, then alone: a refusal of its own, retried later.
    with Nacks(tmp_path / "broker.db", {refused: 2}) as broker:
        queues = {lane: broker.declare_queue(lane)[0] for lane in written}
        clock = [time.time()]
        with Relay(url, broker, batch_size=10, clock=lambda: clock[0]) as relay:
            first = relay.drain()
            clock[0] += 1  # past the refused row's pause
            rest = relay.drain()
            depth = relay.depth()
        got = {lane: receive(broker, queues[lane], 50, timeout=5) for lane in written}
    # b's 50 and a's first 12 (the other lane fills the batches meanwhile); then a's 38.
    assert (first, rest, depth.pending) == (62, 38, 0)
    assert {lane: [m.message_id for m in got[lane]] for lane in got} == written
    assert relay.stats["retried"] == 1


# -- rows that can never leave ------------------------------------------------------------


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_rows_that_cannot_leave_are_kept_dead_with_the_reason_and_the_rest_go_on(
    database: str, tmp_path: Path, broker: SQLiteBackend, request: pytest.FixtureRequest
) -> None:
    queue = orders_queue(broker)
    pg = request.getfixturevalue("postgres_database") if database == "postgresql" else None
    with open_writer("sqlite3" if pg is None else "psycopg", database, tmp_path, pg) as writer:
        [first] = writer.transaction(placed(1), True, {})
        [lost] = writer.transaction(placed(2), True, {"queue": "no-such-queue"})
        writer.transaction(placed(3), True, {})
        [last] = writer.transaction(placed(4), True, {})
        url = writer.url
    _corrupt_headers(url, seq_of_order=3)

    with Relay(url, broker) as relay:
        assert relay.relay_once() == 2
        dead = relay.store.dead_rows()
        depth = relay.depth()
    assert [m.message_id for m in receive(broker, queue, 2, timeout=2)] == [
        first.message_id,
        last.message_id,
    ]
    assert (depth.pending, depth.dead) == (0, 2)
    assert dead[0].message_id == lost.message_id
    assert "QueueNotFoundError" in dead[0].reason
    assert "no-such-queue" in dead[0].reason
    assert "not a message" in dead[1].reason


def _corrupt_headers(url: str, seq_of_order: int) -> None:
    """Edit one row by hand, as another program might: its headers are no longer JSON."""
    sql = "UPDATE melange_outbox SET headers = 'not json' WHERE content LIKE ?"
    like = f'%"o-{seq_of_order}"%'
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            db.execute(sql, (like,))
    else:
        with psycopg.connect(url) as db:
            db.execute(sql.replace("?", "%s"), (like,))


def test_a_write_without_the_table_raises_a_typed_error(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "bare.db")
    with pytest.raises(OutboxError, match="melange_outbox"):
        OutboxPublisher(db).publish(placed(1)[0])


def test_an_unknown_connection_is_refused_by_name() -> None:
    with pytest.raises(ConfigurationError, match="sqlite3 or psycopg connection"):
        OutboxPublisher(object())


def test_an_event_with_nowhere_to_go_is_refused_at_write_time(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "service.db")
    create_tables(db)
    with pytest.raises(ConfigurationError, match="topic"):
        OutboxPublisher(db).publish(placed(1)[0], topic="t", delay=5)
    assert db.execute("SELECT count(*) FROM melange_outbox").fetchone() == (0,)


# -- the tables ---------------------------------------------------------------------------


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_ddl_and_the_sqlalchemy_metadata_make_the_same_tables(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if database == "sqlite":
        by_ddl = f"sqlite:///{tmp_path / 'ddl.db'}"
        by_metadata = f"sqlite:///{tmp_path / 'metadata.db'}"
    else:
        base = request.getfixturevalue("postgres_database")
        by_ddl = base
        by_metadata = _another_database(base)
    driver = "pysqlite" if database == "sqlite" else "psycopg"
    plain = create_engine(sqlalchemy_url(by_ddl, driver))
    with plain.begin() as connection:
        for statement in ddl(database):
            connection.exec_driver_sql(statement)
    declared = create_engine(sqlalchemy_url(by_metadata, driver))
    metadata.create_all(declared)
    try:
        assert _shape(plain) == _shape(declared)
        assert set(_shape(plain)) == {"melange_outbox", "melange_inbox"}
    finally:
        plain.dispose()
        declared.dispose()
    if database == "postgresql":  # the metadata made the trigger that wakes the relay
        with psycopg.connect(by_metadata) as db:
            triggers = db.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")
            assert [name for (name,) in triggers] == ["melange_outbox_notify"]


def _another_database(conninfo: str) -> str:
    name = f"{conninfo_to_dict(conninfo)['dbname']}_metadata"
    with psycopg.connect(conninfo, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')
    return make_conninfo(conninfo, dbname=name)


def _shape(engine: Any) -> dict[str, Any]:
    seen = inspect(engine)
    return {
        table: (
            sorted(
                (c["name"], c["nullable"], str(c["type"]).split("(")[0])
                for c in seen.get_columns(table)
            ),
            sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                for i in seen.get_indexes(table)
            ),
            sorted(seen.get_pk_constraint(table)["constrained_columns"]),
        )
        for table in seen.get_table_names()
        if table.startswith("melange_")
    }


def test_open_outbox_takessqlalchemy_urls_and_refuses_others(tmp_path: Path) -> None:
    store = open_outbox(f"sqlite+pysqlite:///{tmp_path / 'a.db'}")
    assert store.dialect == "sqlite"
    store.close()
    with pytest.raises(ConfigurationError, match="sqlite:///path or postgresql"):
        open_outbox("mysql://localhost/db")


# -- the decisions, apart from any database -------------------------------------------------


def _row(seq: int, destination: str) -> StoredMessage:
    return StoredMessage(seq, f"m-{seq}", "queue", destination, None, None, "{}", "{}", 0, 0, 0)


def test_a_lane_another_relay_holds_the_head_of_is_left_alone() -> None:
    claimed = [_row(2, "a"), _row(3, "b"), _row(5, "a"), _row(6, "c")]
    pending = [(1, ("queue", "b")), (2, ("queue", "a")), (3, ("queue", "b")), (4, ("queue", "c"))]
    pending += [(5, ("queue", "a")), (6, ("queue", "c"))]
    # b's first row (1) and c's (4) are someone else's: only a's rows may go.
    assert [r.seq for r in publishable(claimed, pending)] == [2, 5]
    # Unless they are this relay's own, being sent before this claim.
    assert [r.seq for r in publishable(claimed, pending, ahead={1, 4})] == [2, 3, 5, 6]


def test_what_a_send_error_means_for_its_row() -> None:
    assert failure_kind(BackendConnectionError("down")) is FailureKind.OUTAGE
    assert failure_kind(MessageTooLargeError(10, 5)) is FailureKind.DEAD
    assert failure_kind(QueueNotFoundError("gone")) is FailureKind.DEAD
    assert failure_kind(PublishError("nacked")) is FailureKind.RETRY
    assert failure_kind(RuntimeError("a bug")) is FailureKind.RETRY


def test_the_outbox_lag_is_reported_as_opentelemetry_gauges(tmp_path: Path) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    with open_writer("sqlite3", "sqlite", tmp_path, None) as writer:
        writer.transaction(placed(1, 2, 3), True, {})
        url = writer.url
    reader = InMemoryMetricReader()
    later = time.time() + 5
    gauges = OutboxGauges(
        url, meter_provider=MeterProvider(metric_readers=[reader]), clock=lambda: later
    )
    try:
        seen = _gauge_values(reader)
    finally:
        gauges.close()
    assert seen["melange.outbox.pending"] == 3
    assert seen["melange.outbox.dead"] == 0
    assert seen["melange.outbox.oldest_age"] >= 5
    assert _gauge_values(reader) == {}  # closed: nothing more to report


def _gauge_values(reader: Any) -> dict[str, float]:
    data = reader.get_metrics_data()
    if data is None:
        return {}
    return {
        metric.name: point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    }


def test_wake_starts_a_round_at_once_on_sqlite(tmp_path: Path, broker: SQLiteBackend) -> None:
    queue = orders_queue(broker)
    url = f"sqlite:///{tmp_path / 'service.db'}"
    with (
        open_writer("sqlite3", "sqlite", tmp_path, None) as writer,
        Relay(url, broker, poll_interval=120) as relay,
    ):
        relay.start()
        time.sleep(0.3)  # waiting now, for two minutes
        [message] = writer.transaction(placed(1), True, {})
        relay.wake()
        got = receive(broker, queue, 1, timeout=20)
    assert [m.message_id for m in got] == [message.message_id]
