"""Three services, three processes, one SQLite file: orders -> billing -> shipping.

The orders service (this process) publishes ``OrderCreated``; a billing worker
charges each order and publishes ``OrderPaid``; a shipping worker ships paid
orders. The workers are ``melange worker`` processes on the same broker file.

    python -m examples.quickstart [--orders 3] [--backend sqlite:///demo.db]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from decimal import Decimal

from pydantic import BaseModel

from melange import Consumer, Message, MessageDispatcher, MessagePublisher, listener
from melange.backends import from_url
from melange.backends.interfaces import MessagingBackend


class OrderCreated(BaseModel):
    __melange_manifest__ = "orders.created"
    order_id: str
    total: Decimal


class OrderPaid(BaseModel):
    __melange_manifest__ = "billing.order-paid"
    order_id: str
    amount: Decimal


class Billing(Consumer):
    def __init__(self, publisher: MessagePublisher) -> None:
        super().__init__()
        self.publisher = publisher

    @listener
    def on_created(self, event: OrderCreated) -> None:
        print(f"  billing : charged {event.total} for {event.order_id}", flush=True)
        self.publisher.publish(OrderPaid(order_id=event.order_id, amount=event.total))


class Shipping(Consumer):
    @listener
    def on_paid(self, event: OrderPaid, message: Message) -> None:
        correlation = message.metadata["correlation_id"][:8]
        print(f"  shipping: shipped {event.order_id} (correlation {correlation})", flush=True)


def billing_service(backend: MessagingBackend) -> list[Consumer]:
    """The billing worker's consumers (``melange worker`` passes the backend)."""
    return [Billing(MessagePublisher(backend))]


def declare(backend: MessagingBackend) -> None:
    """Create both services' queues, so no event is published before its queue exists."""
    MessageDispatcher(backend, consumers=billing_service(backend)).declare("billing")
    MessageDispatcher(backend, consumers=[Shipping()]).declare("shipping")


def worker(url: str, consumers: str, queue: str, orders: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "melange",
            "--backend",
            url,
            "worker",
            consumers,
            "--queue",
            queue,
            "--max-messages",
            str(orders),
            "--idle-timeout",
            "30",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )


def run(url: str, orders: int) -> int:
    """Run the three services; return how many orders were shipped."""
    with from_url(url) as backend:
        declare(backend)
        billing = worker(url, "examples.quickstart:billing_service", "billing", orders)
        shipping = worker(url, "examples.quickstart:Shipping", "shipping", orders)
        publisher = MessagePublisher(backend)
        for n in range(1, orders + 1):
            print(f"  orders  : order o-{n} created", flush=True)
            publisher.publish(OrderCreated(order_id=f"o-{n}", total=Decimal("9.90") * n))
    outputs = [process.communicate(timeout=120)[0].splitlines() for process in (billing, shipping)]
    for line in outputs[0] + outputs[1]:
        if not line.startswith("handled"):
            print(line)
    handled = [line for line in outputs[1] if line.startswith("handled")]
    return int(handled[0].split()[1]) if handled else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=None, help="default: a new SQLite file")
    parser.add_argument("--orders", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = args.backend or f"sqlite:///{folder}/demo.db"
        print(f"melange demo: 3 services, 3 processes, broker {url}")
        shipped = run(url, args.orders)
    print(f"done: {shipped} of {args.orders} orders shipped")
    if shipped != args.orders:
        sys.exit(1)


if __name__ == "__main__":
    main()
