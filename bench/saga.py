"""What a saga costs: completed sagas per second, and one saga step beside a plain consumer.

- **end to end**: ``examples/saga`` with its four service processes on the
  embedded SQLite broker, ``--orders`` orders that all complete (reserve,
  charge, ship: seven messages and four saga steps each); sagas completed
  per second from the first publish to the last instance finished.
- **one step**: in one process on one SQLite file (broker and saga store), a
  plain ``Consumer`` that receives an event and sends one command beside an
  ``OrderSaga`` step that receives the same event for an existing instance,
  loads it, runs the same handler, saves state and outbox in one
  transaction, and sends the command after the commit. Handled messages per
  second of each and their ratio, median of ``--rounds`` runs.

    .venv/bin/python bench/saga.py --orders 200 --steps 2000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import BaseModel

from examples.saga.demo import Demo, Planned
from melange import Consumer, MessageDispatcher, MessagePublisher, listener
from melange.backends.sqlite import SQLiteBackend
from melange.saga import Saga, SQLiteSagaStore, starts


class Started(BaseModel):
    order_id: str


class Progressed(BaseModel):
    order_id: str
    step: int


class Command(BaseModel):
    order_id: str
    step: int


class State(BaseModel):
    order_id: str = ""
    steps: int = 0


class Stepper(Saga[State]):
    correlation = {Started: "order_id", Progressed: "order_id"}  # noqa: RUF012

    @starts
    def on_started(self, event: Started) -> None:
        self.state.order_id = event.order_id

    @listener
    def on_progressed(self, event: Progressed) -> None:
        self.state.steps += 1
        self.send(Command(order_id=event.order_id, step=event.step), queue="commands")


class Plain(Consumer):
    def __init__(self, publisher: MessagePublisher) -> None:
        super().__init__()
        self.publisher = publisher

    @listener
    def on_progressed(self, event: Progressed) -> None:
        self.publisher.publish(Command(order_id=event.order_id, step=event.step), queue="commands")


def one_step(folder: Path, steps: int, saga: bool) -> float:
    """Return messages handled per second by a saga step (or a plain consumer)."""
    path = folder / f"{'saga' if saga else 'plain'}-{time.monotonic_ns()}.db"
    with SQLiteBackend(path, synchronous="NORMAL") as backend:
        publisher = MessagePublisher(backend)
        backend.declare_queue("commands")
        if saga:
            consumer: Consumer = Stepper(
                SQLiteSagaStore(path, synchronous="NORMAL"),
                publisher,
                queue="steps",
                poll_interval=0,
            )
        else:
            consumer = Plain(publisher)
        dispatcher = MessageDispatcher(backend, [consumer])
        dispatcher.declare("steps")
        orders = [f"o-{n}" for n in range(100)]
        if saga:
            publisher.publish_batch([Started(order_id=o) for o in orders], queue="steps")
            dispatcher.consume_loop("steps", max_messages=len(orders))
        publisher.publish_batch(
            [Progressed(order_id=orders[n % len(orders)], step=n) for n in range(steps)],
            queue="steps",
        )
        started = time.perf_counter()
        handled = dispatcher.consume_loop("steps", max_messages=steps, idle_timeout=5)
        elapsed = time.perf_counter() - started
        assert handled == steps
    return steps / elapsed


def end_to_end(folder: Path, orders: int) -> float:
    """Return sagas completed per second by the four-service example."""
    demo = Demo(folder, f"sqlite:///{folder / 'broker.db'}")
    batch = [Planned(f"o-{n}", "widget", 1, Decimal("10"), None) for n in range(orders)]
    demo.declare()
    demo.start_all()
    try:
        time.sleep(1.0)  # the workers import and connect
        started = time.perf_counter()
        demo.place(batch)
        assert demo.wait(batch, timeout=600, settle=0.0)
        elapsed = time.perf_counter() - started
    finally:
        demo.stop_all()
    return orders / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        plain = statistics.median(one_step(folder, args.steps, False) for _ in range(args.rounds))
        saga = statistics.median(one_step(folder, args.steps, True) for _ in range(args.rounds))
        (folder / "e2e").mkdir()
        sagas = end_to_end(folder / "e2e", args.orders)
    figures = {
        "sagas_completed_per_s": round(sagas, 1),
        "plain_consumer_msgs_per_s": round(plain),
        "saga_step_msgs_per_s": round(saga),
        "saga_step_cost_ratio": round(plain / saga, 2),
    }
    print(
        f"end to end, 4 services on SQLite : {sagas:8.1f} sagas completed/s"
        f" ({args.orders} orders, 7 messages and 4 saga steps each)"
    )
    print(f"plain consumer, event -> command : {plain:8.0f} msgs/s")
    print(
        f"saga step, event -> command      : {saga:8.0f} msgs/s"
        f"  (x{plain / saga:.2f} the plain consumer's time per message)"
    )
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
