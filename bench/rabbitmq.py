"""melange on RabbitMQ beside raw pika doing the same work, against one broker.

Publishing: raw pika waits for each confirm (``BlockingConnection`` with
``confirm_delivery``); melange publishes a pydantic event in batches through
``MessagePublisher.publish_batch`` (``publish_batch_to_queue``: every confirm
in flight at once, each one checked). Consuming: raw pika ``basic_consume``
with prefetch 100 and a ``basic_ack`` per message; melange runs the same
messages through ``MessageDispatcher`` to a typed ``@listener``. Both sides use
the same kind of queue (quorum, which melange declares). "raw pika + pydantic
validate" is raw pika doing the work melange does per message as well:
``Numbered.model_validate_json(body)`` before the ``basic_ack``. With no
``--url`` a throwaway rabbitmq-server is started and stopped.

FastStream, the framework a user would pick instead (``faststream[rabbit]``,
asyncio over aio-pika, from ``pip install 'melange[bench]'``), consumes the
same messages in the same run: raw pika fills a durable quorum queue, then an
``async`` ``@broker.subscriber`` handler taking the pydantic model counts them
(prefetch 100 through ``Channel(prefetch_count=100)``, FastStream's default
ack after the handler returns, its per-message logging off with
``logger=None``). ``--no-faststream`` leaves it out. ``melange.aio``
consumes such a pre-filled queue too: ``AsyncMessageDispatcher`` on
``BridgedBackend(RabbitMQBackend(url))`` (melange's asyncio RabbitMQ backend,
the sync one's calls on a thread pool) to an ``async`` ``@listener``.

    .venv/bin/python bench/rabbitmq.py --messages 10000
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pika
from pydantic import BaseModel

from melange import Consumer, MessageDispatcher, MessagePublisher, listener
from melange.aio import AsyncMessageDispatcher, BridgedBackend
from melange.backends.rabbitmq import RabbitMQBackend
from tests.servers.rabbitmq import start_node

try:
    from faststream.rabbit import Channel, QueueType, RabbitBroker, RabbitQueue
except ImportError:  # the optional ``bench`` extra is not installed
    FASTSTREAM: str | None = None
else:
    FASTSTREAM = importlib.metadata.version("faststream")

QUORUM = {"x-queue-type": "quorum"}


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


class AsyncCounter(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    @listener
    async def on_number(self, event: Numbered) -> None:
        self.count += 1


def events(n: int) -> list[Numbered]:
    return [Numbered(number=i, customer_id="c-1", note="x" * 40) for i in range(n)]


def raw_messages(n: int) -> list[tuple[bytes, pika.BasicProperties]]:
    """The bytes and properties melange sends for the same events, built up front."""
    headers = {
        "correlation_id": "x" * 36,
        "causation_id": "x" * 36,
        "published_at": "2026-11-28T00:00:00.000000+00:00",
        "x-melange-serializer": 3,
    }
    return [
        (
            event.model_dump_json().encode(),
            pika.BasicProperties(
                delivery_mode=2, message_id=str(uuid.uuid4()), type="Numbered", headers=headers
            ),
        )
        for event in events(n)
    ]


def raw_publish(url: str, queue: str, n: int) -> float:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True, arguments=QUORUM)
    channel.confirm_delivery()
    messages = raw_messages(n)
    started = time.perf_counter()
    for body, properties in messages:
        channel.basic_publish("", queue, body, properties, mandatory=True)  # waits for the confirm
    elapsed = time.perf_counter() - started
    connection.close()
    return n / elapsed


def raw_consume(url: str, queue: str, n: int, *, validate: bool = False) -> float:
    """Raw pika acking ``n`` messages; ``validate`` parses each body into ``Numbered`` first."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=100)
    seen = [0]

    def on_message(ch: object, method: object, properties: object, body: bytes) -> None:
        if validate:
            Numbered.model_validate_json(body)  # the typed work melange does per message
        channel.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]
        seen[0] += 1
        if seen[0] == n:
            channel.stop_consuming()

    channel.basic_consume(queue, on_message)
    started = time.perf_counter()
    channel.start_consuming()
    elapsed = time.perf_counter() - started
    channel.queue_delete(queue)
    connection.close()
    assert seen[0] == n
    return n / elapsed


