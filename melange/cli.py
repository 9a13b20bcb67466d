"""The ``melange`` command: run a worker, inspect and redrive dead letters, inspect sagas.

    melange worker myapp.consumers:Billing --queue billing [--backend URL]
        [--threads N | --async [--concurrency N]] [--processes N] [--prefetch N]
        [--idempotency URL]
        [--middleware module:Class] [--visibility-timeout SECONDS]
        [--log-level INFO] [--log-format text|json]
    melange dlq peek billing [--limit 10]
    melange dlq redrive billing
    melange saga list OrderSaga [--store URL] [--status running] [--json]
    melange saga show OrderSaga o-1 [--store URL] [--json]

Without ``--backend`` (given before or after the subcommand) the URL is
``MELANGE_BACKEND_URL``, else ``sqlite:///melange.db``; without ``--store`` the
saga store is ``MELANGE_SAGA_STORE_URL``, else the same file. Modules named
``module:attribute`` are imported from the current folder too, as with
``python -m``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from melange._logs import FORMATS, configure, masked
from melange._supervisor import supervise
from melange.backends import default_backend_url, from_url
from melange.backends.interfaces import MessagingBackend
from melange.consumers import Consumer
from melange.dead_letters import dead_letter_queue_name, dead_letter_reason, peek, redrive
from melange.dispatcher import MessageDispatcher
from melange.exceptions import ConfigurationError, MelangeError, QueueNotFoundError
from melange.idempotency import store_from_url
from melange.manifests import manifest_of
from melange.middleware import Middleware
from melange.models import Message
from melange.saga._commands import add_saga_commands

__all__ = ["build_parser", "load_consumers", "load_middleware", "main"]

_log = logging.getLogger("melange.worker")


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
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigurationError(f"cannot import {module_name!r} (for {target}): {e}") from e
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(
            f"module {module_name!r} has no {attribute!r} ({target})"
        ) from None


def _worker(args: argparse.Namespace, backend: MessagingBackend) -> int:
    store = store_from_url(args.idempotency) if args.idempotency else None
    consumers = load_consumers(args.consumers, backend)
    middleware = [load_middleware(target) for target in args.middleware]
    stop = threading.Event()
    metrics = None
    if args.metrics_port is not None:
        from melange._metrics_server import MetricsServer
        from melange.telemetry import TelemetryMiddleware

        metrics = MetricsServer(args.metrics_host, args.metrics_port, lambda: not stop.is_set())
        middleware.append(TelemetryMiddleware(meter_provider=metrics.meter_provider))
        _log.info("metrics on http://%s:%d/metrics", args.metrics_host, metrics.port)
    use_async = args.use_async or any(c.has_async_listeners() for c in consumers)
    if use_async and args.threads > 1:
        raise ConfigurationError("--threads is for plain listeners; with --async use --concurrency")
    options: dict[str, Any] = {
        "consumers": consumers,
        "middleware": middleware,
        "idempotency": store,
        "visibility_timeout": args.visibility_timeout,
        "batch_size": args.prefetch or (10 if args.threads == 1 else 1),
    }
    async_dispatcher = None
    if use_async:
        from melange.aio import AsyncMessageDispatcher, BridgedBackend

        async_dispatcher = AsyncMessageDispatcher(
            BridgedBackend(backend), max_concurrency=args.concurrency, **options
        )
        dispatcher: MessageDispatcher = async_dispatcher.sync
    else:
        dispatcher = MessageDispatcher(backend, **options)
    if not args.no_declare:
        queue_options = {}
        if args.visibility_timeout is not None:
            queue_options["visibility_timeout"] = args.visibility_timeout
        dispatcher.declare(args.queue, **queue_options)
    concurrency = (
        f"asyncio, {args.concurrency} in flight" if use_async else f"{args.threads} thread(s)"
    )
    _log.info(
        "worker on %s: queue %s, consumers %s, topics %s, %s, %d at a time",
        masked(args.url),
        args.queue,
        ", ".join(c.consumer_id for c in consumers),
        ", ".join(sorted({manifest_of(t) for t in dispatcher.event_types()})) or "-",
        concurrency,
        dispatcher.batch_size,
    )

    def stopping(signum: int, frame: object) -> None:
        if not stop.is_set():
            _log.info("%s: finishing the messages in hand, handing back the rest", _name(signum))
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stopping)
    try:
        if async_dispatcher is not None:
            from melange.aio._worker import consume_until_stopped

            handled = consume_until_stopped(
                async_dispatcher,
                args.queue,
                stop,
                max_messages=args.max_messages,
                idle_timeout=args.idle_timeout,
            )
        else:
            handled = dispatcher.run(
                args.queue,
                threads=args.threads,
                max_messages=args.max_messages,
                idle_timeout=args.idle_timeout,
                stop_event=stop,
            )
    finally:
        if store is not None:
            store.close()
        if metrics is not None:
            metrics.close()
    summary = dispatcher.outcomes.summary()
    _log.info("stopped: %d message(s) from %s: %s", handled, args.queue, summary)
    print(f"handled {handled} message(s) from {args.queue}: {summary}", flush=True)
    return 0


def _name(signum: int) -> str:
    return signal.Signals(signum).name


def _declare(args: argparse.Namespace, backend: MessagingBackend) -> int:
    dispatcher = MessageDispatcher(backend, consumers=load_consumers(args.consumers, backend))
    options = {}
    if args.visibility_timeout is not None:
        options["visibility_timeout"] = args.visibility_timeout
    dispatcher.declare(args.queue, topics=args.topic, **options)
    topics = sorted(set(dispatcher.topics()) | set(args.topic))
    dead_letters = dead_letter_queue_name(args.queue)
    print(
        f"declared {args.queue} (dead letters: {dead_letters}), subscribed to: "
        f"{', '.join(topics) or '-'}"
    )
    return 0


def _stats(args: argparse.Namespace, backend: MessagingBackend) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``melange`` command."""
    parser = argparse.ArgumentParser(prog="melange", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"melange {_version()}")
    parser.add_argument("--backend", default=None, metavar="URL", help=_BACKEND_HELP)
    _add_logging_options(parser, argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="consume a queue with the given consumers")
    worker.add_argument(
        "consumers",
        help="module:attribute naming a Consumer class or instance, a list of them,"
        " or a function of the backend returning them",
    )
    worker.add_argument("--queue", required=True, help="the queue to consume")
    worker.add_argument(
        "--max-messages", type=int, default=None, metavar="N", help="stop after N messages"
    )
    worker.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop after this long without a message (default: never)",
    )
    worker.add_argument(
        "--no-declare",
        action="store_true",
        help="do not declare the queue, its dead-letter queue and subscriptions",
    )
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
    worker.add_argument(
        "--threads",
        type=_at_least_one,
        default=1,
        metavar="N",
        help="handler threads in this process (default: 1)",
    )
    worker.add_argument(
        "--async",
        dest="use_async",
        action="store_true",
        help="run on asyncio (chosen by itself when a listener is async def)",
    )
    worker.add_argument(
        "--concurrency",
        type=_at_least_one,
        default=10,
        metavar="N",
        help="with --async: handlers in flight at once (default: 10)",
    )
    worker.add_argument(
        "--processes",
        type=_at_least_one,
        default=1,
        metavar="N",
        help="worker processes under a supervisor that restarts one that dies (default: 1)",
    )
    worker.add_argument(
        "--prefetch",
        type=_at_least_one,
        default=None,
        metavar="N",
        help="messages each thread receives at once (default: 10 with one thread, else 1)",
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics at /metrics and liveness at /healthz"
        " (pip install 'melange[prometheus]')",
    )
    worker.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="the address to serve metrics on (default: 127.0.0.1; 0.0.0.0 in a container)",
    )
    worker.set_defaults(run=_worker)

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
    declare.set_defaults(run=_declare)

    stats = commands.add_parser("stats", help="a queue's ready, in-flight and dead-lettered counts")
    stats.add_argument("queue", help="the queue")
    stats.add_argument("--dead-letter-queue", default=None, help="default: <queue>-dlq")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(run=_stats)

    dlq = commands.add_parser("dlq", help="inspect or redrive a dead-letter queue")
    actions = dlq.add_subparsers(dest="action", required=True)
    for name, run, limit in (("peek", _peek, 10), ("redrive", _redrive, None)):
        action = actions.add_parser(name)
        action.add_argument("queue", help="the source queue")
        action.add_argument("--dead-letter-queue", default=None, help="default: <queue>-dlq")
        action.add_argument("--limit", type=int, default=limit)
        action.set_defaults(run=run)

    add_saga_commands(commands)
    _add_shared_options(parser)
    return parser


