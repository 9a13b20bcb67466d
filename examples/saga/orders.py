"""The orders service: ``OrderSaga`` reserves, charges and ships, or undoes what it did."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel

from examples.saga.ledger import folder
from melange import Consumer, MessagePublisher, listener
from melange.backends.interfaces import MessagingBackend
from melange.saga import Saga, SQLiteSagaStore, starts

QUEUE = "orders"


# -- what orders says and hears; the other services define their own classes ----------


class OrderPlaced(BaseModel):
    order_id: str
    sku: str
    units: int
    amount: Decimal


class ReserveStock(BaseModel):
    order_id: str
    sku: str
    units: int


class ReleaseStock(BaseModel):
    order_id: str


class StockReserved(BaseModel):
    order_id: str


class OutOfStock(BaseModel):
    order_id: str


class ChargePayment(BaseModel):
    order_id: str
    amount: Decimal


class RefundPayment(BaseModel):
    order_id: str


class PaymentCharged(BaseModel):
    order_id: str


class PaymentDeclined(BaseModel):
    order_id: str


class PaymentTimedOut(BaseModel):
    order_id: str


class ShipOrder(BaseModel):
    order_id: str
    sku: str
    units: int


class OrderShipped(BaseModel):
    order_id: str


class OrderState(BaseModel):
    order_id: str = ""
    sku: str = ""
    units: int = 0
    amount: Decimal = Decimal(0)
    payment_timeout: str = ""
    outcome: str = ""  # "completed" or "cancelled"
    reason: str | None = None


class OrderSaga(Saga[OrderState]):
    """Reserve stock, then charge, then ship; on a decline, no stock or a timeout, undo."""

    correlation = {  # noqa: RUF012 - the saga's declaration
        OrderPlaced: "order_id",
        StockReserved: "order_id",
        OutOfStock: "order_id",
        PaymentCharged: "order_id",
        PaymentDeclined: "order_id",
        PaymentTimedOut: "order_id",
        OrderShipped: "order_id",
    }

    def __init__(self, store: SQLiteSagaStore, publisher: MessagePublisher) -> None:
        super().__init__(store, publisher, queue=QUEUE)
        self.payment_seconds = float(os.environ.get("SAGA_DEMO_PAYMENT_TIMEOUT", "2"))

    @starts
    def on_placed(self, event: OrderPlaced) -> None:
        state = self.state
        state.order_id, state.sku, state.units, state.amount = (
            event.order_id,
            event.sku,
            event.units,
            event.amount,
        )
        self.send(
            ReserveStock(order_id=event.order_id, sku=event.sku, units=event.units),
            queue="inventory",
            compensate_with=ReleaseStock(order_id=event.order_id),
        )

    @listener
    def on_reserved(self, event: StockReserved) -> None:
        self.send(
            ChargePayment(order_id=event.order_id, amount=self.state.amount), queue="payments"
        )
        self.state.payment_timeout = self.request_timeout(
            PaymentTimedOut(order_id=event.order_id), after=self.payment_seconds
        )

    @listener
    def on_out_of_stock(self, event: OutOfStock) -> None:
        self.cancel("out_of_stock", undo=False)  # nothing was reserved

    @listener
    def on_charged(self, event: PaymentCharged) -> None:
        self.cancel_timeout(self.state.payment_timeout)
        state = self.state
        self.send(
            ShipOrder(order_id=state.order_id, sku=state.sku, units=state.units), queue="shipping"
        )

    @listener
    def on_declined(self, event: PaymentDeclined) -> None:
        self.cancel("payment_declined")

    @listener
    def on_timed_out(self, event: PaymentTimedOut) -> None:
        # The charge may yet happen, or have happened: ask for the money back either way.
        self.send(RefundPayment(order_id=event.order_id), queue="payments")
        self.cancel("payment_timeout")

    @listener
    def on_shipped(self, event: OrderShipped) -> None:
        self.state.outcome = "completed"
        self.complete()

    def cancel(self, reason: str, *, undo: bool = True) -> None:
        if undo:
            self.compensate()
        self.state.outcome, self.state.reason = "cancelled", reason
        self.fail(reason)


def store(where: Path | None = None) -> SQLiteSagaStore:
    """The orders service's saga store: a file of its own in the demo's folder.

    With ``SAGA_DEMO_OUTBOX=1`` (``--outbox``) the saga sends through that
    file's transactional outbox, relayed by the saga's runner.
    """
    outbox = os.environ.get("SAGA_DEMO_OUTBOX") == "1"
    return SQLiteSagaStore((where or folder()) / "orders.db", outbox=outbox)


def service(backend: MessagingBackend, where: Path | None = None) -> list[Consumer]:
    """The orders worker's consumers: the saga."""
    return [OrderSaga(store(where), MessagePublisher(backend))]
