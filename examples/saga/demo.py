"""Run the four services as processes, place a mixed batch of orders, and check the end.

The planned batch mixes orders that go through, orders payments declines
(over its limit), orders for a SKU with no stock, and orders whose payment
reply comes later than the saga waits (``-slow``). Every order must end as
planned, and every service's own records must agree: a completed order
holds its stock, is charged once and shipped; a cancelled one holds no stock
and no money.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from examples.saga import inventory, orders, payments, shipping
from melange import MessageDispatcher, MessagePublisher
from melange.backends import from_url
from melange.saga import SagaRecord

SERVICES = {
    "orders": "examples.saga.orders:service",
    "inventory": "examples.saga.inventory:service",
    "payments": "examples.saga.payments:service",
    "shipping": "examples.saga.shipping:service",
}
FACTORIES = {
    "orders": orders.service,
    "inventory": inventory.service,
    "payments": payments.service,
    "shipping": shipping.service,
}
VISIBILITY_TIMEOUT = 5.0


@dataclass(frozen=True)
class Planned:
    """One order of the batch and how it must end."""

    order_id: str
    sku: str
    units: int
    amount: Decimal
    reason: str | None  # None: completed

    @property
    def status(self) -> str:
        return "completed" if self.reason is None else "cancelled"


def plan(count: int) -> list[Planned]:
    """Return a batch of ``count`` orders: mostly good, with each kind of failure."""
    batch = []
    for n in range(1, count + 1):
        kind = n % 6
        amount = Decimal(10 * n % 90 + 10)
        if kind == 3:
            batch.append(Planned(f"o-{n}", "widget", 1, Decimal("900"), "payment_declined"))
        elif kind == 4:
            batch.append(Planned(f"o-{n}-slow", "gizmo", 2, amount, "payment_timeout"))
        elif kind == 5:
            batch.append(Planned(f"o-{n}", "unobtainium", 1, amount, "out_of_stock"))
        else:
            batch.append(Planned(f"o-{n}", "widget" if n % 2 else "gizmo", 1 + n % 3, amount, None))
    return batch


class Demo:
    """The services of one run: their folder, their processes, the broker they share."""

    def __init__(
        self,
        folder: Path,
        backend_url: str,
        *,
        payment_timeout: float = 2.0,
        slow_seconds: float = 4.0,
        outbox: bool = False,
    ) -> None:
        self.folder = folder
        self.backend_url = backend_url
        self.env = {
            **os.environ,
            "SAGA_DEMO_DIR": str(folder),
            "SAGA_DEMO_PAYMENT_TIMEOUT": str(payment_timeout),
            "SAGA_DEMO_SLOW_SECONDS": str(slow_seconds),
            "SAGA_DEMO_OUTBOX": "1" if outbox else "0",
            "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
            ),
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def orders_outbox(self) -> dict[str, int] | None:
        """Return what the orders database's outbox holds (``None``: it has none)."""
        with sqlite3.connect(self.folder / "orders.db") as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
            if "melange_outbox" not in tables:
                return None
            [(waiting, dead)] = db.execute(
                "SELECT count(*) - count(dead_at), count(dead_at) FROM melange_outbox"
            )
        return {"waiting": int(waiting), "dead": int(dead)}

    def declare(self) -> None:
        """Create every service's queue and subscriptions before anything is published."""
        with from_url(self.backend_url) as backend:
            for name, factory in FACTORIES.items():
                consumers = factory(backend, self.folder)
                MessageDispatcher(backend, consumers=consumers).declare(
                    name, visibility_timeout=VISIBILITY_TIMEOUT
                )
                for consumer in consumers:
                    close = getattr(consumer, "close", None)
                    if close is not None:
                        close()

    def start(self, name: str) -> subprocess.Popen[bytes]:
        """Start one service as a ``melange worker`` process."""
        command = [
            *(sys.executable, "-m", "melange", "--backend", self.backend_url, "worker"),
            *(SERVICES[name], "--queue", name, "--no-declare"),
            *("--visibility-timeout", str(VISIBILITY_TIMEOUT)),
            *("--idempotency", f"sqlite:///{self.folder / f'{name}-claims.db'}"),
        ]
        with open(self.folder / f"{name}.log", "ab") as log:
            process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.processes[name] = process
        return process

    def start_all(self) -> None:
        for name in SERVICES:
            self.start(name)

    def kill(self, name: str, signum: int = signal.SIGKILL) -> None:
        """Signal one service's process by its PID and wait for it to end."""
        process = self.processes.pop(name)
        process.send_signal(signum)
        process.wait(timeout=60)

    def stop_all(self) -> list[int]:
        """Stop every service with SIGTERM (they finish what they hold); return exit codes."""
        codes = []
        for name in list(self.processes):
            process = self.processes.pop(name)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                codes.append(process.wait(timeout=60))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait(timeout=30))
        return codes

    def place(self, batch: list[Planned]) -> None:
        """Publish one ``OrderPlaced`` per planned order, as a shop front would."""
        with from_url(self.backend_url) as backend:
            publisher = MessagePublisher(backend)
            for order in batch:
                placed = orders.OrderPlaced(
                    order_id=order.order_id, sku=order.sku, units=order.units, amount=order.amount
                )
                publisher.publish(placed)

    def sagas(self) -> dict[str, SagaRecord]:
        """Return every order's saga instance, from the orders service's store."""
        with orders.store(self.folder) as store:
            return {r.key: r for r in store.instances("OrderSaga", limit=100_000)}

    def ledgers(self) -> dict[str, Any]:
        """Return what each service's own records say now."""
        return {
            "inventory": inventory.reserved(self.folder),
            "payments": payments.charged(self.folder),
            "shipping": shipping.shipped(self.folder),
        }

    def wait(self, batch: list[Planned], timeout: float = 300.0, settle: float = 2.0) -> bool:
        """Wait until every saga finished and the ledgers stopped changing for ``settle`` s."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        steady_since = time.monotonic()
        while time.monotonic() < deadline:
            found = self.sagas()
            finished = all(
                order.order_id in found and found[order.order_id].status.finished for order in batch
            )
            now = self.ledgers()
            if now != last:
                last, steady_since = now, time.monotonic()
            if finished and time.monotonic() - steady_since >= settle:
                return True
            time.sleep(0.25)
        return False


def report(demo: Demo, batch: list[Planned]) -> dict[str, Any]:
    """Return the run as the ``--json`` object: each order's end and each ledger."""
    found = demo.sagas()
    result: dict[str, Any] = {"orders": {}}
    for order in batch:
        record = found.get(order.order_id)
        state = orders.OrderState.model_validate_json(record.state) if record else None
        result["orders"][order.order_id] = {
            "status": state.outcome if state and state.outcome else "running",
            "reason": state.reason if state else None,
            "steps": [step.what for step in record.timeline] if record else [],
        }
    ledgers = demo.ledgers()
    result["ledgers"] = {
        "inventory": {o.order_id: ledgers["inventory"].get(o.order_id, 0) for o in batch},
        "payments": {o.order_id: ledgers["payments"].get(o.order_id, "0") for o in batch},
        "shipping": ledgers["shipping"],
    }
    result["orders_outbox"] = demo.orders_outbox()
    return result