_BACKEND_HELP = "the broker (default: $MELANGE_BACKEND_URL, else sqlite:///melange.db)"


def _add_logging_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log this and worse (default: INFO)",
    )
    parser.add_argument(
        "--log-format", default=default, choices=FORMATS, help="log lines as (default: text)"
    )


def _add_shared_options(parser: argparse.ArgumentParser) -> None:
    """Let ``--backend`` and the logging options come after the subcommand too."""
    children = [
        sub
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for sub in action.choices.values()
    ]
    if not children:
        parser.add_argument(
            "--backend", default=argparse.SUPPRESS, metavar="URL", help=_BACKEND_HELP
        )
        _add_logging_options(parser, argparse.SUPPRESS)
    for child in children:
        _add_shared_options(child)


def _version() -> str:
    try:
        return metadata.version("melange")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _one_process(arguments: list[str]) -> list[str]:
    """Return the command line with ``--processes 1``: what each supervised worker runs."""
    kept: list[str] = []
    skip = False
    for argument in arguments:
        if skip:
            skip = False
        elif argument == "--processes":
            skip = True
        elif not argument.startswith("--processes="):
            kept.append(argument)
    return [*kept, "--processes", "1"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``melange`` command; return its exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(arguments)
    configure(getattr(args, "log_level", "INFO"), getattr(args, "log_format", "text"))
    if getattr(args, "processes", 1) > 1:
        return supervise(_one_process(arguments), args.processes)
    if os.getcwd() not in sys.path:  # as ``python -m`` does
        sys.path.insert(0, os.getcwd())
    try:
        if hasattr(args, "run_alone"):  # needs no broker
            alone: int = args.run_alone(args)
            return alone
        args.url = args.backend or default_backend_url()
        with from_url(args.url) as backend:
            status: int = args.run(args, backend)
            return status
    except MelangeError as e:
        print(f"melange: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
