"""A consumer process for the inbox kill tests: it writes one effect per order.

    python -m tests.inbox_workers --broker URL --database URL --queue NAME
        [--no-inbox] [--kill-after ORDER_ID --marker FILE] [--idle-timeout SECONDS]

With the inbox, the effect is written through ``transaction()``; without
it, through the worker's own connection, committed by the handler. With
``--kill-after``, the process SIGKILLs itself once that order's handling
has committed but before its message is acknowledged (``message_processed``
comes between the two), once: ``--marker`` records that it did.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import psycopg

from melange import Consumer, MessageDispatcher, listener, signals
from melange.backends import from_url
from melange.outbox import Inbox, transaction
from tests.outbox_writers import OrderPlaced

EFFECTS = "CREATE TABLE IF NOT EXISTS effects (order_id TEXT NOT NULL)"


def connect(url: str) -> Any:
    if url.startswith("sqlite"):
        return sqlite3.connect(url.removeprefix("sqlite:///"), timeout=30)
    return psycopg.connect(url)


def mark(url: str) -> str:
    return "?" if url.startswith("sqlite") else "%s"


class Effects(Consumer):
    def __init__(self, database: str, inbox: bool) -> None:
        super().__init__(consumer_id="effects")
        self.database = database
        self.own = None if inbox else connect(database)

    @listener
    def on_placed(self, event: OrderPlaced) -> None:
        sql = f"INSERT INTO effects VALUES ({mark(self.database)})"
        if self.own is None:
            transaction().execute(sql, (event.order_id,))
        else:
            self.own.execute(sql, (event.order_id,))
            self.own.commit()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--no-inbox", action="store_true")
    parser.add_argument("--kill-after", default=None)
    parser.add_argument("--marker", default=None)
    parser.add_argument("--idle-timeout", type=float, default=3.0)
    args = parser.parse_args()

    def kill_after_commit(sender: object, **details: Any) -> None:
        event = details.get("event")
        marker = Path(args.marker) if args.marker else None
        if getattr(event, "order_id", None) == args.kill_after and marker and not marker.exists():
            marker.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)

    if args.kill_after:
        signals.message_processed.connect(kill_after_commit)
    middleware = [] if args.no_inbox else [Inbox(args.database)]
    with from_url(args.broker) as backend:
        dispatcher = MessageDispatcher(
            backend, [Effects(args.database, not args.no_inbox)], middleware=middleware
        )
        dispatcher.declare(args.queue, visibility_timeout=1.0)
        handled = dispatcher.run(args.queue, idle_timeout=args.idle_timeout)
    print(f"handled {handled}", flush=True)


if __name__ == "__main__":
    main()