def problems(batch: list[Planned], result: dict[str, Any], *, outage: bool = False) -> list[str]:
    """Return every way the run differs from the plan or the ledgers disagree.

    With ``outage`` (services were killed and restarted), an order whose
    payment was to be answered (charged or declined) may instead have run out
    of time for it: it must then be cancelled cleanly, like every cancelled order.
    """
    found = []
    ledgers = result["ledgers"]
    for order in batch:
        end = result["orders"][order.order_id]
        ended = (end["status"], end["reason"])
        allowed = {(order.status, order.reason)}
        if outage and order.reason in (None, "payment_declined"):  # a late answer
            allowed.add(("cancelled", "payment_timeout"))
        if ended not in allowed:
            found.append(
                f"{order.order_id}: {end['status']}/{end['reason']}, planned"
                f" {order.status}/{order.reason}"
            )
        held = ledgers["inventory"][order.order_id]
        paid = Decimal(ledgers["payments"][order.order_id])
        sent = order.order_id in ledgers["shipping"]
        if end["status"] == "completed" and (held, paid, sent) != (order.units, order.amount, True):
            found.append(
                f"{order.order_id}: completed but holds {held} units, paid {paid}, shipped {sent}"
            )
        if end["status"] != "completed" and (held, paid, sent) != (0, 0, False):
            found.append(
                f"{order.order_id}: cancelled but holds {held} units, paid {paid}, shipped {sent}"
            )
    return found
