"""``examples/saga`` end to end: four service processes on each broker, and killed mid-run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from examples.saga import payments
from examples.saga.demo import Demo, plan, problems, report
from tests.servers.moto import MotoServer
from tests.servers.rabbitmq import RabbitMQNode

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def run_demo(*args: str) -> dict[str, Any]:
    result = subprocess.run(
        # Timeouts with room for a loaded machine: a late payment must mean a -slow order.
        [
            sys.executable,
            "-m",
            "examples.saga",
            "--json",
            "--payment-timeout",
            "5",
            "--slow-seconds",
            "8",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "every order ended as planned" in result.stdout
    parsed: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return parsed


def check(result: dict[str, Any], count: int) -> None:
    """Check every order against its plan and every ledger, from the JSON alone."""
    batch = plan(count)
    assert problems(batch, result) == []
    assert set(result["orders"]) == {order.order_id for order in batch}
    reasons = {end["reason"] for end in result["orders"].values()}
    assert reasons == {None, "payment_declined", "payment_timeout", "out_of_stock"}
    shipped = sorted(o.order_id for o in batch if o.reason is None)
    assert result["ledgers"]["shipping"] == shipped


def test_the_demo_on_the_embedded_broker() -> None:
    result = run_demo("--orders", "12")
    check(result, 12)
    assert result["orders_outbox"] is None  # the saga's own outbox, by default


def test_the_demo_with_the_saga_sending_through_the_orders_outbox() -> None:
    result = run_demo("--orders", "12", "--outbox")
    check(result, 12)
    assert result["orders_outbox"] == {"waiting": 0, "dead": 0}  # used, and drained



@pytest.mark.rabbitmq
def test_the_demo_on_rabbitmq(rabbitmq_node: RabbitMQNode) -> None:
    check(run_demo("--orders", "12", "--backend", rabbitmq_node.url), 12)


@pytest.mark.sqs
def test_the_demo_on_sns_and_sqs(moto: MotoServer) -> None:
    check(run_demo("--orders", "12", "--backend", moto.url), 12)


def wait_for(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_payments_then_orders_killed_mid_run_and_restarted(tmp_path: Path) -> None:
    # A payment timeout longer than the outage a restart makes (visibility 5 s, restart ~1 s).
    demo = Demo(tmp_path, f"sqlite:///{tmp_path / 'broker.db'}", payment_timeout=8, slow_seconds=10)
    batch = plan(30)
    demo.declare()
    demo.start_all()
    try:
        demo.place(batch)
        wait_for(lambda: len(payments.charged(tmp_path)) >= 3)
        demo.kill("payments")  # SIGKILL, by PID, whatever it was doing
        demo.start("payments")
        wait_for(lambda: sum(r.status.finished for r in demo.sagas().values()) >= 10)
        demo.kill("orders")
        demo.start("orders")
        assert demo.wait(batch, timeout=300)
    finally:
        demo.stop_all()
    result = report(demo, batch)
    # An outage may make a payment late; then its order must be cancelled cleanly.
    assert problems(batch, result, outage=True) == []
    charged = payments.charged(tmp_path)
    completed = [o for o in batch if result["orders"][o.order_id]["status"] == "completed"]
    assert len(completed) >= len(batch) // 3
    for order in completed:  # charged once, for its amount: never twice, never more
        assert Decimal(charged[order.order_id]) == order.amount
