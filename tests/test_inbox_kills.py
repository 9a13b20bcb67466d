"""SIGKILL a consumer after its database write and before its ack: each effect once, with the inbox.

Real processes and signals, on SQLite and PostgreSQL databases, with the
embedded SQLite broker and a real RabbitMQ. Without the inbox the same kills
make effects happen twice: that control shows the window is really hit.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from melange import MessagePublisher
from melange.backends import from_url
from melange.dead_letters import dead_letter_queue_name
from tests.inbox_workers import EFFECTS, connect
from tests.outbox_writers import OrderPlaced

ROOT = Path(__file__).resolve().parent.parent
ORDERS = 60
KILLS = ("o-5", "o-23", "o-41")

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'service.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
    db = connect(url)
    db.execute(EFFECTS)
    db.commit()
    db.close()
    return url


@pytest.fixture(params=["sqlite", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    node = request.getfixturevalue("rabbitmq_node")
    return str(node.url)


def run_worker(
    broker: str, database: str, queue: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *(sys.executable, "-m", "tests.inbox_workers"),
            *("--broker", broker, "--database", database, "--queue", queue, *extra),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def kill_and_recover(broker: str, database: str, tmp_path: Path, *extra: str) -> Counter[str]:
    """Publish the orders, kill a worker in the window three times, let a last one finish."""
    queue = f"effects-{tmp_path.name[-20:]}".replace("_", "-")
    first = run_worker(broker, database, queue, "--idle-timeout", "0.1", *extra)
    assert first.returncode == 0, first.stderr[-2000:]  # declared, nothing to do yet
    with from_url(broker) as backend:
        publisher = MessagePublisher(backend)
        for n in range(ORDERS):
            publisher.publish(OrderPlaced(order_id=f"o-{n}"))
    for order in KILLS:
        marker = tmp_path / f"killed-{order}"
        killed = run_worker(
            broker, database, queue, "--kill-after", order, "--marker", str(marker), *extra
        )
        assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])
        assert marker.exists()
    last = run_worker(broker, database, queue, "--idle-timeout", "3", *extra)
    assert last.returncode == 0, last.stderr[-2000:]
    with from_url(broker) as backend:
        dead = backend.queue_stats(backend.get_queue(dead_letter_queue_name(queue))).ready
    assert dead == 0
    return Counter(order for (order,) in _effects(database))


def _effects(url: str) -> list[tuple[Any, ...]]:
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            return db.execute("SELECT order_id FROM effects").fetchall()
    with psycopg.connect(url) as db:
        return db.execute("SELECT order_id FROM effects").fetchall()


def test_with_the_inbox_every_effect_happens_exactly_once(
    broker_url: str, database: str, tmp_path: Path
) -> None:
    effects = kill_and_recover(broker_url, database, tmp_path)
    assert set(effects) == {f"o-{n}" for n in range(ORDERS)}
    assert [order for order, times in effects.items() if times != 1] == []


def test_without_the_inbox_the_same_kills_run_effects_twice(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'service.db'}"
    db = connect(database)
    db.execute(EFFECTS)
    db.commit()
    db.close()
    effects = kill_and_recover(
        f"sqlite:///{tmp_path / 'broker.db'}", database, tmp_path, "--no-inbox"
    )
    assert set(effects) == {f"o-{n}" for n in range(ORDERS)}
    assert {order for order, times in effects.items() if times > 1} >= set(KILLS)
