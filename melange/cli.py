"""The ``melange`` command: run a worker, inspect and redrive dead letters.

    melange worker myapp.consumers:Billing --queue billing [--backend URL]
        [--idempotency URL] [--middleware module:Class] [--visibility-timeout SECONDS]
    melange dlq peek billing [--limit 10]
    melange dlq redrive billing
    melange saga list OrderSaga [--store URL] [--status running] [--json]
    melange saga show OrderSaga o-1 [--store URL] [--json]

Without ``--backend`` the URL is ``MELANGE_BACKEND_URL``, else ``sqlite:///melange.db``;
without ``--store`` the saga store is ``MELANGE_SAGA_STORE_URL``, else the same file.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from melange.backends import default_backend_url, from_url
from melange.backends.interfaces import MessagingBackend
from melange.consumers import Consumer
from melange.dead_letters import dead_letter_queue_name, dead_letter_reason, peek, redrive
from melange.dispatcher import MessageDispatcher
from melange.exceptions import ConfigurationError, MelangeError
from melange.idempotency import store_from_url
from melange.middleware import Middleware
from melange.models import Message
from melange.saga import SagaRecord, SagaStatus, default_saga_store_url, saga_store_from_url

__all__ = ["build_parser", "load_consumers", "load_middleware", "main"]


def load_consumers(target: str, backend: MessagingBackend) -> list[Consumer]:
    """Import ``module:attribute`` and return the consumers it names.

    The attribute may be a ``Consumer`` subclass (built with no arguments),
    an instance, a list of either, or a function that takes the backend and
    returns any of those (for consumers that publish).

    Raises:
        ConfigurationError: the target is malformed or names no consumer.
    """
    found = _imported(target)
    if callable(found) and not isinstance(found, type) and not isinstance(found, Consumer):
        found = found(backend)
    items = found if isinstance(found, list | tuple) else [found]
    consumers = []
    for item in items:
        consumer = item() if isinstance(item, type) and issubclass(item, Consumer) else item
        if not isinstance(consumer, Consumer):
            raise ConfigurationError(f"{target} names {item!r}, not a Consumer")
        consumers.append(consumer)
    return consumers


def load_middleware(target: str) -> Middleware:
    """Import ``module:attribute`` naming a ``Middleware`` (class or instance).

    Raises:
        ConfigurationError: the target is malformed or names no middleware.
    """
    found = _imported(target)
    middleware = found() if isinstance(found, type) else found
    if not isinstance(middleware, Middleware):
        raise ConfigurationError(f"{target} names {found!r}, not a Middleware")
    return middleware


def _imported(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"expected module:attribute, got {target!r}")
    return getattr(importlib.import_module(module_name), attribute)


def _worker(args: argparse.Namespace, backend: MessagingBackend) -> int:
    store = store_from_url(args.idempotency) if args.idempotency else None
    dispatcher = MessageDispatcher(
        backend,
        consumers=load_consumers(args.consumers, backend),
        middleware=[load_middleware(target) for target in args.middleware],
        idempotency=store,
        visibility_timeout=args.visibility_timeout,
    )
    if not args.no_declare:
        options = {}
        if args.visibility_timeout is not None:
            options["visibility_timeout"] = args.visibility_timeout
        dispatcher.declare(args.queue, **options)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        handled = dispatcher.consume_loop(
            args.queue,
            max_messages=args.max_messages,
            idle_timeout=args.idle_timeout,
            stop_event=stop,
            on_exception=lambda e: print(f"handler failed: {e!r}", file=sys.stderr),
        )
    finally:
        if store is not None:
            store.close()
    print(f"handled {handled} message(s) from {args.queue}", flush=True)
    return 0


def _peek(args: argparse.Namespace, backend: MessagingBackend) -> int:
    messages = peek(backend, args.queue, dead_letter_queue=args.dead_letter_queue, limit=args.limit)
    for message in messages:
        print(json.dumps(_described(message), ensure_ascii=False))
    return 0


def _redrive(args: argparse.Namespace, backend: MessagingBackend) -> int:
    source = args.dead_letter_queue or dead_letter_queue_name(args.queue)
    moved = redrive(backend, args.queue, dead_letter_queue=source, limit=args.limit)
    print(f"moved {moved} message(s) from {source} to {args.queue}")
    return 0


def _described(message: Message) -> dict[str, Any]:
    return {
        "message_id": message.message_id,
        "manifest": message.manifest,
        "serializer_id": message.serializer_id,
        "reason": dead_letter_reason(message),
        "metadata": dict(message.metadata),
        "content": message.content,
    }


def _saga_list(args: argparse.Namespace) -> int:
    status = SagaStatus(args.status) if args.status else None
    with saga_store_from_url(args.store or default_saga_store_url()) as store:
        records = store.instances(args.saga_type, status=status, limit=args.limit)
    for record in records:
        if args.json:
            print(json.dumps(_saga_summary(record), ensure_ascii=False))
        else:
            last = record.timeline[-1].what if record.timeline else ""
            print(f"{record.key}\t{record.status.value}\tv{record.version}\t{last}")
    if not args.json:
        print(f"{len(records)} {args.saga_type} instance(s)")
    return 0


def _saga_show(args: argparse.Namespace) -> int:
    with saga_store_from_url(args.store or default_saga_store_url()) as store:
        record = store.find(args.saga_type, args.key)
        pending = (
            []
            if record is None
            else store.pending(args.saga_type, record.saga_id, due_by=float("inf"))
        )
    if record is None:
        print(f"melange: no {args.saga_type} instance with key {args.key!r}", file=sys.stderr)
        return 1
    shown = {
        **_saga_summary(record),
        "timeline": [
            {"at": datetime.fromtimestamp(s.at, UTC).isoformat(), "what": s.what}
            for s in record.timeline
        ],
        "compensations": [c.message.manifest for c in record.compensations],
        "timeouts": sorted(record.timeouts.values()),
        "outbox": [f"{p.message.manifest} to {p.destination}" for p in pending],
    }
    if args.json:
        print(json.dumps(shown, ensure_ascii=False))
        return 0
    for name in ("saga_type", "key", "saga_id", "status", "version", "state"):
        print(f"{name}: {shown[name]}")
    print("timeline:")
    for step in shown["timeline"]:
        print(f"  {step['at']}  {step['what']}")
    for name in ("compensations", "timeouts", "outbox"):
        print(f"{name}: {', '.join(shown[name]) or '-'}")
    return 0


def _saga_summary(record: SagaRecord) -> dict[str, Any]:
    return {
        "saga_type": record.saga_type,
        "key": record.key,
        "saga_id": record.saga_id,
        "status": record.status.value,
        "version": record.version,
        "state": json.loads(record.state) if record.state else None,
    }


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``melange`` command."""
    parser = argparse.ArgumentParser(prog="melange", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=None, help="backend URL (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="consume a queue with the given consumers")
    worker.add_argument("consumers", help="module:attribute naming Consumer(s)")
    worker.add_argument("--queue", required=True)
    worker.add_argument("--max-messages", type=int, default=None)
    worker.add_argument("--idle-timeout", type=float, default=None)
    worker.add_argument("--no-declare", action="store_true", help="do not declare the queue")
    worker.add_argument(
        "--idempotency",
        default=None,
        metavar="URL",
        help="idempotency store: memory://, sqlite:///claims.db, redis://host:6379/0",
    )
    worker.add_argument(
        "--middleware",
        action="append",
        default=[],
        metavar="MODULE:ATTR",
        help="a Middleware class or instance to run (repeatable; the first is outermost)",
    )
    worker.add_argument(
        "--visibility-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="the queue's visibility timeout (default: the backend's)",
    )
    worker.set_defaults(run=_worker)

    dlq = commands.add_parser("dlq", help="inspect or redrive a dead-letter queue")
    actions = dlq.add_subparsers(dest="action", required=True)
    for name, run, limit in (("peek", _peek, 10), ("redrive", _redrive, None)):
        action = actions.add_parser(name)
        action.add_argument("queue", help="the source queue")
        action.add_argument("--dead-letter-queue", default=None, help="default: <queue>-dlq")
        action.add_argument("--limit", type=int, default=limit)
        action.set_defaults(run=run)

    saga = commands.add_parser("saga", help="inspect saga instances")
    saga_actions = saga.add_subparsers(dest="action", required=True)
    listing = saga_actions.add_parser("list", help="the instances of a saga type")
    showing = saga_actions.add_parser("show", help="one instance: status, state, timeline")
    for action in (listing, showing):
        action.add_argument("saga_type", help="the saga's type, e.g. OrderSaga")
        action.add_argument("--store", default=None, metavar="URL", help="the saga store")
        action.add_argument("--json", action="store_true", help="print JSON")
    listing.add_argument("--status", choices=[s.value for s in SagaStatus], default=None)
    listing.add_argument("--limit", type=int, default=100)
    listing.set_defaults(run_alone=_saga_list)
    showing.add_argument("key", help="the instance's correlation key")
    showing.set_defaults(run_alone=_saga_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``melange`` command; return its exit status."""
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "run_alone"):  # needs no broker
            alone: int = args.run_alone(args)
            return alone
        with from_url(args.backend or default_backend_url()) as backend:
            status: int = args.run(args, backend)
            return status
    except MelangeError as e:
        print(f"melange: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
