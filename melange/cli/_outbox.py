"""``melange relay``, and the outbox's part of ``melange stats`` and ``melange dlq``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from melange._secrets import masked
from melange.backends.interfaces import MessagingBackend
from melange.outbox import OutboxGauges, Relay, open_outbox

__all__ = ["add_relay_command", "outbox_dead_rows", "outbox_redrive", "outbox_stats"]

_log = logging.getLogger("melange.outbox")


def add_relay_command(commands: Any) -> None:
    """Add ``relay`` to the ``melange`` command's subcommands."""
    relay = commands.add_parser(
        "relay", help="send what services committed to an outbox table to the broker"
    )
    relay.add_argument(
        "--outbox",
        required=True,
        metavar="URL",
        help="the service's database: sqlite:///orders.db or postgresql://user@host/db",
    )
    relay.add_argument("--batch-size", type=int, default=100, metavar="N")
    relay.add_argument(
        "--poll-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how often to look for rows without a notification (default: 0.2 s on SQLite,"
        " 5 s on PostgreSQL, which wakes on NOTIFY)",
    )
    relay.add_argument(
        "--once",
        action="store_true",
        help="send what can leave now, then exit (instead of running until SIGTERM)",
    )
    relay.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve the outbox's lag as Prometheus metrics at /metrics"
        " (pip install 'melange[prometheus]')",
    )
    relay.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST")
    relay.set_defaults(run=_relay)


def _relay(args: argparse.Namespace, backend: MessagingBackend) -> int:
    with (
        _watched(args),
        Relay(
            args.outbox, backend, batch_size=args.batch_size, poll_interval=args.poll_interval
        ) as relay,
    ):
        if args.once:
            relay.drain()
        else:
            stop = threading.Event()

            def stopping(signum: int, frame: object) -> None:
                stop.set()
                relay.wake()

            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, stopping)
            _log.info("relay from %s to %s", masked(args.outbox), masked(args.url))
            relay.run(stop)
        depth = relay.depth()
        print(
            f"relayed {relay.stats['sent']} message(s); {depth.pending} waiting, {depth.dead} dead",
            flush=True,
        )
    return 0


@contextmanager
def _watched(args: argparse.Namespace) -> Iterator[None]:
    """Serve the outbox's gauges while the relay runs, with ``--metrics-port``."""
    if args.metrics_port is None:
        yield
        return
    from melange._metrics_server import MetricsServer

    server = MetricsServer(args.metrics_host, args.metrics_port, lambda: True)
    gauges = OutboxGauges(args.outbox, meter_provider=server.meter_provider)
    _log.info("metrics on http://%s:%d/metrics", args.metrics_host, server.port)
    try:
        yield
    finally:
        gauges.close()
        server.close()


def outbox_stats(url: str, as_json: bool) -> None:
    """Print how far behind the relay of an outbox is."""
    store = open_outbox(url)
    try:
        depth = store.depth(time.time())
    finally:
        store.close()
    if as_json:
        print(json.dumps({"outbox": masked(url), **depth.as_dict()}))
        return
    oldest = "-" if depth.oldest_age is None else f"{depth.oldest_age:.1f} s"
    print(f"outbox {masked(url)}: {depth.pending} waiting, oldest {oldest}; {depth.dead} dead")


def outbox_dead_rows(url: str, limit: int | None) -> None:
    """Print the rows of an outbox that will never be sent, one JSON object each."""
    store = open_outbox(url)
    try:
        rows = store.dead_rows(1000 if limit is None else limit)
    finally:
        store.close()
    for row in rows:
        print(json.dumps(row.as_dict(), ensure_ascii=False))


def outbox_redrive(url: str, limit: int | None) -> None:
    """Give dead rows back to the relay, their attempts reset."""
    store = open_outbox(url)
    try:
        moved = store.redrive(limit)
    finally:
        store.close()
    print(f"gave {moved} dead row(s) of the outbox back to the relay")
