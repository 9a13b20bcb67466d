"""``melange relay``, ``melange stats --outbox`` and ``melange dlq peek|redrive --outbox``."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from melange.backends.sqlite import SQLiteBackend
from melange.cli import main
from melange.outbox import OutboxPublisher, create_tables
from melange.testing import receive
from tests.outbox_writers import OrderPlaced

ROOT = Path(__file__).resolve().parent.parent


def write(path: Path, *numbers: int, **options: Any) -> list[str]:
    with sqlite3.connect(path) as db:
        create_tables(db)
        publisher = OutboxPublisher(db)
        return [
            publisher.publish(OrderPlaced(order_id=f"o-{n}"), **options).message_id for n in numbers
        ]


def test_relay_once_sends_what_waits_and_stats_say_what_is_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service, broker_url = tmp_path / "service.db", f"sqlite:///{tmp_path / 'broker.db'}"
    with SQLiteBackend(tmp_path / "broker.db") as broker:
        queue, _ = broker.declare_queue("orders", broker.declare_topic("outbox_order_placed"))
    written = write(service, 1, 2, 3)
    outbox = f"sqlite:///{service}"

    assert main(["stats", "--outbox", outbox, "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert (before["pending"], before["dead"]) == (3, 0)
    assert before["oldest_age"] >= 0

    relay = ["--backend", broker_url, "relay", "--outbox", outbox, "--once", "--metrics-port", "0"]
    assert main(relay) == 0
    assert "relayed 3 message(s); 0 waiting, 0 dead" in capsys.readouterr().out
    with SQLiteBackend(tmp_path / "broker.db") as broker:
        assert [m.message_id for m in receive(broker, queue, 3, timeout=2)] == written

    assert main(["stats", "--outbox", outbox]) == 0
    assert "0 waiting, oldest -; 0 dead" in capsys.readouterr().out


def test_dead_rows_are_shown_and_given_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    service, broker_url = tmp_path / "service.db", f"sqlite:///{tmp_path / 'broker.db'}"
    [lost] = write(service, 1, queue="not-yet")
    outbox = f"sqlite:///{service}"
    assert main(["--backend", broker_url, "relay", "--outbox", outbox, "--once"]) == 0
    assert "relayed 0 message(s); 0 waiting, 1 dead" in capsys.readouterr().out

    assert main(["dlq", "peek", "--outbox", outbox]) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["message_id"] == lost
    assert row["destination"] == "queue:not-yet"
    assert "not-yet" in row["reason"]

    with SQLiteBackend(tmp_path / "broker.db") as broker:
        queue, _ = broker.declare_queue("not-yet")  # the cause, fixed
    assert main(["dlq", "redrive", "--outbox", outbox]) == 0
    assert "gave 1 dead row(s)" in capsys.readouterr().out
    assert main(["--backend", broker_url, "relay", "--outbox", outbox, "--once"]) == 0
    assert "relayed 1 message(s); 0 waiting, 0 dead" in capsys.readouterr().out
    with SQLiteBackend(tmp_path / "broker.db") as broker:
        assert [m.message_id for m in receive(broker, queue, 1, timeout=2)] == [lost]


def test_a_command_with_neither_a_queue_nor_an_outbox_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["stats"]) == 2
    assert "name a queue, or an outbox with --outbox URL" in capsys.readouterr().err


@pytest.mark.slow
def test_a_worker_with_outbox_relays_it_until_sigterm(tmp_path: Path) -> None:
    service = tmp_path / "service.db"
    write(service)  # the tables
    (tmp_path / "billing.py").write_text(
        "from melange import Consumer, listener\n"
        "from tests.outbox_writers import OrderPlaced\n"
        "class Billing(Consumer):\n"
        "    @listener\n"
        "    def on_placed(self, event: OrderPlaced) -> None:\n"
        "        with open('billed.txt', 'a') as out:\n"
        "            out.write(event.order_id + '\\n')\n"
    )
    broker_url = f"sqlite:///{tmp_path / 'broker.db'}"
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "melange.cli", "--backend", broker_url, "worker"),
            *("billing:Billing", "--queue", "billing", "--outbox", f"sqlite:///{service}"),
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": f"{ROOT}:{tmp_path}", "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "broker.db").exists() or not _declared(tmp_path / "broker.db"):
            assert time.monotonic() < deadline, "the worker never declared its queue"
            time.sleep(0.1)
        write(service, 1, 2)
        billed = tmp_path / "billed.txt"
        deadline = time.monotonic() + 30
        while not billed.exists() or len(billed.read_text().split()) < 2:
            assert time.monotonic() < deadline, "the worker's relay never sent the rows"
            time.sleep(0.1)
    finally:
        worker.terminate()
        out, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, out
    assert billed.read_text().split() == ["o-1", "o-2"]
    assert _pending(service) == 0


def _declared(broker: Path) -> bool:
    with sqlite3.connect(broker) as db:
        try:
            return bool(
                db.execute("SELECT 1 FROM melange_queues WHERE name = 'billing'").fetchall()
            )
        except sqlite3.OperationalError:
            return False


def _pending(service: Path) -> int:
    with sqlite3.connect(service) as db:
        return int(db.execute("SELECT count(*) FROM melange_outbox").fetchone()[0])
