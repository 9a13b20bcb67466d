"""The inventory service: reserves stock for an order, and releases it."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from examples.saga.ledger import open_ledger
from melange import Consumer, MessagePublisher, listener
from melange.backends.interfaces import MessagingBackend

#: Units on the shelf per SKU when the service first starts.
STOCK = {"widget": 1_000_000, "gizmo": 1_000_000, "unobtainium": 0}

SCHEMA = """
CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, units INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS reservations (
    order_id TEXT PRIMARY KEY, sku TEXT NOT NULL, units INTEGER NOT NULL
);
"""


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


class Inventory(Consumer):
    """Reservations are rows keyed by order: doing one twice changes nothing."""

    def __init__(self, publisher: MessagePublisher, where: Path | None = None) -> None:
        super().__init__()
        self.publisher = publisher
        self.db = open_ledger("inventory", SCHEMA, where)
        self.db.executemany("INSERT OR IGNORE INTO stock VALUES (?, ?)", STOCK.items())

    @listener
    def on_reserve(self, command: ReserveStock) -> None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            done = self.db.execute(
                "SELECT 1 FROM reservations WHERE order_id = ?", (command.order_id,)
            ).fetchone()
            taken = (
                self.db.execute(
                    "UPDATE stock SET units = units - ? WHERE sku = ? AND units >= ?",
                    (command.units, command.sku, command.units),
                ).rowcount
                if done is None
                else 1
            )
            if done is None and taken:
                self.db.execute(
                    "INSERT INTO reservations VALUES (?, ?, ?)",
                    (command.order_id, command.sku, command.units),
                )
        reply = StockReserved if taken else OutOfStock
        self.publisher.publish(reply(order_id=command.order_id))

    @listener
    def on_release(self, command: ReleaseStock) -> None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute(
                "SELECT sku, units FROM reservations WHERE order_id = ?", (command.order_id,)
            ).fetchone()
            if row is not None:
                self.db.execute(
                    "UPDATE stock SET units = units + ? WHERE sku = ?", (row[1], row[0])
                )
                self.db.execute("DELETE FROM reservations WHERE order_id = ?", (command.order_id,))


def service(backend: MessagingBackend, where: Path | None = None) -> list[Consumer]:
    """The inventory worker's consumers."""
    return [Inventory(MessagePublisher(backend), where)]


def reserved(where: Path) -> dict[str, int]:
    """Return the units each order holds now, from this service's own records."""
    db = open_ledger("inventory", SCHEMA, where)
    try:
        return dict(db.execute("SELECT order_id, units FROM reservations").fetchall())
    finally:
        db.close()
