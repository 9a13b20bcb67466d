"""``AsyncMessageDispatcher``: the consume loop on asyncio, with handlers in flight together.

The loop receives from any ``AsyncMessagingBackend`` and starts each message
as soon as a slot is free (``max_concurrency``). Messages are decided and
settled by the same engine as ``MessageDispatcher``'s (``melange.consuming``):
decisions awaited on the loop, an ``async def`` listener awaited with no
thread in between, a plain one run on a worker thread of the loop's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from melange.aio._bridged import BridgedBackend
from melange.aio._interface import AsyncMessagingBackend, require_async_backend
from melange.aio._stores import BridgedIdempotencyStore
from melange.broker_calls import run_calls_async
from melange.consumers import Consumer
from melange.consuming.async_decisions import AsyncDecisions
from melange.consuming.engine import EngineOwner
from melange.consuming.groups import AsyncGroupTurns
from melange.consuming.holding import HeldMessages, LoopCalls, acknowledging
from melange.consuming.pacing import ReceivePacing
from melange.consuming.queues import QueueBinding
from melange.dispatcher import MessageDispatcher
from melange.exceptions import BackendError, InvalidArgumentError, QueueNotFoundError
from melange.grouping import GROUP_HEADER
from melange.idempotency.base import AsyncIdempotencyStore, IdempotencyStore
from melange.middleware import Consuming, ExceptionHook, Handling, Middleware
from melange.middleware.idempotency_async import AsyncIdempotencyMiddleware
from melange.models import Message, QueueWrapper
from melange.outcomes import OutcomeKind
from melange.policies import AckPolicy, RetryPolicy
from melange.serializers import SerializerRegistry

__all__ = ["AsyncMessageDispatcher"]

_log = logging.getLogger("melange.dispatcher")

#: How long the keeper thread waits for one call it makes through the loop.
_KEEPER_CALL_TIMEOUT = 30.0


class AsyncMessageDispatcher(EngineOwner):
    """Pulls messages from a queue and hands each event to the consumers that accept it.

    Everything ``MessageDispatcher`` promises holds (see its docstring); in
    addition up to ``max_concurrency`` messages are handled at once, and
    listeners may be ``async def``, and ``idempotency`` may be an
    ``AsyncIdempotencyStore`` (awaited on the loop) as well as a sync store
    (used from worker threads). ``backend`` is any ``AsyncMessagingBackend``:
    ``melange.aio.from_url``'s bridge over a sync backend, or a native one.
    """

    async_listeners = True

    def __init__(
        self,
        backend: AsyncMessagingBackend,
        consumers: Iterable[Consumer] | None = None,
        *,
        serializers: SerializerRegistry | None = None,
        idempotency: IdempotencyStore | AsyncIdempotencyStore | None = None,
        middleware: Sequence[Middleware] = (),
        ack_policy: AckPolicy = AckPolicy.AFTER_SUCCESS,
        retry: RetryPolicy | None = None,
        batch_size: int = 10,
        visibility_timeout: float | None = None,
        max_concurrency: int = 10,
    ) -> None:
        if max_concurrency < 1:
            raise InvalidArgumentError(f"max_concurrency must be at least 1, not {max_concurrency}")
        backend = require_async_backend(backend)
        chain = list(middleware)
        if idempotency is not None:
            if not isinstance(idempotency, AsyncIdempotencyStore):
                # Its calls on the store's own threads; the rules on the loop.
                idempotency = BridgedIdempotencyStore(idempotency)
            chain.append(AsyncIdempotencyMiddleware(idempotency))
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
        self.max_concurrency = max_concurrency
        for consumer in consumers or ():
            self.attach_consumer(consumer)

    @property
    def sync(self) -> MessageDispatcher:
        """Deprecated: a synchronous dispatcher with the same consumers (bridged backends only).

        The async dispatcher no longer decides through a sync one; use its own
        ``engine``, ``outcomes``, ``topics()`` and ``declare()``.
        """
        warnings.warn(
            "AsyncMessageDispatcher.sync is deprecated: the async dispatcher has its own engine",
            DeprecationWarning,
            stacklevel=2,
        )
        if not isinstance(self.backend, BridgedBackend):
            raise AttributeError("sync: only a dispatcher on a BridgedBackend has a sync twin")
        return MessageDispatcher(
            self.backend.sync,
            self.consumers,
            serializers=self.serializers,
            ack_policy=self.ack_policy,
            retry=self.retry,
            batch_size=self.batch_size,
            visibility_timeout=self.visibility_timeout,
        )

    async def declare(
        self,
        queue: str,
        *,
        topics: Iterable[str] = (),
        dead_letter_queue_name: str | None = None,
        **queue_options: Any,
    ) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Create the queue, its dead-letter queue and subscriptions (see ``MessageDispatcher``)."""
        steps = self.engine.declaring(
            queue, topics=topics, dead_letter_queue_name=dead_letter_queue_name, **queue_options
        )
        return await run_calls_async(self.backend, steps)

    async def consume_loop(
        self,
        queue: str,
        *,
        max_messages: int | None = None,
        idle_timeout: float | None = None,
        stop_event: asyncio.Event | None = None,
        max_concurrency: int | None = None,
        on_exception: ExceptionHook | None = None,
        shutdown_timeout: float = 30.0,
    ) -> int:
        """Consume ``queue`` until told to stop; return how many messages were handled.

        Stops after ``max_messages``, after ``idle_timeout`` seconds without a
        message and none in flight, when ``stop_event`` is set, or when the
        task is cancelled. Then nothing more is received, the handlers in
        flight finish and are settled (for up to ``shutdown_timeout``
        seconds; those still running then are cancelled), messages received
        and not finished go back to the queue, and nothing is acknowledged
        that did not finish.

        Raises:
            QueueNotFoundError: the queue does not exist.
        """
        limit = max_concurrency if max_concurrency is not None else self.max_concurrency
        if limit < 1:
            raise InvalidArgumentError(f"max_concurrency must be at least 1, not {limit}")
        bound = self.queues.get(queue)
        if bound is None:
            bound = await run_calls_async(self.backend, self.queues.binding(queue))
        pacing = ReceivePacing(queue, self.batch_size, max_messages, idle_timeout)
        run = _Run(
            self,
            bound,
            limit,
            stop_event or asyncio.Event(),
            on_exception=on_exception,
            shutdown_timeout=shutdown_timeout,
        )
        return await run.until_done(pacing)


