"""What the transactional outbox costs: the write, the relay, the wait for a handler.

1. Transactions: one order per transaction, ``INSERT INTO orders`` + commit,
   beside the same with ``OutboxPublisher(db).publish(event)`` in it, on
   SQLite (WAL, ``synchronous=FULL``) and on PostgreSQL; the overhead is on
   the time per transaction (goal: the outbox adds <= 30 %).
   The same with four order lines written too (five INSERTs), for scale.
2. Relay: committed outbox rows drained by ``Relay.drain()`` (batches of
   100; the next batch is claimed while the broker takes one) into a broker,
   beside ``MessagePublisher.publish_batch`` of the same events in chunks of
   100 (goal: ratio >= 0.8): the embedded SQLite broker, and with
   ``--rabbitmq`` a throwaway RabbitMQ node (publisher confirms).
3. Latency from the producer's commit to the handler (p50, p99): one order at a
   time, 5-25 ms apart, a ``Relay`` on its thread, a ``MessageDispatcher`` on
   another (it shares the broker object with the relay, so its wait wakes at
   once on the relay's publish). SQLite's relay polls every 0.2 s; PostgreSQL's
   wakes on NOTIFY (poll 60 s), and once with the trigger dropped, polling only.

PostgreSQL: ``--postgres URL`` (a database of the bench's own is created on that
server and dropped after) or ``--start-postgres`` (a throwaway server, as the
tests start it, with fsync and synchronous_commit turned back on: each commit
on disk, as SQLite's FULL). Without either the PostgreSQL rows are skipped.
Each figure is the median of ``--rounds`` runs on fresh files or tables.

    .venv/bin/python bench/outbox.py --messages 20000 --start-postgres --rabbitmq
"""

from __future__ import annotations

import argparse
import gc
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import BaseModel

from melange import Consumer, MessageDispatcher, MessagePublisher, QueueWrapper, listener
from melange.backends.interfaces import MessagingBackend
from melange.backends.rabbitmq import RabbitMQBackend
from melange.backends.sqlite import SQLiteBackend
from melange.outbox import OutboxPublisher, Relay, create_tables
from melange.testing import unique_name

BATCH = 100
TOPIC = "bench.order_placed"
ORDERS = (
    "CREATE TABLE IF NOT EXISTS orders"
    " (id INTEGER PRIMARY KEY, customer_id TEXT NOT NULL, total_cents INTEGER NOT NULL)"
)
LINES = (
    "CREATE TABLE IF NOT EXISTS order_lines (order_id INTEGER NOT NULL, line INTEGER NOT NULL,"
    " sku TEXT NOT NULL, cents INTEGER NOT NULL, PRIMARY KEY (order_id, line))"
)


class OrderPlaced(BaseModel):
    __melange_manifest__ = TOPIC
    order_id: int
    customer_id: str
    total_cents: int
    note: str


def events(n: int) -> list[OrderPlaced]:
    return [
        OrderPlaced(order_id=i, customer_id="c-1", total_cents=2970, note="x" * 40)
        for i in range(n)
    ]


class Db:
    """The application's connection: a SQLite file (WAL, FULL) or a PostgreSQL conninfo.

    The tables are made (PostgreSQL's emptied) and the transaction left to the caller.
    """

    def __init__(self, target: Path | str) -> None:
        self.conn: Any
        if isinstance(target, Path):
            self.conn = sqlite3.connect(target)  # Python begins before the INSERT
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.url, mark = f"sqlite:///{target}", "?"
        else:
            import psycopg

            self.conn = psycopg.connect(target)
            self.url, mark = target, "%s"
        self.conn.execute(ORDERS)
        self.conn.execute(LINES)
        create_tables(self.conn)
        if not isinstance(target, Path):
            self.conn.execute("TRUNCATE orders, order_lines, melange_outbox")
        self.conn.commit()
        self.insert = f"INSERT INTO orders VALUES ({mark}, {mark}, {mark})"
        self.insert_line = f"INSERT INTO order_lines VALUES ({mark}, {mark}, {mark}, {mark})"
        self.outbox = OutboxPublisher(self.conn)

    def order(self, event: OrderPlaced, *, outbox: bool = True, lines: int = 0) -> None:
        """Write one order (and ``lines`` lines), and its event into the outbox; commit."""
        self.conn.execute(self.insert, (event.order_id, event.customer_id, event.total_cents))
        for line in range(lines):
            self.conn.execute(self.insert_line, (event.order_id, line, f"sku-{line}", 990))
        if outbox:
            self.outbox.publish(event)
        self.conn.commit()


