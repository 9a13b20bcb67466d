"""Processes for the outbox kill tests: a producer, and a relay that can die mid-round.

    python -m tests.outbox_workers produce --database URL --first N --count N
        [--kill-before-commit-of N]
    python -m tests.outbox_workers relay --database URL --broker URL
        [--kill-after-send-of-round N] [--lease-seconds S]

The producer writes one ``orders`` row and its ``OrderPlaced`` event per
transaction; with ``--kill-before-commit-of`` it SIGKILLs itself with that
order written and not committed. The relay sends rounds until none is left;
with ``--kill-after-send-of-round`` it SIGKILLs itself in that round once the
broker confirmed its rows and before they are deleted. It stops once the
outbox is empty (waiting for the leases of a relay that died to run out).
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from typing import Any

from melange.backends import from_url
from melange.outbox import OutboxPublisher, Relay, create_tables
from melange.outbox._store import Claim
from tests.inbox_workers import connect, mark
from tests.outbox_writers import OrderPlaced

ORDERS = "CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY)"


def produce(args: argparse.Namespace) -> None:
    db = connect(args.database)
    db.execute(ORDERS)
    create_tables(db)
    db.commit()
    publisher = OutboxPublisher(db)
    insert = f"INSERT INTO orders VALUES ({mark(args.database)})"
    for n in range(args.first, args.first + args.count):
        order = f"o-{n}"
        db.execute(insert, (order,))
        publisher.publish(OrderPlaced(order_id=order))
        if n == args.kill_before_commit_of:
            os.kill(os.getpid(), signal.SIGKILL)
        db.commit()
    db.close()


def relay(args: argparse.Namespace) -> None:
    with (
        from_url(args.broker) as backend,
        Relay(args.database, backend, batch_size=50, lease_seconds=args.lease_seconds) as relay,
    ):
        if args.kill_after_send_of_round is not None:
            settle = relay.store.settle
            rounds = [0]

            def settle_or_die(claim: Claim, **options: Any) -> None:
                rounds[0] += 1
                if rounds[0] == args.kill_after_send_of_round and claim.settlement.sent:
                    os.kill(os.getpid(), signal.SIGKILL)  # sent and confirmed, not deleted
                settle(claim, **options)

            relay.store.settle = settle_or_die  # type: ignore[method-assign]
        deadline = time.monotonic() + 120
        while relay.depth().pending and time.monotonic() < deadline:  # leases may run out first
            if not relay.relay_once():
                time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    producing = commands.add_parser("produce")
    producing.add_argument("--database", required=True)
    producing.add_argument("--first", type=int, default=0)
    producing.add_argument("--count", type=int, required=True)
    producing.add_argument("--kill-before-commit-of", type=int, default=None)
    relaying = commands.add_parser("relay")
    relaying.add_argument("--database", required=True)
    relaying.add_argument("--broker", required=True)
    relaying.add_argument("--kill-after-send-of-round", type=int, default=None)
    relaying.add_argument("--lease-seconds", type=float, default=30.0)
    args = parser.parse_args()
    produce(args) if args.command == "produce" else relay(args)


if __name__ == "__main__":
    main()
