"""Event classes shared by the tests."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel


class OrderEvent(BaseModel):
    order_id: str


class OrderCreated(OrderEvent):
    total: Decimal = Decimal("0")


class OrderPaid(OrderEvent):
    pass


class OrderCancelled(OrderEvent):
    reason: str = ""


class ExpressOrderCreated(OrderCreated):
    pass


class InvoiceSent(BaseModel):
    __melange_manifest__ = "billing.invoice-sent"
    invoice_id: str
