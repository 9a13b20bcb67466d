"""``AsyncMessageDispatcher``: the consume loop on asyncio, with handlers in flight together.

The loop receives on the backend's threads and starts each message as soon
as a slot is free (``max_concurrency``). A message is decided by the same
pipeline as in ``MessageDispatcher`` (middleware, idempotency, retries,
dead letters), run on a worker thread of the loop's own; an ``async def``
handler runs on the event loop meanwhile (see ``melange._bridge``), a plain
one on that worker thread. The event loop itself never waits on a broker,
a store or a handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from melange.aio._bridged import BridgedBackend
from melange.aio._idempotency import AsyncIdempotencyMiddleware
from melange.aio._pipeline import AsyncPipeline
from melange.aio._publisher import bridged
from melange.aio._stores import AsyncIdempotencyStore
from melange.aio._threads import in_thread
from melange.consumers import Consumer
from melange.dispatcher import MessageDispatcher, OutcomeCounts
from melange.exceptions import BackendError, InvalidArgumentError, QueueNotFoundError
from melange.holding import HeldMessages
from melange.idempotency.base import IdempotencyStore
from melange.middleware import Consuming, ExceptionHook, Handling, Middleware
from melange.models import Message, QueueWrapper
from melange.policies import AckPolicy, RetryPolicy
from melange.serializers import SerializerRegistry

__all__ = ["AsyncMessageDispatcher"]

_log = logging.getLogger("melange.dispatcher")

_POLL_SECONDS = 1.0
_MAX_OUTAGE_PAUSE = 30.0


class _ThreadedDispatcher(MessageDispatcher):
    """The synchronous dispatcher the async one decides and settles messages with."""

    _runs_async_handlers = True


class AsyncMessageDispatcher:
    """Pulls messages from a queue and hands each event to the consumers that accept it.

    Everything ``MessageDispatcher`` promises holds (see its docstring); in
    addition up to ``max_concurrency`` messages are handled at once, and
    listeners may be ``async def``, and ``idempotency`` may be an
    ``AsyncIdempotencyStore`` (awaited on the loop) as well as a sync store
    (used from worker threads). ``sync`` is the synchronous dispatcher
    doing the deciding; ``outcomes`` counts what became of each message.
    """

    def __init__(
        self,
        backend: BridgedBackend,
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
        self.backend = bridged(backend)
        self.max_concurrency = max_concurrency
        if isinstance(idempotency, AsyncIdempotencyStore):
            middleware = [*middleware, AsyncIdempotencyMiddleware(idempotency)]
            idempotency = None
        self.sync = _ThreadedDispatcher(
            backend.sync,
            consumers,
            serializers=serializers,
            idempotency=idempotency,
            middleware=middleware,
            ack_policy=ack_policy,
            retry=retry,
            batch_size=batch_size,
            visibility_timeout=visibility_timeout,
        )

    @property
    def outcomes(self) -> OutcomeCounts:
        """Return how many handled messages came to each outcome."""
        return self.sync.outcomes

    @property
    def consumers(self) -> tuple[Consumer, ...]:
        """Return the attached consumers."""
        return self.sync.consumers

    def attach_consumer(self, consumer: Consumer) -> None:
        """Add a consumer (its listeners may be ``async def``)."""
        self.sync.attach_consumer(consumer)

    def unattach_consumer(self, consumer: Consumer) -> None:
        """Remove a consumer."""
        self.sync.unattach_consumer(consumer)

    def topics(self) -> list[str]:
        """Return the manifest topics a queue of this dispatcher subscribes to."""
        return self.sync.topics()

    async def declare(self, queue: str, **options: Any) -> tuple[QueueWrapper, QueueWrapper | None]:
        """Create the queue, its dead-letter queue and subscriptions, as the sync one does."""
        return await self.backend.run(self.sync.declare, queue, **options)

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
        state = await self.backend.run(self.sync._queue_state, queue)
        run = _Run(
            self,
            state,
            limit,
            stop_event or asyncio.Event(),
            on_exception=on_exception,
            shutdown_timeout=shutdown_timeout,
        )
        return await run.until_done(max_messages, idle_timeout)


class _Run:
    """One ``consume_loop``: its handler threads, held messages and tasks in flight."""

    def __init__(
        self,
        dispatcher: AsyncMessageDispatcher,
        state: Any,
        limit: int,
        stop: asyncio.Event,
        *,
        on_exception: ExceptionHook | None,
        shutdown_timeout: float,
    ) -> None:
        self.dispatcher = dispatcher
        self.backend = dispatcher.backend
        self.sync = dispatcher.sync
        self.state = state
        self.limit = limit
        self.stop = stop
        self.stopping = threading.Event()  # what the pipeline's retries look at
        self.consuming = Consuming(
            state.name, dispatcher, state.visibility_timeout, on_exception, self.stopping.is_set
        )
        self.held = HeldMessages(self.backend.sync, state.visibility_timeout)
        self.in_flight: set[asyncio.Task[None]] = set()
        self.handled = 0
        self.finished_at = time.monotonic()
        self.flushing = False
        self.shutdown_timeout = shutdown_timeout
        self.pool = ThreadPoolExecutor(limit, thread_name_prefix=f"melange-{state.name}")
        self.pipeline = AsyncPipeline(self.sync.pipeline, self.pool)

    async def until_done(self, max_messages: int | None, idle_timeout: float | None) -> int:
        loop = asyncio.get_running_loop()
        pool = self.pool
        self.held.__enter__()
        try:
            await self._receive_until_done(loop, pool, max_messages, idle_timeout)
        finally:
            self.stopping.set()
            try:
                await self._finish_in_flight()
            finally:
                # What did not finish (or was never started) goes back to the queue.
                await asyncio.shield(self.backend.run(self._close_held))
                pool.shutdown(wait=False)
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
                self.state.name,
            )
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _receive_until_done(
        self,
        loop: asyncio.AbstractEventLoop,
        pool: ThreadPoolExecutor,
        max_messages: int | None,
        idle_timeout: float | None,
    ) -> None:
        outage_pause = 0.0
        while not self.stop.is_set():
            started = self.handled + len(self.in_flight)
            if max_messages is not None and started >= max_messages:
                if not self.in_flight:
                    return
                await self._one_finishing()
                continue
            free = self.limit - len(self.in_flight)
            if free == 0:
                await self._one_finishing()
                continue
            wanted = min(self.sync.batch_size, free)
            if max_messages is not None:
                wanted = min(wanted, max_messages - started)
            wait = _POLL_SECONDS
            if idle_timeout is not None and not self.in_flight:
                idle = time.monotonic() - self.finished_at
                if idle >= idle_timeout:
                    return
                wait = min(wait, idle_timeout - idle)
            if self.held.acks_waiting():  # before waiting: the broker may hold back deliveries
                await self.backend.run(self.held.flush)
            try:
                batch = await self.backend.retrieve_messages(
                    self.state.wrapper, max_messages=wanted, wait_seconds=wait
                )
            except QueueNotFoundError:
                raise
            except BackendError as e:
                outage_pause = min(max(outage_pause * 2, 0.5), _MAX_OUTAGE_PAUSE)
                _log.warning(
                    "receive from %s failed (%s); retrying in %.1fs",
                    self.state.name,
                    e,
                    outage_pause,
                )
                await _wait(self.stop, outage_pause)
                continue
            outage_pause = 0.0
            if batch:
                self.finished_at = time.monotonic()
                await self._start(batch, loop, pool)

    async def _start(
        self, batch: list[Message], loop: asyncio.AbstractEventLoop, pool: ThreadPoolExecutor
    ) -> None:
        if self.sync.ack_policy is AckPolicy.BEFORE_HANDLE:
            await self.backend.acknowledge_batch(batch)
        else:
            self.held.hold(batch)
        if self.stop.is_set():  # told to stop while receiving: they go back untouched
            return
        for message in batch:
            task = asyncio.create_task(self._handle(message, loop, pool))
            self.in_flight.add(task)
            task.add_done_callback(self._finished)

    async def _handle(
        self, message: Message, loop: asyncio.AbstractEventLoop, pool: ThreadPoolExecutor
    ) -> None:
        held, sync = self.held, self.sync
        if self.state.dead_letters.leaves_any_to_broker and await in_thread(
            pool, sync._handed_back, message, self.state, held
        ):
            return
        handling = Handling(message, self.consuming)
        held.handling(handling)
        try:
            outcome = await self.pipeline.handle(handling)
        finally:
            held.finish(handling)
        if not sync._settled_at_once(outcome, message, held):
            acked_on_receipt = sync.ack_policy is AckPolicy.BEFORE_HANDLE
            await in_thread(pool, sync._apply, outcome, message, self.state, held, acked_on_receipt)
        sync.outcomes.add(outcome.kind)
        if held.acks_due() and not self.flushing:
            self.flushing = True
            loop.run_in_executor(pool, self._flush)

    def _flush(self) -> None:
        try:
            self.held.flush()
        finally:
            self.flushing = False

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        self.finished_at = time.monotonic()
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

    def _close_held(self) -> None:
        """Release what was received and not started, send the waiting acknowledgements."""
        for message in self.held.unstarted():
            self.sync._release(message, 0.0)
        self.held.__exit__(None, None, None)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
