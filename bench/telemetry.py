"""What ``TelemetryMiddleware`` costs per message: publish -> dispatch -> ack, in memory.

Side by side, in one process: no middleware; the middleware with only the
OpenTelemetry API (no SDK configured: spans are no-ops); the middleware
with the SDK recording every span (``BatchSpanProcessor``, as in
production, into an in-memory exporter) and every metric. Median of ``--rounds`` runs.

On the in-memory broker (about 30 µs a message) and on the embedded SQLite
broker, where a message costs what it costs on a real broker; then under
``melange.aio`` (an ``async def`` listener, in memory), where the
middleware's async hook runs on the event loop.

    .venv/bin/python bench/telemetry.py --messages 20000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from melange import Consumer, MessageDispatcher, MessagePublisher, Middleware, aio, listener
from melange.backends.interfaces import MessagingBackend
from melange.backends.memory import InMemoryMessagingBackend
from melange.backends.sqlite import SQLiteBackend
from melange.telemetry import TelemetryMiddleware


class OrderPlaced(BaseModel):
    order_id: str
    total: int


class Count(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    @listener
    def on_placed(self, event: OrderPlaced) -> None:
        self.seen += 1


def throughput(messages: int, middleware: list[Middleware], folder: Path | None) -> float:
    backend: MessagingBackend = (
        InMemoryMessagingBackend()
        if folder is None
        else SQLiteBackend(folder / f"{time.monotonic_ns()}.db", synchronous="NORMAL")
    )
    consumer = Count()
    dispatcher = MessageDispatcher(backend, [consumer], middleware=middleware)
    dispatcher.declare("orders")
    publisher = MessagePublisher(backend, middleware=middleware)
    started = time.perf_counter()
    for n in range(messages):
        publisher.publish(OrderPlaced(order_id=str(n), total=n))
    dispatcher.consume_loop("orders", max_messages=messages)
    elapsed = time.perf_counter() - started
    backend.close_connection()
    assert consumer.seen == messages
    return messages / elapsed


class AsyncCount(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    @listener
    async def on_placed(self, event: OrderPlaced) -> None:
        self.seen += 1


def throughput_async(messages: int, middleware: list[Middleware], folder: Path | None) -> float:
    async def consume() -> float:
        backend = aio.BridgedBackend(InMemoryMessagingBackend())
        consumer = AsyncCount()
        dispatcher = aio.AsyncMessageDispatcher(backend, [consumer], middleware=middleware)
        await dispatcher.declare("orders")
        publisher = MessagePublisher(backend.sync, middleware=middleware)
        started = time.perf_counter()
        publisher.publish_batch([OrderPlaced(order_id=str(n), total=n) for n in range(messages)])
        await dispatcher.consume_loop("orders", max_messages=messages)
        elapsed = time.perf_counter() - started
        await backend.close_connection()
        assert consumer.seen == messages
        return messages / elapsed

    return asyncio.run(consume())


def recording() -> TelemetryMiddleware:
    spans = TracerProvider()
    spans.add_span_processor(BatchSpanProcessor(InMemorySpanExporter(), max_queue_size=500_000))
    return TelemetryMiddleware(spans, MeterProvider(metric_readers=[InMemoryMetricReader()]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cases = {
        "no middleware": lambda: [],
        "TelemetryMiddleware, API only (no SDK)": lambda: [TelemetryMiddleware()],
        "TelemetryMiddleware, SDK recording": lambda: [recording()],
    }
    with tempfile.TemporaryDirectory() as name:
        places = (
            ("in memory", None, throughput),
            ("SQLite", Path(name), throughput),
            ("melange.aio, in memory", None, throughput_async),
        )
        for where, folder, measure in places:
            results = {
                case: statistics.median(
                    measure(args.messages, make(), folder) for _ in range(args.rounds)
                )
                for case, make in cases.items()
            }
            base = results["no middleware"]
            print(f"{where}, {args.messages} messages:")
            for case, rate in results.items():
                print(f"  {case:<40} {rate:9.0f} msgs/s   x{base / rate:.2f} the time per message")


if __name__ == "__main__":
    main()
