"""The consume loop: receive messages, let the engine decide and settle each (sync)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from melange.backends.interfaces import MessagingBackend
from melange.broker_calls import run_calls
from melange.consumers import Consumer
from melange.consuming.engine import EngineOwner
from melange.consuming.groups import GroupTurns
from melange.consuming.holding import HeldMessages
from melange.consuming.pacing import ReceivePacing
from melange.consuming.queues import QueueBinding
from melange.consuming.settling import OutcomeCounts
from melange.exceptions import BackendError, InvalidArgumentError, QueueNotFoundError
from melange.grouping import GROUP_HEADER
from melange.idempotency.base import IdempotencyStore
from melange.middleware import Consuming, ExceptionHook, Handling, Middleware
from melange.middleware.idempotency import IdempotencyMiddleware
from melange.models import Message, QueueWrapper
from melange.outcomes import OutcomeKind
from melange.policies import AckPolicy, RetryPolicy
from melange.serializers import SerializerRegistry

__all__ = ["MessageDispatcher", "OutcomeCounts", "SimpleMessageDispatcher"]


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


class MessageDispatcher(EngineOwner):
    """Pulls messages from a queue and hands each event to the consumers that accept it.

    Each message is decided by the pipeline (``melange.consuming.decisions``)
    and settled at once (``melange.consuming.settling``): acknowledged when
    its consumers are done, released for a retry with backoff, or
    dead-lettered with its original content and the headers ``error_type``,
    ``error_message``, ``error_stage``, ``attempts`` and ``source_queue``.
    While a message is held its visibility is extended, so a slow handler is
    never handed to a second worker. ``middleware`` wraps the handling of
    every message (the first given is outermost); with an ``idempotency``
    store a redelivered message runs each consumer once.
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
        chain = list(middleware)
        if idempotency is not None:
            chain.append(IdempotencyMiddleware(idempotency))
        super().__init__(
            serializers=serializers,
            middleware=chain,
            ack_policy=ack_policy,
            retry=retry,
            batch_size=batch_size,
            visibility_timeout=visibility_timeout,
            default_visibility_timeout=backend.default_visibility_timeout,
            default_max_receive_count=backend.default_max_receive_count,
        )
        self.backend = backend
        self.idempotency = idempotency
        #: A message group's messages run one at a time, in the order received, on all threads.
        self.turns = GroupTurns()
        for consumer in consumers or ():
            self.attach_consumer(consumer)

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
        ``filter_events=True`` subscribes with the manifests the consumers take,
        so a shared topic's other events never reach the queue (``filter_events``
        may also list them; see ``declare_queue``).
        By default the broker's own dead-letter limit is one receive beyond the
        retry policy's, so the dispatcher dead-letters first, with the error headers.
        """
        steps = self.engine.declaring(
            queue, topics=topics, dead_letter_queue_name=dead_letter_queue_name, **queue_options
        )
        return run_calls(self.backend, steps)

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
        bound = self._binding(queue)
        stop = stop_event if stop_event is not None else threading.Event()
        pacing = ReceivePacing(queue, self.batch_size, max_messages, idle_timeout)
        handled = 0
        with HeldMessages(self.backend, bound.visibility_timeout) as held:
            while not stop.is_set():
                wanted = pacing.wanted(handled)
                if wanted == 0:
                    break
                try:
                    batch = self.backend.retrieve_messages(
                        bound.wrapper, max_messages=wanted, wait_seconds=pacing.wait_seconds()
                    )
                except QueueNotFoundError:
                    raise
                except BackendError as e:
                    stop.wait(pacing.receive_failed(e))
                    continue
                pacing.receive_worked()
                if not batch:
                    if pacing.idle_over():
                        break
                    continue
                handled += self._run_batch(
                    batch, bound, held, stop, on_exception=on_exception, after_consume=after_consume
                )
                pacing.received()
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
        self._binding(queue)  # a missing queue fails here, not in every thread
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
        bound = self._binding(queue)
        with HeldMessages(self.backend, bound.visibility_timeout) as held:
            self._run_batch(
                batch,
                bound,
                held,
                threading.Event(),
                on_exception=on_exception,
                after_consume=after_consume,
            )

    def _run_batch(
        self,
        batch: Sequence[Message],
        bound: QueueBinding,
        held: HeldMessages,
        stop: threading.Event,
        *,
        on_exception: ExceptionHook | None,
        after_consume: Callable[[], None] | None,
    ) -> int:
        """Handle a received batch, one message at a time; return how many were handled."""
        if self.settler.acks_on_receipt:
            self.backend.acknowledge_batch(batch)
        else:
            held.hold(batch)
        handled = 0
        stopping = stop.is_set
        consuming = Consuming(
            bound.name,
            self,
            bound.visibility_timeout,
            on_exception,
            stopping,
            self.backend.messaging_system,
        )
        if any(GROUP_HEADER in m.metadata for m in batch):
            handled = self._run_in_turns(batch, bound, held, consuming, after_consume)
        else:
            for message in batch:
                if stopping():
                    break
                self._handle_one(message, bound, held, consuming)
                handled += 1
                if after_consume is not None:
                    after_consume()
        run_calls(self.backend, self.settler.releasing_unstarted(held))
        held.flush()
        return handled

    def _run_in_turns(
        self,
        batch: Sequence[Message],
        bound: QueueBinding,
        held: HeldMessages,
        consuming: Consuming,
        after_consume: Callable[[], None] | None,
    ) -> int:
        """Handle a batch holding grouped messages, each when its group's turn comes."""
        turns, name, stopping = self.turns, bound.name, consuming.stopping
        turns.join(name, batch)
        handled = 0
        try:
            for message in batch:
                if stopping():
                    break
                if not turns.wait_turn(name, message, stopping):
                    if stopping():
                        break
                    run_calls(self.backend, self.settler.giving_way(message, held))
                    turns.leave(name, message, retried=True)
                    continue
                kind = self._handle_one(message, bound, held, consuming)
                turns.leave(name, message, retried=kind is OutcomeKind.RELEASE)
                handled += 1
                if after_consume is not None:
                    after_consume()
        finally:
            for message in batch:  # the ones not started go back: those behind them give way
                turns.leave(name, message, retried=True)
        return handled

    def _handle_one(
        self, message: Message, bound: QueueBinding, held: HeldMessages, consuming: Consuming
    ) -> OutcomeKind:
        """Decide one held message and settle it; thread-safe (several may run at once)."""
        settler, backend = self.settler, self.backend
        if bound.dead_letters.leaves_any_to_broker and run_calls(
            backend, settler.handing_back(message, bound, held)
        ):
            return OutcomeKind.RELEASE
        handling = Handling(message, consuming)
        held.start(handling)
        try:
            outcome = self.pipeline.handle(handling)
        finally:
            held.finish(handling)
        if not settler.settled_at_once(outcome, message, held):
            run_calls(backend, settler.settling(outcome, message, bound, held))
        return outcome.kind

    def _binding(self, queue: str) -> QueueBinding:
        bound = self.queues.get(queue)
        if bound is None:
            bound = run_calls(self.backend, self.queues.binding(queue))
        return bound


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
