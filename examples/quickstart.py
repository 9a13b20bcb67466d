"""Three services exchange typed events: orders -> billing -> shipping.

Run with ``make demo``, or ``python -m examples.quickstart --backend URL``.
"""

from __future__ import annotations

import argparse
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
    def on_created(self, event: OrderCreated, message: Message) -> None:
        print(f"  billing : charged {event.total} for {event.order_id}")
        self.publisher.publish(OrderPaid(order_id=event.order_id, amount=event.total))


class Shipping(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.shipped: list[str] = []

    @listener
    def on_paid(self, event: OrderPaid, message: Message) -> None:
        correlation = message.metadata["correlation_id"][:8]
        print(f"  shipping: shipped {event.order_id} (correlation {correlation})")
        self.shipped.append(event.order_id)


def run(backend: MessagingBackend, orders: int = 3) -> list[str]:
    """Publish ``orders`` orders and let billing and shipping handle them."""
    publisher = MessagePublisher(backend)
    billing = MessageDispatcher(backend, consumers=[Billing(publisher)])
    shipping_consumer = Shipping()
    shipping = MessageDispatcher(backend, consumers=[shipping_consumer])
    billing.declare("billing")
    shipping.declare("shipping")
    for n in range(1, orders + 1):
        print(f"  orders  : order o-{n} created")
        publisher.publish(OrderCreated(order_id=f"o-{n}", total=Decimal("9.90") * n))
    billing.consume_loop("billing", max_messages=orders, idle_timeout=5)
    shipping.consume_loop("shipping", max_messages=orders, idle_timeout=5)
    return shipping_consumer.shipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="memory://", help="backend URL")
    parser.add_argument("--orders", type=int, default=3)
    args = parser.parse_args()
    print(f"melange demo on {args.backend}")
    with from_url(args.backend) as backend:
        shipped = run(backend, args.orders)
    print(f"done: {len(shipped)} of {args.orders} orders shipped")


if __name__ == "__main__":
    main()
