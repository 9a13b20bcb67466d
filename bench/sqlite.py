"""Throughput of the embedded SQLite broker beside raw sqlite3 doing the same writes.

melange: publish -> receive -> dispatch a pydantic event -> acknowledge, through
``SQLiteBackend``, once with single publishes and once batched. The floor:
raw ``sqlite3`` inserting and deleting the same rows with the same durability
settings (WAL, the same ``synchronous``), one transaction per message for the
single case and one per batch for the batched case.

    .venv/bin/python bench/sqlite.py --messages 5000 --synchronous FULL
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import BaseModel

from melange import Consumer, MessageDispatcher, MessagePublisher, listener
from melange.backends.sqlite import SQLiteBackend

BATCH = 100


class Numbered(BaseModel):
    number: int
    customer_id: str
    note: str


class Counter(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    @listener
    def on_number(self, event: Numbered) -> None:
        self.count += 1


def events(n: int) -> list[Numbered]:
    return [Numbered(number=i, customer_id="c-1", note="x" * 40) for i in range(n)]


def melange(path: Path, n: int, synchronous: str, batched: bool) -> float:
    backend = SQLiteBackend(path, synchronous=synchronous)
    counter = Counter()
    dispatcher = MessageDispatcher(
        backend, consumers=[counter], batch_size=BATCH if batched else 10
    )
    dispatcher.declare("numbers")
    publisher = MessagePublisher(backend)
    batch = events(n)
    started = time.perf_counter()
    if batched:
        for first in range(0, n, BATCH):
            publisher.publish_batch(batch[first : first + BATCH], queue="numbers")
    else:
        for event in batch:
            publisher.publish(event, queue="numbers")
    dispatcher.consume_loop("numbers", max_messages=n)
    elapsed = time.perf_counter() - started
    assert counter.count == n
    backend.close_connection()
    return n / elapsed


def floor(path: Path, n: int, synchronous: str, batched: bool) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous}")
    db.execute(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, queue TEXT, message_id TEXT,"
        " content TEXT, metadata TEXT, serializer_id INTEGER, manifest TEXT,"
        " visible_at REAL, receive_count INTEGER, claim TEXT)"
    )
    metadata = json.dumps(
        {
            "correlation_id": "x" * 36,
            "causation_id": "x" * 36,
            "published_at": "2026-11-28T00:00:00.000000+00:00",
        }
    )
    rows = [
        (
            "numbers",
            f"id-{i}",
            event.model_dump_json(),
            metadata,
            3,
            "Numbered",
            time.time(),
            0,
            None,
        )
        for i, event in enumerate(events(n))
    ]
    insert = "INSERT INTO messages VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    size = BATCH if batched else 1
    started = time.perf_counter()
    for first in range(0, n, size):
        db.execute("BEGIN")
        db.executemany(insert, rows[first : first + size])
        db.execute("COMMIT")
    ids = [row[0] for row in db.execute("SELECT id FROM messages ORDER BY id")]
    for first in range(0, n, size):
        db.execute("BEGIN")
        db.executemany(
            "DELETE FROM messages WHERE id = ?", [(i,) for i in ids[first : first + size]]
        )
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--synchronous", default="FULL", choices=["NORMAL", "FULL"])
    args = parser.parse_args()
    print(f"{args.messages:,} messages, synchronous={args.synchronous}, WAL")
    with tempfile.TemporaryDirectory() as folder:
        for label, batched in (("single", False), ("batched", True)):
            base = floor(
                Path(folder) / f"floor-{label}.db", args.messages, args.synchronous, batched
            )
            rate = melange(
                Path(folder) / f"melange-{label}.db", args.messages, args.synchronous, batched
            )
            print(f"{label:8s} floor: raw sqlite3 insert+delete   {base:>9,.0f} msgs/s")
            print(f"{label:8s} melange: publish+consume+ack  ", end="")
            print(f"    {rate:>9,.0f} msgs/s   ratio {rate / base:.2f}")


if __name__ == "__main__":
    main()
