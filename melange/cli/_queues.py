"""``melange declare``, ``melange stats`` and ``melange dlq peek|redrive`` (``--outbox`` too)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from melange.backends.decoding import binary_in_json
from melange.backends.interfaces import MessagingBackend
from melange.cli._loading import load_consumers
from melange.cli._outbox import outbox_dead_rows, outbox_redrive, outbox_stats
from melange.dead_letters import dead_letter_queue_name, dead_letter_reason, peek, redrive
from melange.dispatcher import MessageDispatcher
from melange.exceptions import ConfigurationError, QueueNotFoundError
from melange.models import Message

__all__ = ["add_queue_commands"]


def add_queue_commands(commands: Any) -> None:
    """Add ``declare``, ``stats`` and ``dlq`` to the ``melange`` command's subcommands."""
    declare = commands.add_parser(
        "declare", help="create a queue, its dead-letter queue and topics, without consuming"
    )
    declare.add_argument("consumers", help="module:attribute naming the queue's Consumer(s)")
    declare.add_argument("--queue", required=True, help="the queue to create")
    declare.add_argument(
        "--topic",
        action="append",
        default=[],
        metavar="NAME",
        help="a topic to subscribe it to as well (repeatable)",
    )
    declare.add_argument(
        "--visibility-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="the queue's visibility timeout (default: the backend's)",
    )
    declare.add_argument(
        "--filter-events",
        action="store_true",
        help="subscribe with the manifests the consumers take, so a shared --topic's"
        " other events stay out (a filter policy on SNS, bindings on RabbitMQ)",
    )
    declare.set_defaults(run=_declare)

    stats = commands.add_parser(
        "stats", help="a queue's ready, in-flight and dead-lettered counts, or an outbox's depth"
    )
    stats.add_argument("queue", nargs="?", help="the queue")
    stats.add_argument("--dead-letter-queue", default=None, help="default: <queue>-dlq")
    stats.add_argument("--outbox", default=None, metavar="URL", help=_OUTBOX_HELP)
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(run=_stats, run_alone=_outbox_only(_stats_alone), read_only=True)

    dlq = commands.add_parser("dlq", help="inspect or redrive a dead-letter queue or an outbox")
    actions = dlq.add_subparsers(dest="action", required=True)
    for name, run, alone, limit in (
        ("peek", _peek, _peek_alone, 10),
        ("redrive", _redrive, _redrive_alone, None),
    ):
        action = actions.add_parser(name)
        action.add_argument("queue", nargs="?", help="the source queue")
        action.add_argument("--dead-letter-queue", default=None, help="default: <queue>-dlq")
        action.add_argument("--outbox", default=None, metavar="URL", help=_OUTBOX_HELP)
        action.add_argument("--limit", type=int, default=limit)
        action.set_defaults(run=run, run_alone=_outbox_only(alone), read_only=True)


_OUTBOX_HELP = "an outbox's dead rows instead: sqlite:///orders.db, postgresql://…"


def _outbox_only(
    run: Callable[[argparse.Namespace], None],
) -> Callable[[argparse.Namespace], int | None]:
    """Run a command that names only an outbox without a broker; ``None``: it needs one."""

    def alone(args: argparse.Namespace) -> int | None:
        if args.queue is not None:
            return None
        if args.outbox is None:
            raise ConfigurationError("name a queue, or an outbox with --outbox URL")
        run(args)
        return 0

    return alone


def _stats_alone(args: argparse.Namespace) -> None:
    outbox_stats(args.outbox, args.json)


def _peek_alone(args: argparse.Namespace) -> None:
    outbox_dead_rows(args.outbox, args.limit)


def _redrive_alone(args: argparse.Namespace) -> None:
    outbox_redrive(args.outbox, args.limit)


def _declare(args: argparse.Namespace, backend: MessagingBackend) -> int:
    dispatcher = MessageDispatcher(backend, consumers=load_consumers(args.consumers, backend))
    options = {}
    if args.visibility_timeout is not None:
        options["visibility_timeout"] = args.visibility_timeout
    if args.filter_events:
        options["filter_events"] = True
    dispatcher.declare(args.queue, topics=args.topic, **options)
    topics = sorted(set(dispatcher.topics()) | set(args.topic))
    dead_letters = dead_letter_queue_name(args.queue)
    print(
        f"declared {args.queue} (dead letters: {dead_letters}), subscribed to: "
        f"{', '.join(topics) or '-'}"
    )
    return 0


def _stats(args: argparse.Namespace, backend: MessagingBackend) -> int:
    if args.outbox is not None:
        outbox_stats(args.outbox, args.json)
    source = backend.queue_stats(backend.get_queue(args.queue))
    dead_letter_name = args.dead_letter_queue or dead_letter_queue_name(args.queue)
    try:
        dead = backend.queue_stats(backend.get_queue(dead_letter_name))
        dead_letters: int | None = dead.ready
    except QueueNotFoundError:
        dead_letters = 0
    counts = {
        "queue": args.queue,
        "ready": source.ready,
        "in_flight": source.in_flight,
        "delayed": source.delayed,
        "dead_lettered": dead_letters,
    }
    if args.json:
        print(json.dumps(counts))
        return 0
    shown = {k: ("unknown" if v is None else v) for k, v in counts.items()}
    print(
        f"{args.queue}: {shown['ready']} ready, {shown['in_flight']} in flight,"
        f" {shown['delayed']} delayed; {shown['dead_lettered']} dead-lettered"
        f" ({dead_letter_name})"
    )
    return 0


def _peek(args: argparse.Namespace, backend: MessagingBackend) -> int:
    if args.outbox is not None:
        outbox_dead_rows(args.outbox, args.limit)
    messages = peek(backend, args.queue, dead_letter_queue=args.dead_letter_queue, limit=args.limit)
    for message in messages:
        print(json.dumps(_described(message, backend.max_message_size), ensure_ascii=False))
    return 0


def _redrive(args: argparse.Namespace, backend: MessagingBackend) -> int:
    if args.outbox is not None:
        outbox_redrive(args.outbox, args.limit)
    source = args.dead_letter_queue or dead_letter_queue_name(args.queue)
    moved = redrive(backend, args.queue, dead_letter_queue=source, limit=args.limit)
    print(f"moved {moved} message(s) from {source} to {args.queue}")
    return 0


def _described(message: Message, max_message_size: int | None) -> dict[str, Any]:
    return {
        "message_id": message.message_id,
        "manifest": message.manifest,
        "serializer_id": message.serializer_id,
        "reason": dead_letter_reason(message, max_message_size=max_message_size),
        # A binary header (another producer's) prints as {"base64": …}.
        "metadata": {
            k: binary_in_json(v) if isinstance(v, bytes) else v for k, v in message.metadata.items()
        },
        "content": message.content,
    }
