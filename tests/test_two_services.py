"""Two services, each with its own class for one manifest, exchange events."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel

from melange import Consumer, MessageDispatcher, MessagePublisher, SerializerRegistry, listener
from melange.backends.memory import InMemoryMessagingBackend


class OrdersService:
    class OrderCreated(BaseModel):
        __melange_manifest__ = "orders.created"
        order_id: str
        total: Decimal
        customer_email: str


class BillingService:
    class OrderCreated(BaseModel):
        __melange_manifest__ = "orders.created"
        order_id: str
        total: Decimal


def test_each_service_reads_the_event_into_its_own_class() -> None:
    backend = InMemoryMessagingBackend()
    received: list[BillingService.OrderCreated] = []

    class Billing(Consumer):
        @listener
        def on_created(self, event: BillingService.OrderCreated) -> None:
            received.append(event)

    dispatcher = MessageDispatcher(backend, consumers=[Billing()], serializers=SerializerRegistry())
    dispatcher.declare("billing")
    MessagePublisher(backend, serializers=SerializerRegistry()).publish(
        OrdersService.OrderCreated(order_id="o-1", total=Decimal("9.90"), customer_email="a@b.c")
    )
    assert dispatcher.consume_loop("billing", idle_timeout=0) == 1
    assert received == [BillingService.OrderCreated(order_id="o-1", total=Decimal("9.90"))]
