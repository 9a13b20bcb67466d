"""Throughput of the embedded SQLite broker beside raw sqlite3 doing the same writes.

melange: publish -> receive -> dispatch a pydantic event -> acknowledge, through
``SQLiteBackend`` and ``MessageDispatcher``:

- single: one publish, one receive and one acknowledgement per message
  (three write transactions per message);
- batched: publishes, receives and acknowledgements of 100 messages each.

The floor: raw ``sqlite3`` inserting the same rows and deleting them again,
with the same durability settings (WAL, the same ``synchronous``), one
transaction per message for the single case and one per 100 for the batched
case (two write transactions per message or per batch). "backend alone" is
the same traffic on ``SQLiteBackend`` with ready-made messages (no
serializing, no dispatching), to show where the time goes. Each figure is the
median of ``--rounds`` runs on fresh files.

    .venv/bin/python bench/sqlite.py --messages 10000 --synchronous FULL
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import BaseModel

from melange import Consumer, MessageDispatcher, MessagePublisher, listener
from melange.backends.sqlite import SQLiteBackend

BATCH = 100


class OrderPlaced(BaseModel):
    number: int
    customer_id: str
    note: str


class Counter(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    @listener
    def on_order(self, event: OrderPlaced) -> None:
        self.count += 1


def events(n: int) -> list[OrderPlaced]:
    return [OrderPlaced(number=i, customer_id="c-1", note="x" * 40) for i in range(n)]


def melange(path: Path, n: int, synchronous: str, batched: bool) -> float:
    """Return msgs/s for publish + consume + acknowledge through the backend."""
    backend = SQLiteBackend(path, synchronous=synchronous)
    counter = Counter()
    dispatcher = MessageDispatcher(backend, consumers=[counter], batch_size=BATCH if batched else 1)
    dispatcher.declare("orders")
    publisher = MessagePublisher(backend)
    batch = events(n)
    started = time.perf_counter()
    if batched:
        for first in range(0, n, BATCH):
            publisher.publish_batch(batch[first : first + BATCH], queue="orders")
    else:
        for event in batch:
            publisher.publish(event, queue="orders")
    dispatcher.consume_loop("orders", max_messages=n)
    elapsed = time.perf_counter() - started
    assert counter.count == n
    backend.close_connection()
    return n / elapsed


def backend_only(path: Path, n: int, synchronous: str, batched: bool) -> float:
    """Return msgs/s for the same traffic on the backend alone: ready-made messages, no dispatch."""
    backend = SQLiteBackend(path, synchronous=synchronous)
    queue, _ = backend.declare_queue("orders")
    publisher = MessagePublisher(backend)
    messages = [publisher.build_message(e) for e in events(n)]
    size = BATCH if batched else 1
    started = time.perf_counter()
    for first in range(0, n, size):
        backend.publish_batch_to_queue(messages[first : first + size], queue)
    received = 0
    while received < n:
        batch = backend.retrieve_messages(queue, max_messages=size)
        backend.acknowledge_batch(batch)
        received += len(batch)
    elapsed = time.perf_counter() - started
    backend.close_connection()
    return n / elapsed


def floor(path: Path, n: int, synchronous: str, batched: bool) -> float:
    """Return msgs/s for raw sqlite3 inserting and deleting the same rows."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, queue TEXT, message_id TEXT,"
        " content TEXT, metadata TEXT, serializer_id INTEGER, manifest TEXT,"
        " visible_at REAL, receive_count INTEGER, claim BLOB)"
    )
    metadata = json.dumps(
        {
            "correlation_id": "x" * 36,
            "causation_id": "x" * 36,
            "published_at": "2026-11-28T00:00:00.000000+00:00",
        }
    )
    now = time.time()
    rows = [
        ("orders", f"id-{i}", e.model_dump_json(), metadata, 3, "OrderPlaced", now, 0, None)
        for i, e in enumerate(events(n))
    ]
    insert = "INSERT INTO messages VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    size = BATCH if batched else 1
    started = time.perf_counter()
    for first in range(0, n, size):
        db.execute("BEGIN IMMEDIATE")
        db.executemany(insert, rows[first : first + size])
        db.execute("COMMIT")
    ids = [(row[0],) for row in db.execute("SELECT id FROM messages ORDER BY id")]
    for first in range(0, n, size):
        db.execute("BEGIN IMMEDIATE")
        db.executemany("DELETE FROM messages WHERE id = ?", ids[first : first + size])
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000, help="per run (10,000)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per figure; medians (3)")
    parser.add_argument("--synchronous", default="FULL", choices=["NORMAL", "FULL"])
    args = parser.parse_args()
    n = args.messages
    print(f"{n:,} messages per run, median of {args.rounds}, synchronous={args.synchronous}, WAL")
    print(
        f"{'case':8s} {'raw sqlite3 floor':>18s} {'melange':>9s} {'ratio':>6s}"
        f" {'backend alone':>14s} {'ratio':>6s}  (msgs/s)"
    )
    with tempfile.TemporaryDirectory() as folder:
        for label, batched in (("single", False), ("batched", True)):
            floors, rates, alone = [], [], []
            for round_ in range(args.rounds):
                base = Path(folder) / f"{label}-{round_}"
                floors.append(floor(base.with_suffix(".floor.db"), n, args.synchronous, batched))
                rates.append(melange(base.with_suffix(".db"), n, args.synchronous, batched))
                alone.append(
                    backend_only(base.with_suffix(".raw.db"), n, args.synchronous, batched)
                )
            low, rate, raw = (statistics.median(x) for x in (floors, rates, alone))
            print(
                f"{label:8s} {low:>18,.0f} {rate:>9,.0f} {rate / low:>6.2f}"
                f" {raw:>14,.0f} {raw / low:>6.2f}"
            )


if __name__ == "__main__":
    main()
