"""SNS/SQS request cost and throughput: melange beside raw boto3, against moto's server.

Starts moto's HTTP server on 127.0.0.1, then sends N messages through a queue
three ways and prints messages/s and HTTP requests per message (counted with
botocore's ``before-send`` event; that figure carries over to real AWS):

- raw boto3, naive: one SendMessage, one ReceiveMessage, one DeleteMessage each;
- raw boto3, batched: SendMessageBatch, ReceiveMessage of 10, DeleteMessageBatch;
- melange: ``MessagePublisher.publish_batch`` then ``MessageDispatcher.consume_loop``
  with a pydantic event.

    .venv/bin/python bench/sqs.py --messages 500
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moto.server import ThreadedMotoServer
from pydantic import BaseModel

from melange import Consumer, MessageDispatcher, MessagePublisher, listener
from melange.backends.sqs import LocalSQSBackend
from tests.support import free_port


class OrderCreated(BaseModel):
    order_id: str
    customer_id: str


class Counting(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    @listener
    def on_created(self, event: OrderCreated) -> None:
        self.count += 1


def count_requests(*clients: Any) -> Counter[str]:
    calls: Counter[str] = Counter()

    def count(**kwargs: Any) -> None:
        calls[kwargs["event_name"].split(".")[-1]] += 1

    for client in clients:
        client.meta.events.register("before-send", count)
    return calls


def raw_naive(backend: LocalSQSBackend, n: int) -> tuple[float, Counter[str]]:
    sqs = backend.clients[1]
    url = sqs.create_queue(QueueName=f"naive-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    calls = count_requests(sqs)
    body = OrderCreated(order_id="o", customer_id="c").model_dump_json()
    started = time.perf_counter()
    for _ in range(n):
        sqs.send_message(QueueUrl=url, MessageBody=body)
    received = 0
    while received < n:
        for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1).get("Messages", []):
            OrderCreated.model_validate_json(message["Body"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            received += 1
    return n / (time.perf_counter() - started), calls


def raw_batched(backend: LocalSQSBackend, n: int) -> tuple[float, Counter[str]]:
    sqs = backend.clients[1]
    url = sqs.create_queue(QueueName=f"batched-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    calls = count_requests(sqs)
    body = OrderCreated(order_id="o", customer_id="c").model_dump_json()
    started = time.perf_counter()
    for first in range(0, n, 10):
        entries = [{"Id": str(i), "MessageBody": body} for i in range(min(10, n - first))]
        sqs.send_message_batch(QueueUrl=url, Entries=entries)
    received = 0
    while received < n:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        for message in messages:
            OrderCreated.model_validate_json(message["Body"])
        if messages:
            sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ],
            )
        received += len(messages)
    return n / (time.perf_counter() - started), calls


def melange(backend: LocalSQSBackend, n: int) -> tuple[float, Counter[str]]:
    name = f"melange-{uuid.uuid4().hex[:8]}"
    consumer = Counting()
    dispatcher = MessageDispatcher(backend, consumers=[consumer])
    dispatcher.declare(name, visibility_timeout=60)
    publisher = MessagePublisher(backend)
    publisher.publish_batch([], queue=name)  # resolve the queue URL outside the count
    calls = count_requests(*backend.clients)
    events = [OrderCreated(order_id=str(i), customer_id="c") for i in range(n)]
    started = time.perf_counter()
    for first in range(0, n, 100):
        publisher.publish_batch(events[first : first + 100], queue=name)
    dispatcher.consume_loop(name, max_messages=n)
    elapsed = time.perf_counter() - started
    assert consumer.count == n
    return n / elapsed, calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500)
    args = parser.parse_args()
    n = args.messages
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        with LocalSQSBackend(host, port) as backend:
            print(f"{n:,} messages through one queue on moto's server (HTTP on 127.0.0.1)")
            print(f"{'':34s} {'msgs/s':>8s} {'requests/msg':>13s}  requests")
            for label, run in (
                ("raw boto3, one request each", raw_naive),
                ("raw boto3, batched", raw_batched),
                ("melange, batched publish+consume", melange),
            ):
                rate, calls = run(backend, n)
                per_message = sum(calls.values()) / n
                print(f"{label:34s} {rate:>8,.0f} {per_message:>13.3f}  {dict(calls)}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