def raw_validated_consume(url: str, queue: str, n: int) -> float:
    """Raw pika validating and acking ``n`` messages put in the queue beforehand."""
    raw_fill(url, queue, n)
    return raw_consume(url, queue, n, validate=True)  # deletes the queue


def melange_publish(url: str, queue: str, n: int, batch: int) -> float:
    with RabbitMQBackend(url) as backend:
        MessageDispatcher(backend, consumers=[Counter()]).declare(queue)
        publisher = MessagePublisher(backend)
        payload = events(n)
        started = time.perf_counter()
        for first in range(0, n, batch):
            publisher.publish_batch(payload[first : first + batch], queue=queue)
        elapsed = time.perf_counter() - started
    return n / elapsed


def melange_publish_single(url: str, queue: str, n: int) -> float:
    with RabbitMQBackend(url) as backend:
        MessageDispatcher(backend, consumers=[Counter()]).declare(queue)
        publisher = MessagePublisher(backend)
        payload = events(n)
        started = time.perf_counter()
        for event in payload:
            publisher.publish(event, queue=queue)
        elapsed = time.perf_counter() - started
        backend.delete_queue(backend.get_queue(queue))
    return n / elapsed


def melange_consume(url: str, queue: str, n: int, batch_size: int) -> float:
    with RabbitMQBackend(url) as backend:
        counter = Counter()
        dispatcher = MessageDispatcher(backend, consumers=[counter], batch_size=batch_size)
        dispatcher.declare(queue)
        started = time.perf_counter()
        dispatcher.consume_loop(queue, max_messages=n)
        elapsed = time.perf_counter() - started
        assert counter.count == n, counter.count
        backend.delete_queue(backend.get_queue(queue))
        backend.delete_queue(backend.get_queue(f"{queue}-dlq"))
    return n / elapsed


