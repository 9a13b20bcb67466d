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

The peer a user would pick: huey's ``SqliteHuey`` (``pip install
'melange[bench]'``) on its own file, WAL and the same ``synchronous``. Publish
is enqueueing a ``@huey.task()`` with the event's fields one at a time;
consume+ack is ``huey.dequeue()`` then ``huey.execute(task)`` per task, what
huey's consumer worker does, without its threads and scheduler. Beside it,
melange publishing one at a time, then consuming and acknowledging as a
worker does by default (receive 10, acknowledgements grouped), timed apart.
``--no-huey`` leaves it out.

    .venv/bin/python bench/sqlite.py --messages 10000 --synchronous FULL
"""

from __future__ import annotations

import argparse
import importlib.metadata
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

try:
    from huey import SqliteHuey
except ImportError:  # the optional ``bench`` extra is not installed
    HUEY: str | None = None
else:
    HUEY = importlib.metadata.version("huey")

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


def melange(
    path: Path, n: int, synchronous: str, batched: bool, receive: int | None = None
) -> tuple[float, float, float]:
    """Return msgs/s for publish + consume + acknowledge, for publish alone, for consume alone.

    ``receive`` is the dispatcher's batch size (default: 100 batched, else 1).
    """
    backend = SQLiteBackend(path, synchronous=synchronous)
    counter = Counter()
    size = receive if receive is not None else BATCH if batched else 1
    dispatcher = MessageDispatcher(backend, consumers=[counter], batch_size=size)
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
    published = time.perf_counter()
    dispatcher.consume_loop("orders", max_messages=n)
    finished = time.perf_counter()
    assert counter.count == n
    backend.close_connection()
    return n / (finished - started), n / (published - started), n / (finished - published)


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


def huey(path: Path, n: int, synchronous: str) -> tuple[float, float]:
    """Return msgs/s for huey enqueueing ``n`` tasks one at a time, then running them in-process."""
    # fsync=True is ``PRAGMA synchronous=2`` (FULL) on each connection, fsync=False is 0
    # (OFF), None leaves SQLite's default; so NORMAL is set by hand on huey's one connection.
    queue = SqliteHuey("orders", filename=str(path), fsync=synchronous == "FULL")
    if synchronous != "FULL":
        queue.storage.conn.execute(f"PRAGMA synchronous={synchronous}")
    handled = [0]

    @queue.task()
    def on_order(number: int, customer_id: str, note: str) -> None:
        handled[0] += 1

    payloads = [e.model_dump() for e in events(n)]
    started = time.perf_counter()
    for payload in payloads:
        on_order(**payload)
    enqueued = time.perf_counter()
    for _ in range(n):
        queue.execute(queue.dequeue())  # dequeue deletes the row: there is no separate ack
    finished = time.perf_counter()
    assert handled[0] == n
    level = queue.storage.sql("PRAGMA synchronous", results=True)[0][0]
    assert level == {"NORMAL": 1, "FULL": 2}[synchronous], level
    queue.storage.close()
    return n / (enqueued - started), n / (finished - enqueued)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000, help="per run (10,000)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per figure; medians (3)")
    parser.add_argument("--synchronous", default="FULL", choices=["NORMAL", "FULL"])
    parser.add_argument("--no-huey", action="store_true", help="leave out huey's SqliteHuey")
    args = parser.parse_args()
    with_huey = not args.no_huey
    if with_huey and HUEY is None:
        print("huey is not installed, skipping it: pip install 'melange[bench]'")
        with_huey = False
    n = args.messages
    print(f"{n:,} messages per run, median of {args.rounds}, synchronous={args.synchronous}, WAL")
    print(
        f"{'case':8s} {'raw sqlite3 floor':>18s} {'melange':>9s} {'ratio':>6s}"
        f" {'backend alone':>14s} {'ratio':>6s}  (msgs/s)"
    )
    split: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for label, batched in (("single", False), ("batched", True)):
            floors, rates, alone = [], [], []
            for round_ in range(args.rounds):
                base = Path(folder) / f"{label}-{round_}"
                floors.append(floor(base.with_suffix(".floor.db"), n, args.synchronous, batched))
                total, _, _ = melange(base.with_suffix(".db"), n, args.synchronous, batched)
                rates.append(total)
                alone.append(
                    backend_only(base.with_suffix(".raw.db"), n, args.synchronous, batched)
                )
                if with_huey and not batched:
                    # Published one at a time, consumed as a worker does by default
                    # (receive 10, their acknowledgements grouped).
                    _, publish, consume = melange(
                        base.with_suffix(".worker.db"), n, args.synchronous, False, receive=10
                    )
                    split.setdefault("melange", []).append(publish)
                    split.setdefault("melange_ack", []).append(consume)
                    publish, consume = huey(base.with_suffix(".huey.db"), n, args.synchronous)
                    split.setdefault("huey", []).append(publish)
                    split.setdefault("huey_ack", []).append(consume)
            low, rate, raw = (statistics.median(x) for x in (floors, rates, alone))
            print(
                f"{label:8s} {low:>18,.0f} {rate:>9,.0f} {rate / low:>6.2f}"
                f" {raw:>14,.0f} {raw / low:>6.2f}"
            )
    if not with_huey:
        return
    fsync = "fsync=True" if args.synchronous == "FULL" else "synchronous=NORMAL"
    print(
        f"\npublished one at a time: melange (its worker's default receive of 10)"
        f" beside huey {HUEY} SqliteHuey ({fsync}, WAL)"
    )
    print(f"{'step':12s} {'melange':>9s} {'huey':>9s} {'melange ÷ huey':>15s}  (msgs/s)")
    for step, ours, theirs in (
        ("publish", "melange", "huey"),
        ("consume+ack", "melange_ack", "huey_ack"),
    ):
        mel, peer = statistics.median(split[ours]), statistics.median(split[theirs])
        print(f"{step:12s} {mel:>9,.0f} {peer:>9,.0f} {mel / peer:>15.2f}")


if __name__ == "__main__":
    main()
