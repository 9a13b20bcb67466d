"""Producers killed before and after their commits: rows and events agree, nothing lost.

Real processes and SIGKILL, on SQLite and PostgreSQL, to RabbitMQ and to
SQS (moto's server over HTTP).
"""

from __future__ import annotations

from collections import Counter

import pytest

from melange.backends.interfaces import MessagingBackend
from tests.outbox_support import (
    broker,
    broker_url,
    database,
    drained,
    order_of,
    rows,
    subscribed,
    worker,
)

__all__ = ["broker", "broker_url", "database"]  # the fixtures this module uses

pytestmark = pytest.mark.slow


# Each database and each broker once (1,000 orders through moto take a minute).
@pytest.mark.parametrize(
    ("database", "broker_url"), [("sqlite", "sqs"), ("postgresql", "rabbitmq")], indirect=True
)
def test_producers_killed_before_a_commit_leave_rows_and_events_in_agreement(
    database: str, broker_url: str, broker: MessagingBackend
) -> None:
    """1,000 orders: killed with order 400 written and not committed, then a new producer."""
    queue = subscribed(broker)
    killed = ("--count", "600", "--kill-before-commit-of", "400")
    assert worker("produce", "--database", database, *killed) == -9
    # Committed and not relayed yet: the relay has not run at all.
    assert rows(database, "SELECT count(*) FROM melange_outbox") == [(400,)]
    assert worker("produce", "--database", database, "--first", "400", "--count", "600") == 0
    assert worker("relay", "--database", database, "--broker", broker_url) == 0

    got = drained(broker, queue, 1000)
    orders = {order for (order,) in rows(database, "SELECT order_id FROM orders")}
    assert len(orders) == 1000
    assert Counter(order_of(m) for m in got) == Counter(orders)  # each event once, with its row
    assert rows(database, "SELECT count(*) FROM melange_outbox") == [(0,)]