def transactions(target: Path | str, n: int, outbox: bool, lines: int = 0) -> float:
    """Return transactions/s: one order per transaction, with its event in the outbox or not."""
    db = Db(target)
    batch = events(n)
    gc.freeze()
    started = time.perf_counter()
    for event in batch:
        db.order(event, outbox=outbox, lines=lines)
    elapsed = time.perf_counter() - started
    gc.unfreeze()
    db.conn.close()
    return n / elapsed


def broker_at(path: Path) -> tuple[SQLiteBackend, QueueWrapper]:
    """Return a fresh SQLite broker whose queue ``orders`` is subscribed to the event's topic."""
    broker = SQLiteBackend(path)
    queue, _ = broker.declare_queue("orders", broker.declare_topic(TOPIC))
    return broker, queue


Broker = Callable[[], tuple[MessagingBackend, QueueWrapper]]


def sqlite_broker(folder: Path) -> Broker:
    files = iter(range(1_000_000))
    return lambda: broker_at(folder / f"broker-{next(files)}.db")


def rabbitmq_broker(url: str) -> Broker:
    def make() -> tuple[MessagingBackend, QueueWrapper]:
        backend = RabbitMQBackend(url)
        queue, _ = backend.declare_queue(unique_name("orders"), backend.declare_topic(TOPIC))
        return backend, queue

    return make


def relayed(folder: Path, n: int, broker: Broker) -> float:
    """Return msgs/s for a relay draining ``n`` committed outbox rows into the broker."""
    folder.mkdir()
    db = Db(folder / "outbox.db")
    batch = events(n)
    for first in range(0, n, 1000):
        db.outbox.publish_batch(batch[first : first + 1000])
        db.conn.commit()
    db.conn.close()
    backend, queue = broker()
    with Relay(db.url, backend, batch_size=BATCH) as relay:
        gc.freeze()
        started = time.perf_counter()
        relay.drain()
        elapsed = time.perf_counter() - started
        gc.unfreeze()
    settled(backend, queue, n)
    return n / elapsed


def published(n: int, broker: Broker) -> float:
    """Return msgs/s for ``publish_batch`` of the same events, 100 at a time, into a broker."""
    backend, queue = broker()
    publisher = MessagePublisher(backend)
    batch = events(n)
    gc.freeze()
    started = time.perf_counter()
    for first in range(0, n, BATCH):
        publisher.publish_batch(batch[first : first + BATCH])
    elapsed = time.perf_counter() - started
    gc.unfreeze()
    settled(backend, queue, n)
    return n / elapsed


def settled(backend: MessagingBackend, queue: QueueWrapper, n: int) -> None:
    """Check that all ``n`` arrived, then drop the queue and the connection."""
    deadline = time.monotonic() + 30
    while backend.queue_depth(queue) < n and time.monotonic() < deadline:
        time.sleep(0.05)  # a broker may count a confirmed message a moment later
    assert backend.queue_depth(queue) == n, backend.queue_depth(queue)
    backend.delete_queue(queue)
    backend.close_connection()


