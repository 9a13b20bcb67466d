"""``melange worker``: consume a queue with the given consumers until told to stop."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import threading
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from melange._secrets import masked
from melange.backends.interfaces import MessagingBackend
from melange.cli._loading import load_consumers, load_middleware
from melange.dispatcher import MessageDispatcher
from melange.exceptions import ConfigurationError
from melange.idempotency import store_from_url
from melange.manifests import manifest_of

if TYPE_CHECKING:
    from melange.aio import AsyncMessageDispatcher

__all__ = ["add_worker_command"]

_log = logging.getLogger("melange.worker")


def add_worker_command(commands: Any) -> None:
    """Add ``worker`` to the ``melange`` command's subcommands."""
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
    worker.add_argument(
        "--outbox",
        default=None,
        metavar="URL",
        help="also relay this outbox to the broker, on a thread (as `melange relay` does)",
    )
    worker.set_defaults(run=_run)


def _run(args: argparse.Namespace, backend: MessagingBackend) -> int:
    """Consume ``args.queue`` until told to stop; print how many messages were handled."""
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
    dispatcher = _dispatcher(args, backend, options, use_async=use_async)
    async_dispatcher = None if isinstance(dispatcher, MessageDispatcher) else dispatcher
    concurrency = (
        f"asyncio, {args.concurrency} in flight" if use_async else f"{args.threads} thread(s)"
    )
    _log.info(
        "worker on %s: queue %s, consumers %s, topics %s, %s, %d at a time, idempotency %s",
        masked(args.url),
        args.queue,
        ", ".join(c.consumer_id for c in consumers),
        ", ".join(sorted({manifest_of(t) for t in dispatcher.event_types()})) or "-",
        concurrency,
        dispatcher.batch_size,
        masked(args.idempotency) if args.idempotency else "-",
    )

    def stopping(signum: int, frame: object) -> None:
        if not stop.is_set():
            _log.info("%s: finishing the messages in hand, handing back the rest", _name(signum))
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stopping)
    relaying = _relaying(args, backend, metrics)
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
            assert isinstance(dispatcher, MessageDispatcher)
            handled = dispatcher.run(
                args.queue,
                threads=args.threads,
                max_messages=args.max_messages,
                idle_timeout=args.idle_timeout,
                stop_event=stop,
            )
    finally:
        relaying.close()
        if store is not None:
            store.close()
        if metrics is not None:
            metrics.close()
    summary = dispatcher.outcomes.summary()
    _log.info("stopped: %d message(s) from %s: %s", handled, args.queue, summary)
    print(f"handled {handled} message(s) from {args.queue}: {summary}", flush=True)
    return 0


def _relaying(args: argparse.Namespace, backend: MessagingBackend, metrics: Any) -> ExitStack:
    """Start the relay of ``--outbox`` (and its gauges, with metrics); close it to stop."""
    stack = ExitStack()
    if args.outbox is not None:
        from melange.outbox import OutboxGauges, Relay

        relay = stack.enter_context(Relay(args.outbox, backend))
        relay.start()
        if metrics is not None:
            gauges = OutboxGauges(args.outbox, meter_provider=metrics.meter_provider)
            stack.callback(gauges.close)
        _log.info("relaying the outbox %s", masked(args.outbox))
    return stack


def _dispatcher(
    args: argparse.Namespace,
    backend: MessagingBackend,
    options: dict[str, Any],
    *,
    use_async: bool,
) -> MessageDispatcher | AsyncMessageDispatcher:
    """Return the worker's dispatcher, its queue declared unless ``--no-declare``."""
    queue_options = {}
    if args.visibility_timeout is not None:
        queue_options["visibility_timeout"] = args.visibility_timeout
    if use_async:
        from melange.aio import AsyncMessageDispatcher, BridgedBackend

        aio = AsyncMessageDispatcher(
            BridgedBackend(backend), max_concurrency=args.concurrency, **options
        )
        if not args.no_declare:
            asyncio.run(aio.declare(args.queue, **queue_options))
        return aio
    dispatcher = MessageDispatcher(backend, **options)
    if not args.no_declare:
        dispatcher.declare(args.queue, **queue_options)
    return dispatcher


def _name(signum: int) -> str:
    return signal.Signals(signum).name


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