def raw_fill(url: str, queue: str, n: int, timeout: float = 120.0) -> None:
    """Fill a durable quorum queue with the same messages, untimed; return once all are in."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, durable=True, arguments=QUORUM)
        for body, properties in raw_messages(n):
            channel.basic_publish("", queue, body, properties)
        deadline = time.monotonic() + timeout
        while channel.queue_declare(queue, passive=True).method.message_count < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{queue} did not reach {n} messages in {timeout:.0f}s")
            connection.sleep(0.05)
    finally:
        connection.close()


def raw_delete(url: str, queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        connection.channel().queue_delete(queue)
    finally:
        connection.close()


async def _faststream_consume(url: str, queue: str, n: int) -> float:
    broker = RabbitBroker(url, logger=None)
    handled = [0]
    all_handled = asyncio.Event()

    @broker.subscriber(
        RabbitQueue(queue, queue_type=QueueType.QUORUM, durable=True),
        channel=Channel(prefetch_count=100),
    )
    async def on_number(event: Numbered) -> None:
        handled[0] += 1
        if handled[0] == n:
            all_handled.set()

    await broker.connect()
    try:
        started = time.perf_counter()
        await broker.start()  # declares the (existing) queue and starts consuming
        await asyncio.wait_for(all_handled.wait(), timeout=max(120.0, n / 50))
        elapsed = time.perf_counter() - started
    finally:
        await broker.stop()
    assert handled[0] == n, handled[0]
    return n / elapsed


def faststream_consume(url: str, queue: str, n: int) -> float:
    """FastStream consuming ``n`` messages that raw pika put in the queue beforehand."""
    raw_fill(url, queue, n)
    try:
        return asyncio.run(_faststream_consume(url, queue, n))
    finally:
        raw_delete(url, queue)


async def _melange_aio_consume(url: str, queue: str, n: int, batch_size: int) -> float:
    backend = BridgedBackend(RabbitMQBackend(url))
    counter = AsyncCounter()
    try:
        dispatcher = AsyncMessageDispatcher(backend, [counter], batch_size=batch_size)
        started = time.perf_counter()
        await dispatcher.consume_loop(queue, max_messages=n)  # finds the existing queue
        elapsed = time.perf_counter() - started
    finally:
        await backend.close_connection()
    assert counter.count == n, counter.count
    return n / elapsed


def melange_aio_consume(url: str, queue: str, n: int, batch_size: int) -> float:
    """``AsyncMessageDispatcher`` consuming ``n`` messages that raw pika put in the queue."""
    raw_fill(url, queue, n)
    try:
        return asyncio.run(_melange_aio_consume(url, queue, n, batch_size))
    finally:
        raw_delete(url, queue)


def run(
    url: str, n: int, batch: int, dispatch_batch: int, rounds: int, *, faststream: bool
) -> None:
    figures: dict[str, list[float]] = {}
    for _ in range(rounds):
        tag = uuid.uuid4().hex[:6]
        for name, rate in (
            ("raw_pub", raw_publish(url, f"bench-raw-{tag}", n)),
            ("raw_con", raw_consume(url, f"bench-raw-{tag}", n)),
            ("raw_val", raw_validated_consume(url, f"bench-validated-{tag}", n)),
            ("single", melange_publish_single(url, f"bench-single-{tag}", min(n, 2000))),
            ("mel_pub", melange_publish(url, f"bench-melange-{tag}", n, batch)),
            ("mel_con", melange_consume(url, f"bench-melange-{tag}", n, dispatch_batch)),
            ("aio_con", melange_aio_consume(url, f"bench-aio-{tag}", n, dispatch_batch)),
        ):
            figures.setdefault(name, []).append(rate)
        if faststream:
            rate = faststream_consume(url, f"bench-faststream-{tag}", n)
            figures.setdefault("fs_con", []).append(rate)
    raw_pub, raw_con, raw_val, single, mel_pub, mel_con, aio_con = (
        statistics.median(figures[name])
        for name in ("raw_pub", "raw_con", "raw_val", "single", "mel_pub", "mel_con", "aio_con")
    )
    print(f"{n:,} messages, quorum queues, persistent, prefetch 100; median of {rounds} rounds")
    print(f"publish  raw pika, one confirm awaited per message   {raw_pub:>9,.0f} msgs/s")
    print(f"publish  melange, one publish() at a time            {single:>9,.0f} msgs/s")
    label = f"melange, publish_batch of {batch}, all confirmed"
    print(
        f"publish  {label:<44s}{mel_pub:>9,.0f} msgs/s   x{mel_pub / raw_pub:.1f} raw (target x5)"
    )
    print(f"consume  raw pika, basic_ack per message             {raw_con:>9,.0f} msgs/s")
    label = f"melange, typed dispatch (batch {dispatch_batch})"
    print(
        f"consume  {label:<44s}{mel_con:>9,.0f} msgs/s   x{mel_con / raw_con:.2f} raw (target x0.9)"
    )
    label = "raw pika + pydantic validate, basic_ack each"
    print(
        f"consume  {label:<44s}{raw_val:>9,.0f} msgs/s   x{raw_val / raw_con:.2f} raw;"
        f" melange x{mel_con / raw_val:.2f} this"
    )
    against = ""
    if faststream:
        fs_con = statistics.median(figures["fs_con"])
        label = f"FastStream {FASTSTREAM}, async pydantic subscriber"
        print(
            f"consume  {label:<44s}{fs_con:>9,.0f} msgs/s   x{fs_con / raw_con:.2f} raw;"
            f" melange x{mel_con / fs_con:.2f} FastStream"
        )
        print("         (FastStream: durable quorum queue, prefetch 100, ack after the handler)")
        against = f"x{aio_con / fs_con:.2f} FastStream (target x2.5); "
    label = f"melange.aio, async listener (batch {dispatch_batch})"
    against += f"x{aio_con / mel_con:.2f} sync melange"
    print(f"consume  {label:<44s}{aio_con:>9,.0f} msgs/s   {against}")
    print(
        "         (melange.aio: BridgedBackend(RabbitMQBackend), the same kind of pre-filled queue)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500, help="events per publish_batch")
    parser.add_argument("--dispatch-batch", type=int, default=10, help="dispatcher batch_size")
    parser.add_argument("--rounds", type=int, default=3, help="each figure is the median")
    parser.add_argument("--url", help="an existing broker (default: start a throwaway node)")
    parser.add_argument(
        "--no-faststream", action="store_true", help="leave out the FastStream consumer"
    )
    args = parser.parse_args()
    faststream = not args.no_faststream
    if faststream and FASTSTREAM is None:
        print("FastStream 0.6+ is not installed, skipping it: pip install 'melange[bench]'")
        faststream = False
    settings = (args.messages, args.batch, args.dispatch_batch, args.rounds)
    if args.url:
        run(args.url, *settings, faststream=faststream)
        return
    node = start_node()
    try:
        run(node.url, *settings, faststream=faststream)
    finally:
        node.stop()


if __name__ == "__main__":
    main()
