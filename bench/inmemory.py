"""Throughput of publish -> dispatch -> ack through the in-memory backend.

Prints melange's messages/s beside the floor (pydantic ``model_dump_json`` +
``model_validate_json`` alone, the work no framework can skip) and the ratio,
and ``melange.aio``'s beside the sync path, on the bridge and on a native
async backend.

    .venv/bin/python bench/inmemory.py --messages 100000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import BaseModel

from melange import Consumer, MessageDispatcher, MessagePublisher, listener
from melange.aio import AsyncMessageDispatcher, BridgedBackend
from melange.backends.memory import InMemoryMessagingBackend
from melange.testing import AsyncInMemoryBackend


class OrderLine(BaseModel):
    sku: str
    quantity: int
    unit_price: Decimal


class OrderCreated(BaseModel):
    order_id: str
    customer_id: str
    total: Decimal
    currency: str
    placed_at: datetime
    lines: list[OrderLine]


class Counter(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    @listener
    def on_created(self, event: OrderCreated) -> None:
        self.count += 1


def events(n: int) -> list[OrderCreated]:
    lines = [
        OrderLine(sku="sku-1", quantity=1, unit_price=Decimal("9.90")),
        OrderLine(sku="sku-2", quantity=2, unit_price=Decimal("9.90")),
    ]
    placed_at = datetime.now(UTC)
    return [
        OrderCreated(
            order_id=f"o-{i}",
            customer_id="c-1",
            total=Decimal("29.70"),
            currency="EUR",
            placed_at=placed_at,
            lines=lines,
        )
        for i in range(n)
    ]


def floor(n: int) -> float:
    batch = events(n)
    gc.freeze()  # the prepared events are scaffolding: keep the collector off them
    started = time.perf_counter()
    for event in batch:
        OrderCreated.model_validate_json(event.model_dump_json())
    elapsed = time.perf_counter() - started
    gc.unfreeze()
    return n / elapsed


def melange(n: int, batch_size: int, chunk: int) -> float:
    """Publish ``chunk`` events, dispatch them, repeat: a steady state with a short queue."""
    backend = InMemoryMessagingBackend()
    counter = Counter()
    dispatcher = MessageDispatcher(backend, consumers=[counter], batch_size=batch_size)
    dispatcher.declare("orders")
    publisher = MessagePublisher(backend)
    batch = events(n)
    gc.freeze()
    started = time.perf_counter()
    for start in range(0, n, chunk):
        for event in batch[start : start + chunk]:
            publisher.publish(event)
        dispatcher.consume_loop("orders", max_messages=min(chunk, n - start))
    elapsed = time.perf_counter() - started
    gc.unfreeze()
    assert counter.count == n, (counter.count, n)
    return n / elapsed


class AsyncCounter(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    @listener
    async def on_created(self, event: OrderCreated) -> None:
        self.count += 1


def melange_aio(n: int, chunk: int, *, native: bool) -> float:
    """The same steady state under ``melange.aio``: an async listener, 10 in flight."""
    broker = InMemoryMessagingBackend()
    aio = AsyncInMemoryBackend(broker) if native else BridgedBackend(broker)
    counter = AsyncCounter()
    dispatcher = AsyncMessageDispatcher(aio, consumers=[counter], batch_size=10)
    publisher = MessagePublisher(broker)
    batch = events(n)

    async def run() -> float:
        await dispatcher.declare("orders")
        gc.freeze()
        started = time.perf_counter()
        for start in range(0, n, chunk):
            for event in batch[start : start + chunk]:
                publisher.publish(event)
            await dispatcher.consume_loop("orders", max_messages=min(chunk, n - start))
        elapsed = time.perf_counter() - started
        gc.unfreeze()
        await aio.close_connection()
        return elapsed

    elapsed = asyncio.run(run())
    assert counter.count == n, (counter.count, n)
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=1000, help="events published per drain")
    args = parser.parse_args()
    n = args.messages
    floors = [floor(n) for _ in range(args.rounds)]
    runs = {size: [melange(n, size, args.chunk) for _ in range(args.rounds)] for size in (10, 100)}
    aio_runs = {
        native: [melange_aio(n, args.chunk, native=native) for _ in range(args.rounds)]
        for native in (False, True)
    }
    base = statistics.median(floors)
    print(f"{n:,} messages, published {args.chunk} at a time, median of {args.rounds} rounds")
    print(f"{'floor: pydantic dump+validate':44s} {base:>10,.0f} msgs/s")
    for size, rates in runs.items():
        rate = statistics.median(rates)
        label = f"melange publish->dispatch->ack (batch {size})"
        print(f"{label:44s} {rate:>10,.0f} msgs/s   ratio {rate / base:.2f}")
    sync_rate = statistics.median(runs[10])
    for native, rates in aio_runs.items():
        rate = statistics.median(rates)
        label = "melange.aio, " + ("native AsyncInMemoryBackend" if native else "BridgedBackend")
        print(
            f"{label:44s} {rate:>10,.0f} msgs/s   ratio {rate / base:.2f}"
            f"   x{rate / sync_rate:.2f} the sync path"
        )


if __name__ == "__main__":
    main()
