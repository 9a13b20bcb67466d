"""The consume loop: fetch messages, let the pipeline decide, apply the outcome."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from melange.backends.interfaces import MessagingBackend
from melange.builtin_middleware import IdempotencyMiddleware, MessageScopeMiddleware
from melange.consumers import Consumer
from melange.dead_letters import DeadLetterer
from melange.dead_letters import dead_letter_queue_name as _dead_letter_name
from melange.exceptions import (
    BackendError,
    ConfigurationError,
    InvalidArgumentError,
    QueueNotFoundError,
)
from melange.holding import HeldMessages
from melange.idempotency.base import IdempotencyStore
from melange.manifests import manifest_of
from melange.middleware import Consuming, ExceptionHook, Handling, Middleware
from melange.models import Message, QueueWrapper
from melange.outcomes import Outcome, OutcomeKind
from melange.pipeline import MessagePipeline
from melange.policies import AckPolicy, RetryPolicy
from melange.serializers import SerializerRegistry

__all__ = ["MessageDispatcher", "OutcomeCounts", "SimpleMessageDispatcher"]

_log = logging.getLogger("melange.dispatcher")

_POLL_SECONDS = 1.0
_MAX_OUTAGE_PAUSE = 30.0


@dataclass(slots=True)
class _QueueState:
    name: str
    wrapper: QueueWrapper
    dead_letters: DeadLetterer
    visibility_timeout: float


class OutcomeCounts:
    """Handled messages per outcome (acknowledged, retried, dead-lettered...); thread-safe."""

    def __init__(self) -> None:
        self._counts: Counter[OutcomeKind] = Counter()
        self._lock = threading.Lock()

    def add(self, kind: OutcomeKind) -> None:
        """Count one message that came to ``kind``."""
        with self._lock:
            self._counts[kind] += 1

    def __getitem__(self, kind: OutcomeKind) -> int:
        with self._lock:
            return self._counts[kind]

    def summary(self) -> str:
        """Return e.g. ``8 succeeded, 1 retried, 1 dead-lettered, 0 skipped``."""
        with self._lock:
            counts = dict(self._counts)
        parts = [
            (counts.get(OutcomeKind.ACK, 0), "succeeded"),
            (counts.get(OutcomeKind.RELEASE, 0), "retried"),
            (counts.get(OutcomeKind.DEAD_LETTER, 0), "dead-lettered"),
            (counts.get(OutcomeKind.SKIP, 0), "skipped"),
        ]
        kept = counts.get(OutcomeKind.KEEP, 0)
        if kept:
            parts.append((kept, "left to the handler"))
        return ", ".join(f"{n} {what}" for n, what in parts)


class _Count:
    """Messages handled by several loops together; sets ``stop`` at ``limit``."""

    def __init__(self, limit: int | None, stop: threading.Event) -> None:
        self.limit = limit
        self.stop = stop
        self.handled = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.handled += 1
            if self.limit is not None and self.handled >= self.limit:
                self.stop.set()


class MessageDispatcher:
    """Pulls messages from a queue and hands each event to the consumers that accept it.

    Each message is decided by the pipeline (see ``melange.pipeline``) and
    settled at once: acknowledged when its consumers are done, released for
    a retry with backoff, or dead-lettered with its original content and the
    headers ``error_type``, ``error_message``, ``error_stage``, ``attempts``
    and ``source_queue``. While a message is held its visibility is extended,
    so a slow handler is never handed to a second worker. ``middleware`` wraps
    the handling of every message (the first given is outermost); with an
    ``idempotency`` store a redelivered message runs each consumer once.
    """

    def __init__(
        self,
        backend: MessagingBackend,
        consumers: Iterable[Consumer] | None = None,
        *,
        serializers: SerializerRegistry | None = None,
        idempotency: IdempotencyStore | None = None,
        middleware: Sequence[Middleware] = (),
        ack_policy: AckPolicy = AckPolicy.AFTER_SUCCESS,
        retry: RetryPolicy | None = None,
        batch_size: int = 10,
        visibility_timeout: float | None = None,
    ) -> None:
        self.backend = backend
        self.serializers = serializers if serializers is not None else SerializerRegistry()
        self.idempotency = idempotency
        self.ack_policy = ack_policy
        self.retry = retry if retry is not None else RetryPolicy()
        self.batch_size = batch_size
        self.visibility_timeout = visibility_timeout
        #: How many handled messages came to each outcome, since this dispatcher was made.
        self.outcomes = OutcomeCounts()
        self._consumers: list[Consumer] = []
        self._routes: dict[tuple[type, str | None], tuple[Consumer, ...]] = {}
        self._queues: dict[str, _QueueState] = {}
        self._lock = threading.Lock()
        chain: list[Middleware] = [MessageScopeMiddleware(), *middleware]
        if idempotency is not None:
            chain.append(IdempotencyMiddleware(idempotency))
        self.pipeline = MessagePipeline(
            self._consumers_for,
            self.serializers,
            middleware=chain,
            ack_policy=ack_policy,
            retry=self.retry,
            learn_event_types=self._register_event_types,
        )
        for consumer in consumers or ():
            self.attach_consumer(consumer)

    # -- consumers and topology ----------------------------------------------------

    #: Whether listeners may be ``async def``: only under ``melange.aio.AsyncMessageDispatcher``.
    _runs_async_handlers = False

    def attach_consumer(self, consumer: Consumer) -> None:
        """Add a consumer; its event classes (and their known subclasses) become readable.

        Raises:
            ConfigurationError: it has ``async def`` listeners (use the async dispatcher).
        """
        if not self._runs_async_handlers and consumer.has_async_listeners():
            raise ConfigurationError(
                f"{type(consumer).__qualname__} has async listeners:"
                " consume with melange.aio.AsyncMessageDispatcher"
            )
        with self._lock:
            self._consumers.append(consumer)
            self._routes = {}
        self._register_event_types()

    def unattach_consumer(self, consumer: Consumer) -> None:
        """Remove a consumer; its events are skipped from now on unless another accepts them."""
        with self._lock:
            self._consumers.remove(consumer)
            self._routes = {}

    @property
    def consumers(self) -> tuple[Consumer, ...]:
        """Return the attached consumers."""
        return tuple(self._consumers)

    def event_types(self) -> list[type]:
        """Return every class some consumer accepts: its listener types and their subclasses."""
        seen: dict[type, None] = {}
        pending = [t for consumer in self._consumers for t in consumer.accepted_types()]
        while pending:
            cls = pending.pop()
            if cls in seen or cls.__module__ == "builtins":
                continue
            seen[cls] = None
            pending.extend(cls.__subclasses__())
        return list(seen)

    def topics(self) -> list[str]:
        """Return the manifest topics a queue of this dispatcher subscribes to."""
        return sorted({manifest_of(cls) for cls in self.event_types()})

    def declare(
        self,
        queue: str,
        *,
        topics: Iterable[str] = (),
        dead_letter_queue_name: str | None = None,
        **queue_options: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Create ``queue`` and its dead-letter queue, subscribed to every accepted event's topic.

        Safe to call again. ``topics`` adds subscriptions by name; other options
        (``visibility_timeout``, ``max_receive_count``…) go to ``declare_queue``.
        By default the broker's own dead-letter limit is one receive beyond the
        retry policy's, so the dispatcher dead-letters first, with the error headers.
        """
        self._register_event_types()
        names = sorted(set(self.topics()) | set(topics))
        wrappers = [self.backend.declare_topic(name) for name in names]
        queue_options.setdefault("max_receive_count", self.retry.max_deliveries + 1)
        dead_letter_name = dead_letter_queue_name or _dead_letter_name(queue)
        wrapper, dead_letter = self.backend.declare_queue(
            queue, *wrappers, dead_letter_queue_name=dead_letter_name, **queue_options
        )
        visibility = queue_options.get("visibility_timeout") or self._visibility_of(
            wrapper, declared=True
        )
        state = _QueueState(
            queue,
            wrapper,
            DeadLetterer(self.backend, queue, dead_letter_name, dead_letter),
            float(visibility),
        )
        with self._lock:
            self._queues[queue] = state
        return wrapper, dead_letter

    # -- consuming ---------------------------------------------------------------------

    def consume_loop(
        self,
        queue: str,
        *,
        max_messages: int | None = None,
        idle_timeout: float | None = None,
        stop_event: threading.Event | None = None,
        on_exception: ExceptionHook | None = None,
        after_consume: Callable[[], None] | None = None,
    ) -> int:
        """Consume from ``queue`` until told to stop; return how many messages were handled.

        Stops after ``max_messages``, after ``idle_timeout`` seconds without a
        message (0: as soon as the queue is empty), or when ``stop_event`` is
        set: then the message in hand is finished and those received but not
        started are released at once. ``on_exception`` is called with each
        exception a handler raises; ``after_consume`` after each message. A
        broker outage pauses the loop with backoff instead of ending it.

        Raises:
            QueueNotFoundError: the queue does not exist.
        """
        state = self._queue_state(queue)
        stop = stop_event if stop_event is not None else threading.Event()
        handled = 0
        idle_since = time.monotonic()
        outage_pause = 0.0
        with HeldMessages(self.backend, state.visibility_timeout) as held:
            while not stop.is_set():
                wanted = self.batch_size
                if max_messages is not None:
                    if handled >= max_messages:
                        break
                    wanted = min(wanted, max_messages - handled)
                wait = _POLL_SECONDS
                if idle_timeout is not None:
                    wait = min(wait, max(0.0, idle_timeout - (time.monotonic() - idle_since)))
                try:
                    batch = self.backend.retrieve_messages(
                        state.wrapper, max_messages=wanted, wait_seconds=wait
                    )
                except QueueNotFoundError:
                    raise
                except BackendError as e:
                    outage_pause = min(max(outage_pause * 2, 0.5), _MAX_OUTAGE_PAUSE)
                    _log.warning(
                        "receive from %s failed (%s); retrying in %.1fs", queue, e, outage_pause
                    )
                    stop.wait(outage_pause)
                    continue
                outage_pause = 0.0
                if not batch:
                    if idle_timeout is not None and time.monotonic() - idle_since >= idle_timeout:
                        break
                    continue
                handled += self._run_batch(
                    batch, state, held, stop, on_exception=on_exception, after_consume=after_consume
                )
                idle_since = time.monotonic()
        return handled

    def run(
        self,
        queue: str,
        *,
        threads: int = 1,
        max_messages: int | None = None,
        idle_timeout: float | None = None,
        stop_event: threading.Event | None = None,
        on_exception: ExceptionHook | None = None,
    ) -> int:
        """Consume ``queue`` with ``threads`` handler threads; return how many were handled.

        Each thread runs its own loop (``consume_loop``): the delivery rules
        hold per message. Messages are received ``batch_size`` at a time per
        thread, so keep it small with many threads (``melange worker
        --threads`` receives one at a time per thread by default). With
        ``max_messages`` every thread stops once that many were handled in
        all; messages other threads hold then are finished, not abandoned.

        Raises:
            InvalidArgumentError: ``threads`` is below 1.
            QueueNotFoundError: the queue does not exist.
        """
        if threads < 1:
            raise InvalidArgumentError(f"threads must be at least 1, not {threads!r}")
        if threads == 1:
            return self.consume_loop(
                queue,
                max_messages=max_messages,
                idle_timeout=idle_timeout,
                stop_event=stop_event,
                on_exception=on_exception,
            )
        self._queue_state(queue)  # a missing queue fails here, not in every thread
        if stop_event is not None and stop_event.is_set():
            return 0
        stop = threading.Event()
        counted = _Count(max_messages, stop)
        results: list[int] = []
        errors: list[BaseException] = []

        def loop() -> None:
            try:
                results.append(
                    self.consume_loop(
                        queue,
                        idle_timeout=idle_timeout,
                        stop_event=stop,
                        on_exception=on_exception,
                        after_consume=counted.add,
                    )
                )
            except BaseException as e:  # re-raised in the caller's thread
                errors.append(e)
                stop.set()

        workers = [
            threading.Thread(target=loop, name=f"melange-{queue}-{n}", daemon=True)
            for n in range(threads)
        ]
        for worker in workers:
            worker.start()
        try:
            while any(w.is_alive() for w in workers):
                if stop_event is not None and stop_event.is_set():
                    stop.set()
                for worker in workers:
                    worker.join(timeout=0.1)
        finally:
            stop.set()
            for worker in workers:
                worker.join()
        if errors:
            raise errors[0]
        return sum(results)

    def dispatch_batch(
        self,
        batch: Sequence[Message],
        queue: str,
        *,
        on_exception: ExceptionHook | None = None,
        after_consume: Callable[[], None] | None = None,
    ) -> None:
        """Handle messages received from ``queue`` and settle each as its outcome says."""
        state = self._queue_state(queue)
        with HeldMessages(self.backend, state.visibility_timeout) as held:
            self._run_batch(
                batch,
                state,
                held,
                threading.Event(),
                on_exception=on_exception,
                after_consume=after_consume,
            )

    def _run_batch(
        self,
        batch: Sequence[Message],
        state: _QueueState,
        held: HeldMessages,
        stop: threading.Event,
        *,
        on_exception: ExceptionHook | None,
        after_consume: Callable[[], None] | None,
    ) -> int:
        """Handle a received batch, one message at a time; return how many were handled."""
        acked_on_receipt = self.ack_policy is AckPolicy.BEFORE_HANDLE
        if acked_on_receipt:
            self.backend.acknowledge_batch(batch)
        else:
            held.hold(batch)
        handled = 0
        stopping = stop.is_set
        consuming = Consuming(state.name, self, state.visibility_timeout, on_exception, stopping)
        for message in batch:
            if stopping():
                break
            self._handle_one(message, state, held, consuming)
            handled += 1
            if after_consume is not None:
                after_consume()
        for message in held.unstarted():
            self._release(message, 0.0)
        held.flush()
        return handled

    def _handle_one(
        self, message: Message, state: _QueueState, held: HeldMessages, consuming: Consuming
    ) -> OutcomeKind:
        """Decide one held message and settle it; thread-safe (several may run at once)."""
        if self._handed_back(message, state, held):
            return OutcomeKind.RELEASE
        acked_on_receipt = self.ack_policy is AckPolicy.BEFORE_HANDLE
        handling = Handling(message, consuming)
        held.start(handling)
        try:
            outcome = self.pipeline.handle(handling)
        finally:
            held.finish(handling)
        if not self._settled_at_once(outcome, message, held):
            self._apply(outcome, message, state, held, acked_on_receipt)
        self.outcomes.add(outcome.kind)
        return outcome.kind

    def _settled_at_once(self, outcome: Outcome, message: Message, held: HeldMessages) -> bool:
        """Settle a success without broker I/O (its ack waits in ``held``); else return False."""
        if outcome.kind is OutcomeKind.ACK and self.ack_policy is not AckPolicy.BEFORE_HANDLE:
            held.done(message)
            return True
        return False

    def _apply(
        self,
        outcome: Outcome,
        message: Message,
        state: _QueueState,
        held: HeldMessages,
        acked_on_receipt: bool,
    ) -> None:
        kind = outcome.kind
        if kind is OutcomeKind.DEAD_LETTER:
            _log.error(
                "dead-lettered %s (%s) from %s at stage %s: %s",
                message.message_id,
                message.manifest,
                state.name,
                outcome.stage.value if outcome.stage else "?",
                outcome.reason,
            )
            sent = state.dead_letters.send(
                message,
                stage=outcome.stage,  # type: ignore[arg-type]
                reason=outcome.reason,
                error_type=outcome.error_type or _type_name(outcome.error),
                attempts=outcome.attempts,
            )
            if not sent and not acked_on_receipt:
                # Nowhere to put it: keep it on the queue rather than lose it.
                held.drop(message)
                left = state.dead_letters.returns_of(message) is not None
                self._release(message, 0.0 if left else self.retry.max_backoff_seconds)
                return
        if acked_on_receipt:
            return
        if outcome.settles:
            held.done(message)
        elif kind is OutcomeKind.RELEASE:
            held.drop(message)
            if outcome.error is not None:
                _log.warning(
                    "retrying %s (%s) from %s in %.1f s: %s",
                    message.message_id,
                    message.manifest,
                    state.name,
                    outcome.delay,
                    outcome.reason,
                )
            self._release(message, outcome.delay)
        else:
            held.drop(message)

    def _handed_back(self, message: Message, state: _QueueState, held: HeldMessages) -> bool:
        """Release, unhandled, a message left to the broker's redrive; return whether it was one."""
        returns = state.dead_letters.returns_of(message)
        if returns is None:
            return False
        held.drop(message)
        # At once while the broker can still move it; slowly if its queue has no redrive policy.
        redrive_limit = 2 * self.backend.default_max_receive_count
        if returns == redrive_limit + 1:
            _log.error(
                "%s came back to %s %d times without the broker moving it to %s:"
                " has the queue a redrive policy? releasing it every %.0f s",
                message.message_id,
                state.name,
                returns,
                state.dead_letters.dead_letter_queue_name,
                self.retry.max_backoff_seconds,
            )
        self._release(message, 0.0 if returns <= redrive_limit else self.retry.max_backoff_seconds)
        self.outcomes.add(OutcomeKind.RELEASE)
        return True

    def _release(self, message: Message, delay: float) -> None:
        try:
            self.backend.release(message, delay)
        except BackendError as e:
            # It comes back when its visibility timeout ends.
            _log.warning("could not release %s: %s", message.message_id, e)

    # -- helpers ----------------------------------------------------------------------

    def _consumers_for(self, event_type: type, manifest: str | None) -> tuple[Consumer, ...]:
        key = (event_type, manifest)
        found = self._routes.get(key)
        if found is None:
            found = tuple(c for c in self._consumers if c.wants(event_type, manifest))
            with self._lock:
                self._routes[key] = found
        return found

    def _register_event_types(self) -> bool:
        """Make every accepted class readable; return whether any was new."""
        known = self.serializers.event_types
        added = False
        for cls in self.event_types():
            manifest = manifest_of(cls)
            if manifest not in known:
                known.register(cls)
                added = True
        return added

    def _visibility_of(self, queue: QueueWrapper, *, declared: bool) -> float:
        """Return the queue's visibility timeout as the broker has it, else the configured one.

        The broker's value wins: renewing on a longer one than the queue's
        would let a long handler's message reach a second worker. A queue
        not declared here that differs from the one configured is logged.
        """
        configured = self.visibility_timeout
        try:
            known = self.backend.visibility_timeout_of(queue)
        except QueueNotFoundError:
            raise
        except BackendError as e:  # e.g. not allowed to read it: go on as configured
            _log.warning("cannot read the visibility timeout of %s: %s", queue.unwrap(), e)
            known = None
        if known is None:
            return configured if configured is not None else self.backend.default_visibility_timeout
        if configured is not None and known != configured and not declared:
            _log.warning(
                "queue %s hides a message for %g s, not the %g s this dispatcher was given:"
                " renewing on the queue's",
                queue.unwrap(),
                known,
                configured,
            )
        return known

    def _queue_state(self, queue: str) -> _QueueState:
        state = self._queues.get(queue)
        if state is None:
            wrapper = self.backend.get_queue(queue)
            name = _dead_letter_name(queue)
            state = _QueueState(
                queue,
                wrapper,
                DeadLetterer(self.backend, queue, name, None),
                self._visibility_of(wrapper, declared=False),
            )
            with self._lock:
                self._queues[queue] = state
        return state


def _type_name(error: BaseException | None) -> str:
    if error is None:
        return "melange.Unknown"
    return f"{type(error).__module__}.{type(error).__qualname__}"


class SimpleMessageDispatcher(MessageDispatcher):
    """A dispatcher for one consumer, as in the original library.

    Without a backend it uses ``MELANGE_BACKEND_URL``, else ``sqlite:///melange.db``.
    """

    def __init__(
        self,
        consumer: Consumer,
        serializer_registry: SerializerRegistry | None = None,
        backend: MessagingBackend | None = None,
        **options: Any,
    ) -> None:
        if backend is None:
            from melange.backends import default_backend_url, from_url

            backend = from_url(default_backend_url())
        super().__init__(backend, [consumer], serializers=serializer_registry, **options)
