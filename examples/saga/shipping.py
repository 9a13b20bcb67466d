"""The shipping service: ships a paid order."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from examples.saga.ledger import open_ledger
from melange import Consumer, MessagePublisher, listener
from melange.backends.interfaces import MessagingBackend

SCHEMA = "CREATE TABLE IF NOT EXISTS shipments (order_id TEXT PRIMARY KEY, at REAL NOT NULL);"


class ShipOrder(BaseModel):
    order_id: str
    sku: str
    units: int


class OrderShipped(BaseModel):
    order_id: str


class Shipping(Consumer):
    def __init__(self, publisher: MessagePublisher, where: Path | None = None) -> None:
        super().__init__()
        self.publisher = publisher
        self.db = open_ledger("shipping", SCHEMA, where)

    @listener
    def on_ship(self, command: ShipOrder) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO shipments VALUES (?, julianday('now'))", (command.order_id,)
        )
        self.publisher.publish(OrderShipped(order_id=command.order_id))


def service(backend: MessagingBackend, where: Path | None = None) -> list[Consumer]:
    """The shipping worker's consumers."""
    return [Shipping(MessagePublisher(backend), where)]


def shipped(where: Path) -> list[str]:
    """Return the orders shipped, from this service's own records."""
    db = open_ledger("shipping", SCHEMA, where)
    try:
        return sorted(order for (order,) in db.execute("SELECT order_id FROM shipments"))
    finally:
        db.close()