class _Run:
    """One ``consume_loop``: its handler threads, held messages and tasks in flight."""

    def __init__(
        self,
        dispatcher: AsyncMessageDispatcher,
        bound: QueueBinding,
        limit: int,
        stop: asyncio.Event,
        *,
        on_exception: ExceptionHook | None,
        shutdown_timeout: float,
    ) -> None:
        self.backend = dispatcher.backend
        self.settler = dispatcher.settler
        self.bound = bound
        self.limit = limit
        self.stop = stop
        self.stopping = threading.Event()  # what the pipeline's retries look at
        self.consuming = Consuming(
            bound.name,
            dispatcher,
            bound.visibility_timeout,
            on_exception,
            self.stopping.is_set,
            self.backend.messaging_system,
        )
        loop = asyncio.get_running_loop()
        self.held = HeldMessages(
            LoopCalls(self.backend, loop, _KEEPER_CALL_TIMEOUT), bound.visibility_timeout
        )
        self.in_flight: set[asyncio.Task[None]] = set()
        self.acks_sending: set[asyncio.Task[None]] = set()
        self.handled = 0
        self.shutdown_timeout = shutdown_timeout
        # Each message in flight may hold a thread per sync-only middleware hook, and one more
        # for a plain handler: fewer, and hooks waiting on handlers would starve them.
        threads = limit * (1 + AsyncDecisions.hooks_on_threads(dispatcher.pipeline))
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix=f"melange-{bound.name}")
        self.decisions = AsyncDecisions(dispatcher.pipeline, self.pool)
        self.pacing: ReceivePacing | None = None
        self.turns = AsyncGroupTurns()  # a message group's messages run one at a time, in order

    async def until_done(self, pacing: ReceivePacing) -> int:
        self.pacing = pacing
        async with self.held:
            try:
                await self._receive_until_done(pacing)
            finally:
                self.stopping.set()
                try:
                    await self._finish_in_flight()
                finally:
                    # What did not finish (or was never started) goes back to the queue.
                    await asyncio.shield(self._hand_back_unstarted())
                    self.pool.shutdown(wait=False)
        return self.handled

    async def _finish_in_flight(self) -> None:
        """Let the handlers in flight finish, for up to ``shutdown_timeout``; cancel the rest.

        Runs on even when the loop's task is being cancelled.
        """
        if not self.in_flight:
            return
        running = asyncio.gather(*self.in_flight, return_exceptions=True)
        try:
            await asyncio.wait_for(asyncio.shield(running), self.shutdown_timeout)
        except TimeoutError:
            late = list(self.in_flight)
            _log.warning(
                "%d handler(s) still running %.1f s after the stop: cancelled, their messages"
                " go back to %s (one on a worker thread may still finish its work)",
                len(late),
                self.shutdown_timeout,
                self.bound.name,
            )
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _receive_until_done(self, pacing: ReceivePacing) -> None:
        while not self.stop.is_set():
            started = self.handled + len(self.in_flight)
            free = self.limit - len(self.in_flight)
            wanted = pacing.wanted(started, free)
            if wanted == 0:
                if not self.in_flight:
                    return  # max_messages handled
                await self._one_finishing()
                continue
            wait = pacing.wait_seconds() if not self.in_flight else 1.0
            if self.held.acks_waiting():  # before waiting: the broker may hold back deliveries
                await self._send_acks()
            try:
                batch = await self.backend.retrieve_messages(
                    self.bound.wrapper, max_messages=wanted, wait_seconds=wait
                )
            except QueueNotFoundError:
                raise
            except BackendError as e:
                await _wait(self.stop, pacing.receive_failed(e))
                continue
            pacing.receive_worked()
            if batch:
                pacing.received()
                await self._start(batch)
            elif not self.in_flight and pacing.idle_over():
                return  # checked after a receive: idle_timeout=0 still looks once

    async def _start(self, batch: list[Message]) -> None:
        if self.settler.acks_on_receipt:
            await self.backend.acknowledge_batch(batch)
        else:
            self.held.hold(batch)
        if self.stop.is_set():  # told to stop while receiving: they go back untouched
            return
        self.turns.join(self.bound.name, batch)
        for message in batch:
            handle = self._in_turn if GROUP_HEADER in message.metadata else self._handle
            task = asyncio.create_task(handle(message))
            self.in_flight.add(task)
            task.add_done_callback(self._finished)

    async def _in_turn(self, message: Message) -> None:
        """Handle a grouped message once those received before it in its group are done."""
        turns, name = self.turns, self.bound.name
        retried = True  # unless it is handled and not retried: those behind it give way
        try:
            if not await turns.wait_turn(name, message):
                await run_calls_async(self.backend, self.settler.giving_way(message, self.held))
                return
            if self.stop.is_set():
                return  # unstarted: it goes back with the others
            retried = await self._outcome(message) is OutcomeKind.RELEASE
        finally:
            await asyncio.shield(turns.leave(name, message, retried=retried))

    async def _handle(self, message: Message) -> None:
        await self._outcome(message)

    async def _outcome(self, message: Message) -> OutcomeKind:
        """Handle a message and settle it; return how it ended."""
        held, settler, bound, backend = self.held, self.settler, self.bound, self.backend
        if bound.dead_letters.leaves_any_to_broker and await run_calls_async(
            backend, settler.handing_back(message, bound, held)
        ):
            return OutcomeKind.RELEASE
        handling = Handling(message, self.consuming)
        held.handling(handling)
        try:
            outcome = await self.decisions.handle(handling)
        finally:
            held.finish(handling)
        if not settler.settled_at_once(outcome, message, held):
            await run_calls_async(backend, settler.settling(outcome, message, bound, held))
        self._send_acks_soon()
        return outcome.kind

    def _send_acks_soon(self) -> None:
        held = self.held
        if held.acks_due() and not self.acks_sending:
            sending = asyncio.create_task(self._send_acks())
            self.acks_sending.add(sending)
            sending.add_done_callback(self.acks_sending.discard)

    async def _send_acks(self) -> None:
        acks = self.held.take_acks()
        if acks:
            await run_calls_async(self.backend, acknowledging(acks))

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        if self.pacing is not None:
            self.pacing.received()
        if task.cancelled():
            return  # not handled: its message goes back
        self.handled += 1
        if task.exception() is not None:
            _log.error("handling a message failed outside the pipeline", exc_info=task.exception())

    async def _one_finishing(self) -> None:
        stopping = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait([*self.in_flight, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()

    async def _hand_back_unstarted(self) -> None:
        """Release what was received and not started; send the acknowledgements waiting."""
        await run_calls_async(self.backend, self.settler.releasing_unstarted(self.held))
        if self.acks_sending:
            await asyncio.gather(*self.acks_sending, return_exceptions=True)
        await self._send_acks()


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