class Recorder(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.handled: dict[int, float] = {}

    @listener
    def on_order(self, event: OrderPlaced) -> None:
        self.handled[event.order_id] = time.perf_counter()


def latency(
    target: Path | str, broker_path: Path, count: int, poll: float, notify: bool = True
) -> tuple[float, float]:
    """Return p50 and p99, in ms, from each order's commit to its handler."""
    db = Db(target)
    if not notify:  # PostgreSQL only: no trigger, so the relay wakes on its poll alone
        db.conn.execute("DROP TRIGGER IF EXISTS melange_outbox_notify ON melange_outbox")
        db.conn.commit()
    broker = SQLiteBackend(broker_path)
    recorder = Recorder()
    dispatcher = MessageDispatcher(broker, [recorder])
    dispatcher.declare("orders")
    stop = threading.Event()
    consumer = threading.Thread(
        target=dispatcher.consume_loop,
        args=("orders",),
        kwargs={"max_messages": count, "stop_event": stop},
        daemon=True,
    )
    # create_tables=False: the tables are there, and a relay would put the trigger back.
    relay = Relay(db.url, broker, poll_interval=poll, create_tables=False)
    committed: dict[int, float] = {}
    pauses = random.Random(7)
    try:
        relay.start()
        consumer.start()
        time.sleep(0.5)  # both threads waiting: the relay listening, the consumer receiving
        gc.freeze()
        for event in events(count):
            db.order(event)
            committed[event.order_id] = time.perf_counter()
            time.sleep(pauses.uniform(0.005, 0.025))
        consumer.join(timeout=max(30.0, 3 * poll))
        gc.unfreeze()
    finally:
        stop.set()
        consumer.join(timeout=30)
        relay.close()
        broker.close_connection()
        db.conn.close()
    assert len(recorder.handled) == count, (len(recorder.handled), count)
    waits = [(recorder.handled[i] - sent) * 1000 for i, sent in committed.items()]
    cuts = statistics.quantiles(waits, n=100)
    return cuts[49], cuts[98]


@contextmanager
def postgres(url: str | None, start: bool) -> Iterator[str | None]:
    """Yield the conninfo of a database of the bench's own (dropped after), or None."""
    if url is None and not start:
        yield None
        return
    server = None
    if start:
        from tests.servers.postgres import PostgresServer

        server = PostgresServer()
    try:
        if server is not None:
            server.start()
            url = server.url
            durable(url)
        assert url is not None
        import psycopg
        from psycopg import sql
        from psycopg.conninfo import make_conninfo

        name = f"melange_bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield make_conninfo(url, dbname=name)
        finally:
            with psycopg.connect(url, autocommit=True) as admin:
                drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
                admin.execute(drop.format(sql.Identifier(name)))
    finally:
        if server is not None:
            server.remove()


def durable(url: str) -> None:
    """Turn on what the tests' throwaway server turns off: each commit on disk, like SQLite FULL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("ALTER SYSTEM SET fsync = on")
        admin.execute("ALTER SYSTEM SET synchronous_commit = on")
        admin.execute("SELECT pg_reload_conf()")


@contextmanager
def _rabbitmq() -> Iterator[str]:
    """Yield the URL of a throwaway RabbitMQ node (as the tests start it), stopped after."""
    from tests.servers.rabbitmq import start_node

    node = start_node()
    try:
        yield node.url
    finally:
        node.stop()


def fresh(target: Path | str, tag: str) -> Path | str:
    """Return a new file beside a SQLite target; PostgreSQL's database is emptied instead."""
    return target.with_name(f"{tag}.db") if isinstance(target, Path) else target


def transaction_rows(targets: list[tuple[str, Path | str]], n: int, rounds: range) -> None:
    print("\n1. one order per transaction (transactions/s)")
    print(f"{'database':34s} {'plain':>8s} {'+ outbox':>10s}  (goal: adds <= 30 %)")
    for label, target in targets:
        for lines, what in ((0, "1 INSERT"), (4, "5 INSERTs (4 lines)")):
            plain, boxed = [], []
            for r in rounds:
                plain.append(transactions(fresh(target, f"plain-{lines}-{r}"), n, False, lines))
                boxed.append(transactions(fresh(target, f"boxed-{lines}-{r}"), n, True, lines))
            a, b = statistics.median(plain), statistics.median(boxed)
            added = (a / b - 1) * 100  # on the time per transaction: (1/b - 1/a) / (1/a)
            print(
                f"{label + ', ' + what:34s} {a:>8,.0f} {b:>10,.0f}  outbox adds {added:.1f} %"
                f" to the transaction (+{(1 / b - 1 / a) * 1e6:.0f} µs)"
            )


def relay_rows(brokers: list[tuple[str, Broker]], folder: Path, n: int, rounds: range) -> None:
    print(f"\n2. {n:,} events into a broker, 100 per call (msgs/s)")
    print(f"{'broker':16s} {'publish_batch alone':>20s} {'relay':>9s}  ratio (goal >= 0.8)")
    for label, broker in brokers:
        alone = [published(n, broker) for _ in rounds]
        where = label.replace(" ", "-")
        relays = [relayed(folder / f"relay-{where}-{r}", n, broker) for r in rounds]
        base, rate = statistics.median(alone), statistics.median(relays)
        print(f"{label:16s} {base:>20,.0f} {rate:>9,.0f}  {rate / base:.2f}")


def latency_rows(folder: Path, pg: str | None, count: int, rounds: range) -> None:
    print(f"\n3. commit -> handler, {count} orders one at a time, 5-25 ms apart (ms)")
    print(f"{'outbox':12s} {'the relay wakes on':44s} {'p50':>7s} {'p99':>7s}")
    cases: list[tuple[str, str, Path | str, float, bool]] = [
        ("SQLite", "polling every 0.2 s", folder / "latency.db", 0.2, True)
    ]
    if pg is not None:
        cases.append(("PostgreSQL", "LISTEN/NOTIFY (poll_interval=60)", pg, 60.0, True))
        cases.append(("PostgreSQL", "polling every 0.2 s (trigger dropped)", pg, 0.2, False))
    for label, how, target, poll, notify in cases:
        runs = []
        for r in rounds:
            broker = folder / f"broker-{label}-{poll}-{r}.db"
            runs.append(latency(fresh(target, f"latency-{r}"), broker, count, poll, notify))
        p50, p99 = (statistics.median(cut) for cut in zip(*runs, strict=True))
        print(f"{label:12s} {how:44s} {p50:>7.1f} {p99:>7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000, help="per run (20,000)")
    parser.add_argument("--latency-messages", type=int, default=300, help="per latency run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per figure; medians (3)")
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL server to use too")
    parser.add_argument(
        "--start-postgres", action="store_true", help="start a throwaway PostgreSQL server"
    )
    parser.add_argument(
        "--rabbitmq", action="store_true", help="relay to a throwaway RabbitMQ node too"
    )
    args = parser.parse_args()
    if args.postgres and args.start_postgres:
        parser.error("--postgres and --start-postgres are exclusive")
    n, rounds = args.messages, range(args.rounds)
    print(f"{n:,} messages per run, median of {args.rounds}")
    with (
        ExitStack() as stack,
        tempfile.TemporaryDirectory() as tmp,
        postgres(args.postgres, args.start_postgres) as pg,
    ):
        folder = Path(tmp)
        if pg is None:
            print("PostgreSQL: skipped (give --postgres URL or --start-postgres)")
        elif args.start_postgres:
            print("PostgreSQL: a throwaway server, fsync and synchronous_commit on (as FULL)")
        else:
            print("PostgreSQL: a database of the bench's own on --postgres, dropped after")
        targets: list[tuple[str, Path | str]] = [("SQLite (WAL, FULL)", folder / "tx.db")]
        if pg is not None:
            targets.append(("PostgreSQL", pg))
        transaction_rows(targets, n, rounds)
        brokers: list[tuple[str, Broker]] = [("SQLite broker", sqlite_broker(folder))]
        if args.rabbitmq:
            brokers.append(("RabbitMQ", rabbitmq_broker(stack.enter_context(_rabbitmq()))))
        relay_rows(brokers, folder, n, rounds)
        latency_rows(folder, pg, args.latency_messages, rounds)


if __name__ == "__main__":
    main()
