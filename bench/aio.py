"""melange.aio on RabbitMQ beside raw aio-pika and FastStream, and beside sync melange.

Consuming: a durable quorum queue filled beforehand (untimed) is drained by
raw aio-pika (``queue.consume`` with prefetch 100, an ``ack`` per message),
by FastStream (an ``async`` pydantic ``@broker.subscriber``, prefetch 100,
ack after the handler, logging off), by ``AsyncMessageDispatcher`` to an
``async def`` typed ``@listener`` (``max_concurrency`` handlers in flight),
and by the sync ``MessageDispatcher``. Publishing: one awaited publish at a
time, each confirmed, by raw aio-pika, FastStream and
``AsyncMessagePublisher``; then ``publish_batch``. A throwaway
rabbitmq-server is started and stopped unless ``--url`` is given.

    .venv/bin/python bench/aio.py --messages 5000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aio_pika
from faststream.rabbit import RabbitBroker, RabbitQueue

from bench.rabbitmq import (
    FASTSTREAM,
    QUORUM,
    AsyncCounter,
    Numbered,
    events,
    faststream_consume,
    melange_consume,
    melange_publish,
    raw_delete,
    raw_fill,
)
from melange.aio import AsyncMessageDispatcher, AsyncMessagePublisher, from_url
from tests.servers.rabbitmq import start_node


async def aio_pika_consume(url: str, queue: str, n: int) -> float:
    raw_fill(url, queue, n)
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=100)
        declared = await channel.declare_queue(queue, durable=True, arguments=QUORUM)
        done = asyncio.Event()
        seen = [0]

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            Numbered.model_validate_json(message.body)  # the same typed work as the others
            await message.ack()
            seen[0] += 1
            if seen[0] == n:
                done.set()

        started = time.perf_counter()
        await declared.consume(on_message)
        await asyncio.wait_for(done.wait(), timeout=300)
        elapsed = time.perf_counter() - started
    finally:
        await connection.close()
        raw_delete(url, queue)
    return n / elapsed


async def melange_aio_consume(url: str, queue: str, n: int, concurrency: int) -> float:
    backend = from_url(url)
    try:
        counter = AsyncCounter()
        dispatcher = AsyncMessageDispatcher(backend, [counter], max_concurrency=concurrency)
        await dispatcher.declare(queue)
        publisher = AsyncMessagePublisher(backend)
        payload = events(n)
        for first in range(0, n, 500):
            await publisher.publish_batch(payload[first : first + 500], queue=queue)
        started = time.perf_counter()
        await dispatcher.consume_loop(queue, max_messages=n)
        elapsed = time.perf_counter() - started
        assert counter.count == n, counter.count
        await backend.delete_queue(await backend.get_queue(queue))
        await backend.delete_queue(await backend.get_queue(f"{queue}-dlq"))
    finally:
        await backend.close_connection()
    return n / elapsed


async def aio_pika_publish(url: str, queue: str, n: int) -> float:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue, durable=True, arguments=QUORUM)
        bodies = [e.model_dump_json().encode() for e in events(n)]
        started = time.perf_counter()
        for body in bodies:
            await channel.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=queue,
            )  # returns once confirmed
        elapsed = time.perf_counter() - started
    finally:
        await connection.close()
        raw_delete(url, queue)
    return n / elapsed


async def faststream_publish(url: str, queue: str, n: int) -> float:
    broker = RabbitBroker(url, logger=None)
    await broker.connect()
    try:
        await broker.declare_queue(RabbitQueue(queue, durable=True, arguments=QUORUM))
        payload = events(n)
        started = time.perf_counter()
        for event in payload:
            await broker.publish(event, queue)
        elapsed = time.perf_counter() - started
    finally:
        await broker.stop()
        raw_delete(url, queue)
    return n / elapsed


async def melange_aio_publish(url: str, queue: str, n: int, batch: int | None) -> float:
    backend = from_url(url)
    try:
        dispatcher = AsyncMessageDispatcher(backend, [AsyncCounter()])
        await dispatcher.declare(queue)
        publisher = AsyncMessagePublisher(backend)
        payload = events(n)
        started = time.perf_counter()
        if batch is None:
            for event in payload:
                await publisher.publish(event, queue=queue)
        else:
            for first in range(0, n, batch):
                await publisher.publish_batch(payload[first : first + batch], queue=queue)
        elapsed = time.perf_counter() - started
        await backend.delete_queue(await backend.get_queue(queue))
        await backend.delete_queue(await backend.get_queue(f"{queue}-dlq"))
    finally:
        await backend.close_connection()
    return n / elapsed


def run(url: str, n: int, rounds: int, concurrency: int) -> None:
    figures: dict[str, list[float]] = {}

    def record(name: str, rate: float) -> None:
        figures.setdefault(name, []).append(rate)

    for _ in range(rounds):
        tag = uuid.uuid4().hex[:6]
        record("pika_con", asyncio.run(aio_pika_consume(url, f"b-aiopika-{tag}", n)))
        record("fs_con", faststream_consume(url, f"b-fs-{tag}", n))
        record("aio_con", asyncio.run(melange_aio_consume(url, f"b-aio-{tag}", n, concurrency)))
        melange_publish(url, f"b-sync-{tag}", n, 500)  # fills the queue, untimed
        record("sync_con", melange_consume(url, f"b-sync-{tag}", n, 10))
        single = min(n, 2000)
        record("pika_pub", asyncio.run(aio_pika_publish(url, f"b-aiopika-p-{tag}", single)))
        record("fs_pub", asyncio.run(faststream_publish(url, f"b-fs-p-{tag}", single)))
        record("aio_pub", asyncio.run(melange_aio_publish(url, f"b-aio-p-{tag}", single, None)))
        record("aio_batch", asyncio.run(melange_aio_publish(url, f"b-aio-b-{tag}", n, 500)))
    med = {name: statistics.median(values) for name, values in figures.items()}
    print(f"{n:,} messages, quorum queues, persistent, prefetch 100; median of {rounds} rounds")
    rows = [
        ("consume", "raw aio-pika, ack per message", "pika_con"),
        ("consume", f"FastStream {FASTSTREAM}, async pydantic subscriber", "fs_con"),
        ("consume", f"melange.aio, async @listener, {concurrency} in flight", "aio_con"),
        ("consume", "melange sync MessageDispatcher", "sync_con"),
        ("publish", "raw aio-pika, one confirmed publish awaited", "pika_pub"),
        ("publish", "FastStream, one publish awaited", "fs_pub"),
        ("publish", "melange.aio, one publish() awaited", "aio_pub"),
        ("publish", "melange.aio, publish_batch of 500", "aio_batch"),
    ]
    for kind, label, name in rows:
        base = "fs_con" if kind == "consume" else "fs_pub"
        ratio = med[name] / med[base]
        print(f"{kind}  {label:<48s}{med[name]:>9,.0f} msgs/s   x{ratio:.2f} FastStream")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3, help="each figure is the median")
    parser.add_argument("--concurrency", type=int, default=10, help="max_concurrency")
    parser.add_argument("--url", help="an existing broker (default: start a throwaway node)")
    args = parser.parse_args()
    if args.url:
        run(args.url, args.messages, args.rounds, args.concurrency)
        return
    node = start_node()
    try:
        run(node.url, args.messages, args.rounds, args.concurrency)
    finally:
        node.stop()


if __name__ == "__main__":
    main()
