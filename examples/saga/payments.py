"""The payments service: charges an order, declines above a limit, refunds."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel

from examples.saga.ledger import open_ledger
from melange import Consumer, Message, MessagePublisher, listener
from melange.backends.interfaces import MessagingBackend

#: Charges above this are declined.
LIMIT = Decimal("500")

SCHEMA = """
CREATE TABLE IF NOT EXISTS charges (
    order_id TEXT PRIMARY KEY,
    amount TEXT NOT NULL,
    refunded INTEGER NOT NULL DEFAULT 0
);
"""


class ChargePayment(BaseModel):
    order_id: str
    amount: Decimal


class RefundPayment(BaseModel):
    order_id: str


class PaymentCharged(BaseModel):
    order_id: str


class PaymentDeclined(BaseModel):
    order_id: str


class Payments(Consumer):
    """One charge per order, ever: a refund first leaves a mark no later charge passes.

    ``SAGA_DEMO_SLOW_SECONDS``: for orders whose id ends in ``-slow`` the reply
    comes that late, as from a slow payment provider.
    """

    def __init__(self, publisher: MessagePublisher, where: Path | None = None) -> None:
        super().__init__()
        self.publisher = publisher
        self.db = open_ledger("payments", SCHEMA, where)
        self.slow_seconds = float(os.environ.get("SAGA_DEMO_SLOW_SECONDS", "4"))

    @listener
    def on_charge(self, command: ChargePayment, message: Message) -> None:
        if command.amount > LIMIT:
            self.publisher.publish(PaymentDeclined(order_id=command.order_id))
            return
        # INSERT OR IGNORE: a redelivered command, or one after a refund, charges nothing.
        self.db.execute(
            "INSERT OR IGNORE INTO charges (order_id, amount) VALUES (?, ?)",
            (command.order_id, str(command.amount)),
        )
        reply = PaymentCharged(order_id=command.order_id)
        reply_to = message.header("reply_to")
        if command.order_id.endswith("-slow") and reply_to:
            self.publisher.publish(reply, queue=reply_to, delay=self.slow_seconds)
        else:
            self.publisher.publish(reply)

    @listener
    def on_refund(self, command: RefundPayment) -> None:
        self.db.execute(
            "INSERT INTO charges (order_id, amount, refunded) VALUES (?, '0', 1)"
            " ON CONFLICT (order_id) DO UPDATE SET refunded = 1",
            (command.order_id,),
        )


def service(backend: MessagingBackend, where: Path | None = None) -> list[Consumer]:
    """The payments worker's consumers."""
    return [Payments(MessagePublisher(backend), where)]


def charged(where: Path) -> dict[str, str]:
    """Return the amount each order is charged now, from this service's own records."""
    db = open_ledger("payments", SCHEMA, where)
    try:
        rows = db.execute("SELECT order_id, amount, refunded FROM charges").fetchall()
    finally:
        db.close()
    return {order: "0" if refunded else amount for order, amount, refunded in rows}
