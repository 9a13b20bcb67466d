"""SNS/SQS request cost and throughput: melange beside raw boto3, against moto's server.

Starts moto's HTTP server on 127.0.0.1 (and stops it), then moves N messages
through a fresh queue each way and prints messages/s and HTTP requests per
message, counted with botocore's ``before-send`` event (the figure that
carries over to real AWS; moto's own speed does not):

- raw boto3, naive: one SendMessage, one ReceiveMessage, one DeleteMessage each;
- raw boto3, batched: SendMessageBatch, ReceiveMessage of 10, DeleteMessageBatch;
- melange, ``MessagePublisher.publish`` per event, then ``MessageDispatcher.consume_loop``;
- melange, ``MessagePublisher.publish_batch``, then ``MessageDispatcher.consume_loop``.

Queues are declared before counting starts. moto's SendMessage slows as a
queue grows, so keep N modest.

    .venv/bin/python bench/sqs.py --messages 500
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moto.server import ThreadedMotoServer
from pydantic import BaseModel

from melange import Consumer, MessageDispatcher, MessagePublisher, listener
from melange.backends.sqs import AWSBackend, LocalSQSBackend
from tests.support import free_port

TARGET_REQUESTS_PER_MESSAGE = 0.35


class OrderCreated(BaseModel):
    order_id: str
    customer_id: str
    total: str


class Counting(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    @listener
    def on_created(self, event: OrderCreated) -> None:
        self.count += 1


def count_requests(backend: AWSBackend) -> Counter[str]:
    """Count every HTTP request either client sends from now on, by operation."""
    calls: Counter[str] = Counter()

    def count(**kwargs: Any) -> None:
        calls[kwargs["event_name"].rsplit(".", 1)[-1]] += 1

    for client in (backend.sns_client, backend.sqs_client):
        client.meta.events.register("before-send", count)
    return calls


def event(n: int) -> OrderCreated:
    return OrderCreated(order_id=f"o-{n}", customer_id="c-42", total="19.90")


def raw_naive(backend: AWSBackend, n: int) -> tuple[float, Counter[str]]:
    sqs = backend.sqs_client
    url = sqs.create_queue(QueueName=f"naive-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    calls = count_requests(backend)
    started = time.perf_counter()
    for i in range(n):
        sqs.send_message(QueueUrl=url, MessageBody=event(i).model_dump_json())
    received = 0
    while received < n:
        for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1).get("Messages", []):
            OrderCreated.model_validate_json(message["Body"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
            received += 1
    return n / (time.perf_counter() - started), calls


def raw_batched(backend: AWSBackend, n: int) -> tuple[float, Counter[str]]:
    sqs = backend.sqs_client
    url = sqs.create_queue(QueueName=f"batched-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    calls = count_requests(backend)
    started = time.perf_counter()
    for first in range(0, n, 10):
        entries: list[Any] = [
            {"Id": str(i), "MessageBody": event(i).model_dump_json()}
            for i in range(first, min(first + 10, n))
        ]
        sqs.send_message_batch(QueueUrl=url, Entries=entries)
    received = 0
    while received < n:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        for message in messages:
            OrderCreated.model_validate_json(message["Body"])
        if messages:
            handles: list[Any] = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ]
            sqs.delete_message_batch(QueueUrl=url, Entries=handles)
        received += len(messages)
    return n / (time.perf_counter() - started), calls


def melange(batched: bool) -> Callable[[AWSBackend, int], tuple[float, Counter[str]]]:
    def run(backend: AWSBackend, n: int) -> tuple[float, Counter[str]]:
        name = f"melange-{uuid.uuid4().hex[:8]}"
        consumer = Counting()
        dispatcher = MessageDispatcher(backend, consumers=[consumer])
        dispatcher.declare(name, visibility_timeout=60)
        publisher = MessagePublisher(backend)
        events = [event(i) for i in range(n)]
        calls = count_requests(backend)
        started = time.perf_counter()
        if batched:
            for first in range(0, n, 100):
                publisher.publish_batch(events[first : first + 100], queue=name)
        else:
            for one in events:
                publisher.publish(one, queue=name)
        dispatcher.consume_loop(name, max_messages=n)
        elapsed = time.perf_counter() - started
        if consumer.count != n:
            raise SystemExit(f"only {consumer.count} of {n} messages were handled")
        return n / elapsed, calls

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=500, help="messages per run")
    args = parser.parse_args()
    n: int = args.messages
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        with LocalSQSBackend(host, port) as backend:
            print(f"{n:,} messages through one queue on moto's server (HTTP on 127.0.0.1)")
            print(f"{'':36s} {'msgs/s':>8s} {'requests/msg':>13s}  requests")
            runs = (
                ("raw boto3, one request each", raw_naive),
                ("raw boto3, batched", raw_batched),
                ("melange, publish + consume_loop", melange(batched=False)),
                ("melange, publish_batch + consume_loop", melange(batched=True)),
            )
            per_message = 0.0
            for label, run in runs:
                rate, calls = run(backend, n)
                per_message = sum(calls.values()) / n
                print(f"{label:36s} {rate:>8,.0f} {per_message:>13.3f}  {dict(calls)}")
            verdict = "met" if per_message <= TARGET_REQUESTS_PER_MESSAGE else "MISSED"
            print(f"target: at most {TARGET_REQUESTS_PER_MESSAGE} requests/msg batched: {verdict}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
